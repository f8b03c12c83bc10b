"""``python -m nasprobe`` runs the command line."""

from .cli import main

main()
