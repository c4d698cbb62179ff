"""`parcours dashboard`: serve the Streamlit app."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import Engine

APP = Path(__file__).resolve().parent / "server.py"


def dashboard(
    host: Annotated[str | None, typer.Option(help="Address to serve on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to serve on.")] = None,
) -> None:
    """Serve the dashboard (bed board, forecasts, alerts, pathways, feed health) until Ctrl-C."""
    from parcours.runtime import load_settings, redact

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


users_app = typer.Typer(help="Dashboard accounts (local sign-in and roles).", no_args_is_help=True)


def _engine() -> Engine:
    from parcours.db import make_engine
    from parcours.runtime import load_settings

    return make_engine(load_settings().db_url)


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(help="User name (for OIDC accounts: their e-mail).")],
    role: Annotated[
        str, typer.Option(help="coordinator | manager | integrator | admin.")
    ] = "coordinator",
    hospital: Annotated[
        list[str] | None,
        typer.Option(help="A hospital id this coordinator follows (repeat); none means all."),
    ] = None,
    oidc: Annotated[
        bool, typer.Option(help="Signs in through the hospital's OIDC provider: no password.")
    ] = False,
) -> None:
    """Create an account. The password comes from PARCOURS_USER_PASSWORD, or is asked for."""
    from dashboard.accounts import AccountError, create_user

    password: str | None = None
    if not oidc:
        password = os.environ.get("PARCOURS_USER_PASSWORD") or typer.prompt(
            "Mot de passe / password", hide_input=True, confirmation_prompt=True
        )
    try:
        user = create_user(_engine(), name, role, password, hospital or ())
    except AccountError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"user {user.username} created with role {user.role.value}", err=True)


@users_app.command("list")
def users_list() -> None:
    """List the accounts: name, role, active, last sign-in."""
    from dashboard.accounts import list_users

    users = list_users(_engine())
    for row in users.itertuples():
        state = "active" if row.active else "disabled"
        kind = "password" if row.has_password else "oidc"
        last = row.last_login_at if row.last_login_at is not None else "-"
        hospitals = ",".join(row.hospitals or []) or "*"
        typer.echo(f"{row.username}\t{row.role}\t{state}\t{kind}\t{hospitals}\t{last}")


@users_app.command("disable")
def users_disable(name: Annotated[str, typer.Argument(help="User name.")]) -> None:
    """Disable an account: it can no longer sign in (its trail is kept)."""
    from dashboard.accounts import AccountError, set_active

    try:
        set_active(_engine(), name, False)
    except AccountError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"user {name} disabled", err=True)
