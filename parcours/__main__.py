"""`python -m parcours` is the same as the `parcours` console script."""

from parcours.cli import app

app(prog_name="parcours")
