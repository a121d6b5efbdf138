"""``python -m textbook_gen`` runs the CLI."""

from textbook_gen.cli import main

main()
