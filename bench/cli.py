"""`parcours bench …`: each benchmark prints our figure beside a peer or limit measured in the same run."""

from __future__ import annotations

import typer

bench_app = typer.Typer(help="Benchmarks (results go to docs/BENCHMARKS.md).", no_args_is_help=True)
