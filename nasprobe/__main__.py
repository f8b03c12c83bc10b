"""``python -m nasprobe`` runs the command line."""

from nasprobe.cli import main

main()
