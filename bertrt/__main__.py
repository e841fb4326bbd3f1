"""`python -m bertrt` runs the command line."""

from bertrt.cli import main

main()
