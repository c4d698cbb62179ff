"""`python -m parcours` is the same as the `parcours` console script."""

from parcours.cli import app

# Guarded: a child process started with "spawn" (the worker's fold process) imports this module
# again, under another name, and must not run the command line.
if __name__ == "__main__":
    app(prog_name="parcours")
