"""`python -m bertrt.cli` runs the command line."""

from bertrt.cli import main

main()
