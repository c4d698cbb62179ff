"""The `parcours` command line: one console script, one subcommand per component."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from bench.cli import bench_app
from dashboard.cli import dashboard, users_app
from forecasting.cli import forecast_app
from ingest.cli import ingest_app
from parcours.runtime import load_settings, redact, require_topic_identity
from simulate.cli import simulate
from streams.cli import census_app, pathways_app

app = typer.Typer(
    help="Parcours: real-time analytics for the city-hospital care pathway.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
streams_app = typer.Typer(help="Stream processors (Faust).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(streams_app, name="streams")
app.add_typer(bench_app, name="bench")
# Each area registers its command group here, one line each.
app.add_typer(pathways_app, name="pathways")
app.add_typer(census_app, name="census")
app.add_typer(ingest_app, name="ingest")
app.add_typer(forecast_app, name="forecast")
app.add_typer(users_app, name="users")
app.command("dashboard")(dashboard)
app.command("simulate")(simulate)


@app.command()
def broker(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, memory storage) until Ctrl-C."""
    from parcours.broker import BrokerError, EmbeddedBroker

    settings = load_settings()
    embedded = EmbeddedBroker(host or settings.broker_host, port or settings.broker_port)
    stop = False

    def _handler(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    try:
        embedded.start()
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"broker listening on {embedded.bootstrap} (Ctrl-C to stop)", err=True)
    try:
        while not stop and embedded.process is not None and embedded.process.poll() is None:
            time.sleep(0.2)
    finally:
        embedded.stop()
    if not stop:
        typer.echo("error: the broker process exited on its own", err=True)
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "heads",
) -> None:
    """Apply the SQL migrations to DATABASE_URL (SQLite file in the data folder if unset)."""
    from parcours.db import upgrade

    settings = load_settings()
    upgrade(settings.db_url, revision)
    typer.echo(f"database at {redact(settings.db_url)} is up to date", err=True)


@db_app.command("reset")
def db_reset(
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm: the derived data are deleted for good.")
    ] = False,
) -> None:
    """Start clean: empty every data table (pathways, census, forecasts, the gateway's dedupe
    log…), keep the integrators (tokens, ownership, grants), and adopt the broker's current raw
    topic.

    For a database whose broker lost its data: the feeds are then sent again.
    """
    from parcours.db import make_engine, upgrade
    from parcours.identity import broker_identity, reset_data
    from parcours.topics import Topics, ensure_topics

    settings = load_settings()
    if not yes:
        typer.echo("error: add --yes to delete the derived data", err=True)
        raise typer.Exit(2)
    upgrade(settings.db_url)
    topics = Topics.from_settings(settings)
    ensure_topics(
        settings.bootstrap,
        topics.all(),
        settings.topic_partitions,
        settings.topic_replication_factor,
    )
    identity = broker_identity(settings.bootstrap, topics.raw)
    engine = make_engine(settings.db_url)
    try:
        emptied = reset_data(engine, identity)
    finally:
        engine.dispose()
    typer.echo(
        f"{len(emptied)} tables emptied at {redact(settings.db_url)}; raw topic "
        f"{identity.short() if identity else '(no topic id)'} adopted",
        err=True,
    )


@streams_app.command("worker")
def streams_worker() -> None:
    """Run a Faust stream worker: raw FHIR topic → canonical events → SQL."""
    from streams.runtime.bootstrap import run_worker
    from streams.runtime.gc_tuning import tune_gc

    settings = load_settings()
    require_topic_identity(settings, "streams worker")
    tune_gc()
    # Faust parses sys.argv itself; give it only its own name.
    sys.argv = [sys.argv[0], "worker"]
    run_worker(settings)


@app.command()
def demo(
    data_dir: Annotated[Path | None, typer.Option(help="Where the demo keeps its files.")] = None,
    simulate: Annotated[
        bool, typer.Option(help="Feed the system from the territory simulator in real time.")
    ] = True,
    speed: Annotated[
        float, typer.Option(help="Simulated time per real time (60: 1 h/min).")
    ] = 60.0,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 1,
    dashboard: Annotated[bool, typer.Option(help="Serve the dashboard.")] = True,
    forecast_every: Annotated[
        float, typer.Option(help="Seconds between forecast runs; 0 disables the forecaster.")
    ] = 600.0,
    history_days: Annotated[
        float,
        typer.Option(
            help="Days of simulated history sent to the broker before going live, so that "
            "forecasts show at once; 0 starts live with an empty history."
        ),
    ] = 30.0,
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            help="If the broker is new (the embedded one always is) while the database holds "
            "an earlier run: replay that run's simulation into it instead of starting clean.",
        ),
    ] = False,
) -> None:
    """Run the whole system on this machine until Ctrl-C.

    Starts the broker (unless KAFKA_BOOTSTRAP_SERVERS is set), the migrations, the FHIR gateway,
    the stream worker, the dashboard, the simulator (history first, then live) and, once the
    history is folded, the forecaster. The embedded broker keeps its data in memory: it is for
    trials; production runs the Kafka of docker-compose.yml.
    """
    from parcours import ParcoursError
    from parcours.demo import DemoOptions, run_demo
    from parcours.supervise import Supervisor

    settings = load_settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    options = DemoOptions(simulate, speed, seed, dashboard, forecast_every, history_days, keep)
    sup = Supervisor()
    sup.install_signal_handlers()
    code = 0

    def say(line: str) -> None:
        typer.echo(line, err=True)

    try:
        banner = run_demo(settings, options, sup, say)
        say("\nParcours demo is up.\n  " + "\n  ".join(banner))
        say("Press Ctrl-C to stop.\n")
        code = sup.wait()
    except ParcoursError as exc:
        say(f"error: {exc}")
        code = 1
    finally:
        sup.stop_all()
        say("Parcours demo stopped.")
    raise typer.Exit(code)
