"""`python -m tte_eval ...` runs the `tte-eval` command line."""

from .cli import main


main()
