"""`parcours simulate`: the territory simulator on the command line."""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from types import FrameType
from typing import Annotated
from zoneinfo import ZoneInfo

import typer

from simulate import SimulationError


def simulate(
    seed: Annotated[
        int, typer.Option(help="Random seed: the same seed gives the same output.")
    ] = 1,
    days: Annotated[
        float | None,
        typer.Option(help="Simulated days to run. Backfill needs it; real time runs until Ctrl-C."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Backfill to DIR/fhir.ndjson (truth in DIR/truth).")
    ] = None,
    kafka: Annotated[
        bool, typer.Option("--kafka", help="Produce straight to the raw topic (acks=all).")
    ] = False,
    gateway: Annotated[
        str | None,
        typer.Option(help="Push batch Bundles to this gateway, e.g. http://127.0.0.1:8000"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="Bearer token for the gateway (default PARCOURS_INGEST_TOKEN)."),
    ] = None,
    speed: Annotated[
        float | None,
        typer.Option(
            help=(
                "Real time × SPEED (60 = one simulated hour per minute); "
                "unset: as fast as possible."
            )
        ),
    ] = None,
    territory: Annotated[
        Path | None, typer.Option(help="Territory file (.yaml/.toml); default: Dijon-like.")
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            help="Simulated start (ISO date or datetime). Default: now in real time, else "
            "local midnight DAYS days ago."
        ),
    ] = None,
    truth: Annotated[
        Path | None,
        typer.Option(help="Where to write the ground truth (default DIR/truth with --out)."),
    ] = None,
    warmup_days: Annotated[
        int | None, typer.Option(help="Days simulated before the start, not emitted.")
    ] = None,
    id_prefix: Annotated[
        str | None,
        typer.Option(
            help="Prefix of every patient-side id. Default: none with --start; else the start "
            "time (yymmddHHMM-), so that runs started at different times never collide."
        ),
    ] = None,
    history_until: Annotated[
        str | None,
        typer.Option(
            help="Deliver everything before this simulated time (ISO) as fast as possible "
            "straight to the raw topic (acks=all), then go on with the same simulation into the "
            "chosen sink, paced from there."
        ),
    ] = None,
    history_skip: Annotated[
        bool,
        typer.Option(
            "--history-skip",
            help="The history is already in the raw topic: simulate it without sending it.",
        ),
    ] = False,
    live_after: Annotated[
        Path | None,
        typer.Option(
            help="With --history-until: wait until this file exists before going live (the "
            "demo creates it once the worker has folded the history)."
        ),
    ] = None,
    state_file: Annotated[
        Path | None,
        typer.Option(
            help="JSON file kept up to date with the run's progress: history_done, "
            "history_resources, and `reached` (everything delivered before it was sent)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Resources per gateway Bundle.")] = 200,
    hl7: Annotated[
        str | None,
        typer.Option(
            "--hl7",
            help="Send this establishment's ED visits and stays as PAM.fr ADT over MLLP "
            "(everything else as FHIR).",
        ),
    ] = None,
    mllp: Annotated[
        str | None,
        typer.Option(help="MLLP listener HOST:PORT for --hl7 (default PARCOURS_MLLP_HOST/PORT)."),
    ] = None,
    progress: Annotated[
        bool | None, typer.Option(help="Show a progress bar (default: when stderr is a terminal).")
    ] = None,
    print_territory: Annotated[
        bool,
        typer.Option(
            "--print-territory", help="Print the territory (YAML, defaults filled in) and exit."
        ),
    ] = False,
) -> None:
    """Simulate a territory's FHIR traffic: backfill N days to NDJSON or Kafka, or push to the
    gateway in real time (--speed) or as fast as possible. Ends with a summary (JSON)."""
    from parcours.runtime import load_settings
    from parcours.topics import Topics, ensure_topics
    from simulate.run import History, run_simulation
    from simulate.sinks import GatewaySink, KafkaSink, NdjsonSink, NullSink, Sink
    from simulate.territory import load_territory, territory_yaml

    if print_territory:
        try:
            typer.echo(territory_yaml(load_territory(territory)), nl=False)
        except (SimulationError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        return
    settings = load_settings()
    # One line per HTTP request would drown the demo's log.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    chosen = [x for x in (out is not None, kafka, gateway is not None) if x]
    if len(chosen) != 1:
        raise typer.BadParameter("choose exactly one of --out DIR, --kafka, --gateway URL")
    if days is None and speed is None:
        raise typer.BadParameter("as-fast-as-possible runs need --days")
    if days is not None and days <= 0:
        raise typer.BadParameter("--days must be positive")
    try:
        terr = load_territory(territory)
    except (SimulationError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    begin = _start(start, days, speed, ZoneInfo(terr.timezone))
    if id_prefix is None:
        # Ids are only reproducible for a given start; a start taken from the clock must not
        # reuse the ids of an earlier run (the gateway would take them for duplicates).
        id_prefix = "" if start else begin.strftime("%y%m%d%H%M-")
    if not re.fullmatch(r"[A-Za-z0-9.\-]{0,40}", id_prefix):
        raise typer.BadParameter("--id-prefix: letters, digits, '-' and '.' only (40 at most)")

    sink: Sink
    if out is not None:
        sink = NdjsonSink(out)
        truth = truth or out / "truth"
    elif kafka:
        topics = Topics.from_settings(settings)
        ensure_topics(
            settings.bootstrap,
            topics.all(),
            settings.topic_partitions,
            settings.topic_replication_factor,
        )
        sink = KafkaSink(settings.bootstrap, topics.raw, directory=topics.directory)
    else:
        token = token or (
            settings.ingest_token.get_secret_value() if settings.ingest_token else None
        )
        if not token:
            raise typer.BadParameter(
                "--gateway needs a token: --token T or PARCOURS_INGEST_TOKEN "
                "(create one with `parcours ingest token create NAME`)"
            )
        assert gateway is not None
        sink = GatewaySink(gateway, token, batch_size=batch_size)

    history: History | None = None
    if history_until is not None:
        if kafka:
            raise typer.BadParameter("--history-until goes with --gateway or --out")
        until = _start(history_until, None, None, ZoneInfo(terr.timezone))
        history_sink: Sink
        if history_skip:
            history_sink = NullSink()
        else:
            topics = Topics.from_settings(settings)
            ensure_topics(
                settings.bootstrap,
                topics.all(),
                settings.topic_partitions,
                settings.topic_replication_factor,
            )
            history_sink = KafkaSink(settings.bootstrap, topics.raw)
        state: dict[str, object] = {
            "start": begin.isoformat(),
            "history_until": until.isoformat(),
            "history_done": False,
        }

        def _save(**changes: object) -> None:
            state.update(changes)
            if state_file is not None:
                tmp = state_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(state, indent=2))
                tmp.replace(state_file)

        history = History(
            until=until,
            sink=history_sink,
            skip=history_skip,
            on_done=lambda n: _save(history_done=True, history_resources=n),
            on_reached=lambda t: _save(reached=t.isoformat()),
            go_live=(lambda: True) if live_after is None else live_after.exists,
        )
        _save()
    elif history_skip:
        raise typer.BadParameter("--history-skip needs --history-until")

    if hl7 is not None:
        from simulate.hl7 import Hl7Sink

        known = [e.id for e in terr.establishments]
        if hl7 not in known:
            raise typer.BadParameter(f"--hl7: unknown establishment {hl7!r}; one of {known}")
        host, _, port = (mllp or f"{settings.mllp_host}:{settings.mllp_port}").rpartition(":")
        hl7_sink = Hl7Sink(sink, hl7, host or "127.0.0.1", int(port), terr.timezone)
        if history is not None:
            # The history (sent or not) passes through the observer, so that the stays it began
            # go on as FHIR and its patients keep their names in PID.
            history = replace(history, sink=hl7_sink.observe(history.sink), skip=False)
        sink = hl7_sink

    stopping = False

    def _handler(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    typer.echo(
        f"simulating {terr.name} from {begin.isoformat()} "
        f"({'until Ctrl-C' if days is None else f'{days:g} days'}"
        f"{f', {speed:g}x real time' if speed else ', as fast as possible'})",
        err=True,
    )
    try:
        summary = run_simulation(
            terr,
            seed,
            begin,
            days,
            sink,
            speed=speed,
            truth_dir=truth,
            warmup_days=warmup_days,
            id_prefix=id_prefix,
            progress=sys.stderr.isatty() if progress is None else progress,
            stop=lambda: stopping,
            history=history,
        )
    except SimulationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(summary.as_dict(), indent=2, ensure_ascii=False))


def _start(text: str | None, days: float | None, speed: float | None, tz: ZoneInfo) -> datetime:
    """The simulated start: given, else now (real time), else local midnight `days` ago."""
    if text:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=tz)
        return parsed.astimezone(UTC)
    now = datetime.now(UTC)
    if speed:
        return now.replace(second=0, microsecond=0)
    today: date = now.astimezone(tz).date()
    first = today - timedelta(days=int(days or 0))
    return datetime.combine(first, time(0, 0), tzinfo=tz).astimezone(UTC)
