"""`parcours dashboard`: serve the Streamlit app."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

APP = Path(__file__).resolve().parent / "streamlit_app.py"


def dashboard(
    host: Annotated[str | None, typer.Option(help="Address to serve on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to serve on.")] = None,
) -> None:
    """Serve the dashboard (bed board, forecasts, alerts, pathways, feed health) until Ctrl-C."""
    from parcours.cli import load_settings, redact

    settings = load_settings()
    host = host or settings.dashboard_host
    port = port or settings.dashboard_port
    typer.echo(f"dashboard on http://{host}:{port} reading {redact(settings.db_url)}", err=True)
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "viewer",
    ]
    env = dict(os.environ)
    # The pages import `dashboard.*`; make the package importable however Parcours was installed.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(APP.parent.parent), env.get("PYTHONPATH", "")) if p
    )
    env["DATABASE_URL"] = settings.db_url
    # Replace this process: Ctrl-C and SIGTERM reach Streamlit directly, nothing is left behind.
    # Our own interpreter and argument list, no shell.
    os.execve(sys.executable, argv, env)  # nosec B606
