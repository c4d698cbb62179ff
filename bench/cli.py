"""`parcours bench …`: each benchmark prints our figure beside a peer or limit measured in the same
run."""

from __future__ import annotations

import typer

bench_app = typer.Typer(help="Benchmarks (results go to docs/BENCHMARKS.md).", no_args_is_help=True)


@bench_app.command("ingest")
def bench_ingest(
    files: int | None = typer.Option(None, help="Use only the first N Synthea files."),
    bundle_size: int = typer.Option(100, help="Entries per transaction Bundle."),
    concurrency: int = typer.Option(2, help="Client threads posting Bundles."),
    workers: int = typer.Option(1, help="Gateway worker processes (the peer uses one core)."),
    data: str | None = typer.Option(None, help="Shared data folder (default ../shared/data)."),
    database_url: str | None = typer.Option(None, help="Gateway database (default: temp SQLite)."),
) -> None:
    """Validated resources/s through the HTTP gateway vs fhir.resources in process."""
    import os
    from pathlib import Path

    from bench.ingest import DEFAULT_DATA, report, run

    folder = Path(data or os.environ.get("PARCOURS_SHARED_DATA") or DEFAULT_DATA)
    typer.echo(report(run(folder, files, bundle_size, concurrency, database_url, workers)))


@bench_app.command("streams")
def bench_streams(
    days: float | None = typer.Option(
        None,
        help="Days of the default territory to simulate as a backlog and replay with one "
        "default worker (the default run: 30); reports peak RSS, dead rows, time to stop.",
    ),
    compact_days: float | None = typer.Option(
        None,
        help="Instead of --days: days of the simulator's compact territory (a hospital and a "
        "clinic: some 700 messages of references and open stays, then about 300 a day).",
    ),
    rate: float = typer.Option(200.0, help="Steady rate (events/s) of the latency run."),
    seconds: float = typer.Option(20.0, help="Length of the latency run."),
    batch_size: int | None = typer.Option(
        None, help="Worker batch size (default: PARCOURS_WORKER_BATCH_SIZE's)."
    ),
    database_url: str | None = typer.Option(None, help="Database (default: temp SQLite)."),
    workers: int = typer.Option(1, min=1, help="Workers sharing the partitions (scale-out)."),
    live: bool = typer.Option(
        False,
        "--live",
        help="Produce the territory while the worker runs, instead of before it starts.",
    ),
) -> None:
    """Raw topic → committed SQL rows per second vs a plain aiokafka+json loop; p50/p99 latency."""
    from bench.streams import report, report_backfill, run, run_backfill
    from parcours.settings import Settings

    settings = Settings()
    url = database_url or settings.database_url
    if compact_days is None:
        try:
            backfill = run_backfill(
                days or 30.0,
                url,
                settings.kafka_bootstrap_servers,
                batch_size or settings.worker_batch_size,
            )
        except RuntimeError as exc:
            typer.echo(f"bench streams: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(report_backfill(backfill))
        return
    try:
        result = run(
            compact_days,
            rate,
            seconds,
            url,
            settings.kafka_bootstrap_servers,
            batch_size or settings.worker_batch_size,
            workers,
            live,
        )
    except RuntimeError as exc:
        typer.echo(f"bench streams: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(report(result, "PostgreSQL" if url and "postgres" in url else "SQLite"))


@bench_app.command("dashboard")
def bench_dashboard(
    days: int = typer.Option(180, help="Days of the default territory to load (once)."),
    database_url: str | None = typer.Option(
        None, help="PostgreSQL database (default DATABASE_URL); reused when it holds stays."
    ),
    runs: int = typer.Option(5, min=1, help="Timed runs of each query (pages: half as many)."),
) -> None:
    """Page render times in Chromium and dashboard query medians, beside a bare SELECT 1."""
    from bench.dashboard import BenchError, report, run
    from parcours.settings import Settings, normalise_db_url

    url = database_url or Settings().database_url
    if not url:
        typer.echo("bench dashboard: set DATABASE_URL or --database-url (PostgreSQL)", err=True)
        raise typer.Exit(2)
    try:
        result = run(normalise_db_url(url), days, runs)
    except BenchError as exc:
        typer.echo(f"bench dashboard: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(report(result))


@bench_app.command("mllp")
def bench_mllp(
    stays: int = typer.Option(1500, help="Synthetic stays (four ADT messages each)."),
    connections: int = typer.Option(4, min=1, help="MLLP connections sending at once."),
    window: int = typer.Option(
        32, min=1, help="Messages a sender sends ahead of its ACKs (1: wait for each ACK)."
    ),
    database_url: str | None = typer.Option(None, help="Database (default: temp SQLite)."),
    parse_processes: int | None = typer.Option(
        None, help="Listener's parse processes (default: PARCOURS_MLLP_PARSE_PROCESSES's)."
    ),
) -> None:
    """ADT messages/s acknowledged end to end over MLLP vs a bare hl7.parse loop."""
    from bench.mllp import report, run

    try:
        result = run(stays, connections, min(window, 64), database_url, parse_processes)
    except RuntimeError as exc:
        typer.echo(f"bench mllp: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(report(result))


@bench_app.command("forecast")
def bench_forecast(
    days: int = typer.Option(35, help="Days of simulated hourly history (the demo has ~30)."),
    horizon: int = typer.Option(72, help="Hours ahead, as `parcours forecast run`."),
    folds: int = typer.Option(4, help="Backtest origins, as `parcours forecast run`."),
    workers: int = typer.Option(2, min=1, help="Processes sharing the series."),
    full: bool = typer.Option(
        False, "--full", help="Also time the full backtest of every candidate (slow)."
    ),
) -> None:
    """Backtest, select and forecast every ward, service and hospital of the default territory,
    beside Prophet alone on the same series."""
    from bench.forecast import report, run_bench

    typer.echo(report(run_bench(days, horizon, folds, workers, full)))
