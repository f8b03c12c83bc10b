"""``python -m nasprobe`` runs the command line."""

from nasprobe.cli import run

run()
