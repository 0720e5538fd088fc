"""``python -m cohortctl``."""

from cohortctl.cli import run

run()
