"""`parcours demo`: the whole system on one machine, as child processes stopped together.

Order matters: the broker answers before anything connects to it, the schema exists before any
process writes, the database's data belong to the broker's topic (or are cleared), the gateway
answers before the simulator pushes to it, and the forecaster starts once the simulated history
is folded.

The simulated territory is one simulation from `start`: its history (30 days by default) goes
straight to the raw topic as fast as possible, then the same simulation goes on live through the
gateway, except one hospital's ED visits and stays, which its patient administration system sends
as PAM.fr ADT to the MLLP listener (`parcours ingest mllp`, integrator `demo-simulator` for that
sending facility). Its stays begun in the history go on as FHIR until they end, so that each stay
comes by one path. Patients in bed at the end of the history stay the same patients. What was
simulated is written to `demo.json` in the data folder, and how far the simulation got to
`simulator-state.json`, so that the next run can continue (same broker) or replay (`--keep`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, select

from parcours import ParcoursError
from parcours.broker import free_port, wait_for_metadata
from parcours.settings import Settings
from parcours.supervise import Supervisor

DEMO_INTEGRATOR = "demo-simulator"
# The hospital whose movements arrive as HL7 v2 ADT over MLLP (the rest of the territory is FHIR).
DEMO_HL7_HOSPITAL = "clinique-valmy"
PLAN_FILE = "demo.json"
SIMULATOR_STATE_FILE = "simulator-state.json"
# Created once the history is folded: the simulator goes live then, so that the gateway's writes
# do not queue behind the worker's large history transactions (SQLite has one writer).
LIVE_FILE = "go-live"

Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoOptions:
    """What `parcours demo` starts besides the core (broker, gateway, worker)."""

    simulate: bool = True
    speed: float = 60.0
    seed: int = 1
    dashboard: bool = True
    forecast_every_s: float = 600.0
    history_days: float = 30.0
    keep: bool = False
    hl7: str | None = DEMO_HL7_HOSPITAL


@dataclass(frozen=True)
class SimulationPlan:
    """The demo's simulation: one seeded run from `start`, whose deliveries before
    `history_until` go straight to the raw topic (or are already there when `skip_history`)."""

    seed: int
    start: str
    id_prefix: str
    history_until: str
    topic_id: str
    skip_history: bool = False

    @property
    def has_history(self) -> bool:
        """Whether part of the simulation comes before going live."""
        return datetime.fromisoformat(self.history_until) > datetime.fromisoformat(self.start)

    def to_json(self) -> str:
        """The plan as stored in the data folder (`skip_history` is per run, not stored)."""
        data = asdict(self)
        data.pop("skip_history")
        return json.dumps(data, indent=2)


def wait_http(url: str, timeout_s: float = 60.0) -> None:
    """Block until `url` answers 200, or raise ParcoursError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise ParcoursError(f"{url} did not answer within {timeout_s:.0f}s; see the log above")


def wait_tcp(host: str, port: int, timeout_s: float = 60.0) -> None:
    """Block until `host:port` accepts a connection, or raise ParcoursError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise ParcoursError(f"{host}:{port} did not accept connections within {timeout_s:.0f}s")


@dataclass(frozen=True)
class MllpEndpoint:
    """Where the demo's MLLP listener listens."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def mllp_endpoint(settings: Settings, env: dict[str, str], hospital: str | None) -> MllpEndpoint:
    """The listener's address (the configured port, else a free one), with the children's
    environment set for it: the demo's integrator may send as `hospital` (MSH-4), and the
    Locations come from the FHIR directory, not from PV1-3."""
    configured = "mllp_port" in settings.model_fields_set or "PARCOURS_MLLP_PORT" in env
    port = settings.mllp_port if configured else free_port()
    senders = {k: list(v) for k, v in settings.mllp_senders.items()}
    if hospital:
        senders[DEMO_INTEGRATOR] = sorted({*senders.get(DEMO_INTEGRATOR, []), hospital})
    env["PARCOURS_MLLP_PORT"] = str(port)
    env["PARCOURS_MLLP_SENDERS"] = json.dumps(senders)
    env["PARCOURS_MLLP_LOCATIONS"] = "false"
    return MllpEndpoint(settings.mllp_host, port)


def wait_for(
    sup: Supervisor, done: Callable[[], bool], what: str, timeout_s: float, poll_s: float = 0.5
) -> None:
    """Poll `done` until it holds; stop early (ParcoursError) on Ctrl-C, a child's exit or the
    deadline."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if sup.stopping:
            raise ParcoursError(f"interrupted while waiting for {what}")
        for name, proc in sup.children:
            if proc.poll() is not None:
                raise ParcoursError(f"{name} exited (code {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise ParcoursError(f"no {what} within {timeout_s:.0f}s; see the log above")
        time.sleep(poll_s)


def new_plan(options: DemoOptions, topic_id: str, now: datetime) -> SimulationPlan:
    """A fresh simulation whose history ends now and lasts `options.history_days`."""
    until = now.astimezone(UTC).replace(second=0, microsecond=0)
    if options.history_days <= 0:
        until = until.replace(minute=0)
    start = until.replace(minute=0) - timedelta(days=max(options.history_days, 0))
    return SimulationPlan(
        seed=options.seed,
        start=start.isoformat(),
        # Ids of a new history never meet those of an earlier one.
        id_prefix=start.strftime("%y%m%d%H%M-"),
        history_until=until.isoformat(),
        topic_id=topic_id,
    )


def read_plan(data_dir: Path) -> SimulationPlan | None:
    """The previous run's plan, with its history extended to where its simulation got."""
    try:
        data = json.loads((data_dir / PLAN_FILE).read_text())
        plan = SimulationPlan(**data)
    except (OSError, ValueError, TypeError):
        return None
    try:
        state = json.loads((data_dir / SIMULATOR_STATE_FILE).read_text())
    except (OSError, ValueError):
        state = {}
    try:
        same_run = datetime.fromisoformat(state["start"]) == datetime.fromisoformat(plan.start)
        reached = datetime.fromisoformat(state["reached"])
    except (KeyError, TypeError, ValueError):
        return plan
    if same_run and reached > datetime.fromisoformat(plan.history_until):
        plan = replace(plan, history_until=reached.isoformat())
    return plan


def reconcile(
    engine: Engine, bootstrap: str, data_dir: Path, topic: str, options: DemoOptions, say: Say
) -> SimulationPlan | None:
    """Make the database agree with the broker's raw topic, and say what the simulator does
    (None: nothing, its data would mix with a simulation this folder does not know).

    - Same topic as the database's (a broker that kept its data): the simulation continues
      where it stopped, its history is not sent again.
    - A new topic, and a database holding data of another one (the embedded broker restarted):
      the database is emptied and the demo starts clean; with `--keep`, the previous simulation
      is replayed into the new topic up to where it stopped, then goes on live. Old and new
      are never mixed.
    """
    from parcours.broker import BrokerError
    from parcours.identity import broker_identity, holds_data, recorded_identity, reset_data

    current = broker_identity(bootstrap, topic)
    if current is None:
        raise BrokerError(f"the broker gives no topic id for {topic}")
    found = recorded_identity(engine, topic)
    previous = read_plan(data_dir)
    now = datetime.now(UTC)
    if found is not None and found[0].topic_id == current.topic_id:
        if previous is not None and previous.topic_id == current.topic_id:
            say(
                f"Le broker a gardé ses données : la simulation reprend à {previous.history_until}."
                f" / The broker kept its data: the simulation resumes at {previous.history_until}."
            )
            return replace(previous, skip_history=True)
        if holds_data(engine) or sum(end_offsets(bootstrap, topic).values()) > 0:
            say(
                "Le broker et la base contiennent des données d'une simulation que ce dossier ne "
                "connaît pas : la démo tourne sans simulateur, pour ne pas compter les patients "
                "deux fois. / The broker and the database hold data of a simulation this folder "
                "does not know: the demo runs without the simulator, so that no patient is "
                "counted twice."
            )
            return None
        return new_plan(options, current.topic_id, now)
    if found is None and not holds_data(engine):
        reset_data(engine, current)
        return new_plan(options, current.topic_id, now)
    emptied = reset_data(engine, current)
    if options.keep and previous is not None:
        say(
            f"Broker neuf ({current.short()}) : la base ({len(emptied)} tables) est vidée et la "
            f"simulation précédente rejouée jusqu'à {previous.history_until}, puis continuée.\n"
            f"New broker ({current.short()}): the database ({len(emptied)} tables) is emptied "
            f"and the previous simulation replayed up to {previous.history_until}, then continued."
        )
        return replace(previous, topic_id=current.topic_id)
    if options.keep:
        say(
            "--keep : aucune simulation précédente à rejouer dans ce dossier ; départ à zéro. / "
            "--keep: no previous simulation to replay in this folder; starting clean."
        )
    say(
        f"Le broker ({current.short()}) ne contient pas les messages dont la base est issue "
        f"(broker embarqué redémarré, en mémoire) : la base ({len(emptied)} tables) est vidée et "
        "la démo repart de zéro, pour ne pas compter les patients deux fois. `--keep` rejoue la "
        "simulation précédente.\n"
        f"The broker ({current.short()}) does not hold the records the database was built from "
        f"(the embedded broker restarted, in memory): the database ({len(emptied)} tables) is "
        "emptied and the demo starts clean, so that no patient is counted twice. `--keep` "
        "replays the previous simulation."
    )
    return new_plan(options, current.topic_id, now)


def folded_share(engine: Engine, topic: str, ends: dict[int, int]) -> tuple[int, int]:
    """(records folded, records to fold) of `topic`, from the worker's progress reports."""
    from parcours.db.tables import Base

    progress = Base.metadata.tables["stream_progress"]
    with engine.connect() as conn:
        rows = conn.execute(
            select(progress.c.partition, progress.c.processed_offset).where(
                progress.c.topic == topic
            )
        ).all()
    done = {
        int(r.partition): int(r.processed_offset) + 1
        for r in rows
        if r.processed_offset is not None
    }
    total = sum(ends.values())
    return sum(min(done.get(p, 0), end) for p, end in ends.items()), total


def census_horizon_days(speed: float) -> float:
    """The census horizon (days past the clock) for a simulator `speed` times faster than the
    clock: what it simulates in two days of running, and at least the default 30 days."""
    return max(30.0, 2.0 * speed)


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The end offset of each partition of `topic`, read from its last records: the broker's
    answer can fall short of the last record (`log_ends`)."""
    import asyncio

    from faust.types import TP
    from kafka import KafkaConsumer, TopicPartition

    from streams.runtime.faust_compat import log_ends

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="parcours-demo")
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        reported = consumer.end_offsets([TopicPartition(topic, p) for p in parts])
    finally:
        consumer.close()
    tps = {TP(tp.topic, tp.partition): int(off) for tp, off in reported.items()}
    ends = asyncio.run(log_ends(bootstrap, list(tps), tps))
    return {tp.partition: ends.get(tp, 0) for tp in tps}


def run_demo(
    settings: Settings, options: DemoOptions, sup: Supervisor, say: Say = print
) -> list[str]:
    """Start every process under `sup`; returns the lines of the banner to show."""
    from ingest.auth import create_token
    from parcours.db import make_engine, upgrade
    from parcours.runtime import redact
    from parcours.topics import Topics, ensure_topics

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    data_dir = settings.data_dir.resolve()
    env = dict(os.environ)
    env["PARCOURS_DATA_DIR"] = str(data_dir)
    env["DATABASE_URL"] = settings.db_url
    env.setdefault("PARCOURS_CENSUS_HORIZON_DAYS", f"{census_horizon_days(options.speed):g}")
    exe = [sys.executable, "-m", "parcours"]

    if not settings.kafka_bootstrap_servers:
        sup.start("broker", [*exe, "broker", "--port", str(settings.broker_port)], env)
        env["KAFKA_BOOTSTRAP_SERVERS"] = f"{settings.broker_host}:{settings.broker_port}"
    bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS") or settings.bootstrap
    wait_for_metadata(bootstrap, timeout_s=60)
    topics = Topics.from_settings(settings)
    ensure_topics(
        bootstrap, topics.all(), settings.topic_partitions, settings.topic_replication_factor
    )
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        plan = reconcile(engine, bootstrap, data_dir, topics.raw, options, say)
        mllp = mllp_endpoint(settings, env, options.hl7 if options.simulate else None)
        banner = _start_services(settings, options, sup, env, exe, bootstrap, redact, mllp, say)
        if options.simulate and plan is not None:
            token = create_token(engine, DEMO_INTEGRATOR, rotate=True)
            banner += _start_simulator(settings, options, sup, env, exe, plan, token, mllp, say)
            if plan.has_history and not plan.skip_history:
                _wait_history(sup, engine, bootstrap, topics.raw, data_dir, say)
        if options.forecast_every_s > 0:
            say("Première prévision lancée. / First forecast started.")
            sup.start(
                "forecaster",
                [*exe, "forecast", "run", "--every", str(options.forecast_every_s)],
                env,
            )
    finally:
        engine.dispose()
    return banner


def _start_services(
    settings: Settings,
    options: DemoOptions,
    sup: Supervisor,
    env: dict[str, str],
    exe: list[str],
    bootstrap: str,
    redact: Callable[[str], str],
    mllp: MllpEndpoint,
    say: Say,
) -> list[str]:
    gateway = f"http://{settings.ingest_host}:{settings.ingest_port}"
    sup.start("gateway", [*exe, "ingest", "serve"], env)
    sup.start("mllp listener", [*exe, "ingest", "mllp"], env)
    if settings.worker_web_port:
        env.setdefault("PARCOURS_WORKER_WEB_PORT", str(free_port()))
    sup.start("streams worker", [*exe, "streams", "worker"], env)
    wait_http(f"{gateway}/healthz")
    wait_tcp(mllp.host, mllp.port)
    banner = [
        f"Kafka (fhir.raw, fhir.deadletter): {bootstrap}"
        + (
            "  [broker embarqué, en mémoire : pour essai seulement / "
            "embedded, in memory: trials only]"
            if not settings.kafka_bootstrap_servers
            else ""
        ),
        f"Database: {redact(settings.db_url)}",
        f"FHIR gateway: {gateway}/fhir  (OpenAPI: {gateway}/docs)",
        f"HL7 v2 MLLP listener: {mllp}",
    ]
    if options.dashboard:
        sup.start("dashboard", [*exe, "dashboard"], env)
        dash = f"http://{settings.dashboard_host}:{settings.dashboard_port}"
        wait_http(f"{dash}/_stcore/health")
        accounts = _demo_accounts(settings)
        banner.append(f"Dashboard: {dash}")
        banner += accounts
        # Now, not only in the banner once the history is folded: the dashboard answers already.
        say("\n  ".join([f"Tableau de bord / dashboard: {dash}", *accounts]))
    return banner


def _demo_accounts(settings: Settings) -> list[str]:
    """One dashboard account per role, with passwords new to this run, for the banner."""
    from dashboard.accounts import ensure_demo_accounts
    from parcours.db import make_engine

    engine = make_engine(settings.db_url)
    try:
        passwords = ensure_demo_accounts(engine)
    finally:
        engine.dispose()
    return [
        "Comptes du tableau de bord (mots de passe de cette exécution) / dashboard accounts:",
        *(f"  {role.value}: {password}" for role, password in passwords.items()),
    ]


def _start_simulator(
    settings: Settings,
    options: DemoOptions,
    sup: Supervisor,
    env: dict[str, str],
    exe: list[str],
    plan: SimulationPlan,
    token: str,
    mllp: MllpEndpoint,
    say: Say,
) -> list[str]:
    data_dir = settings.data_dir.resolve()
    gateway = f"http://{settings.ingest_host}:{settings.ingest_port}"
    (data_dir / PLAN_FILE).write_text(plan.to_json())
    (data_dir / SIMULATOR_STATE_FILE).unlink(missing_ok=True)
    (data_dir / LIVE_FILE).unlink(missing_ok=True)
    argv = [
        *exe,
        "simulate",
        "--gateway",
        gateway,
        "--speed",
        str(options.speed),
        "--seed",
        str(plan.seed),
        "--start",
        plan.start,
        "--id-prefix",
        plan.id_prefix,
        "--state-file",
        str(data_dir / SIMULATOR_STATE_FILE),
    ]
    if options.hl7:
        argv += ["--hl7", options.hl7, "--mllp", str(mllp)]
    if plan.has_history:
        argv += ["--history-until", plan.history_until]
        if plan.skip_history:
            argv.append("--history-skip")
        else:
            argv += ["--live-after", str(data_dir / LIVE_FILE)]
        argv.append("--progress" if sys.stderr.isatty() else "--no-progress")
    if plan.has_history and not plan.skip_history:
        days = (
            datetime.fromisoformat(plan.history_until) - datetime.fromisoformat(plan.start)
        ).total_seconds() / 86400
        say(
            f"Historique simulé : {days:.0f} jours envoyés au broker avant le direct. / "
            f"Simulated history: {days:.0f} days sent to the broker before going live."
        )
    # The token goes through the environment, not argv, so `ps` does not show it.
    sup.start("simulator", argv, {**env, "PARCOURS_INGEST_TOKEN": token})
    lines = [
        f"Simulator: Dijon-like territory from {plan.start}, live from {plan.history_until} at "
        f"{options.speed:g}x real time, pushing as integrator '{DEMO_INTEGRATOR}'"
    ]
    if options.hl7:
        lines.append(
            f"  {options.hl7}: ED visits and stays begun live sent as PAM.fr ADT over MLLP "
            f"({mllp}, sending facility {options.hl7})"
        )
    return lines


def _wait_history(
    sup: Supervisor, engine: Engine, bootstrap: str, topic: str, data_dir: Path, say: Say
) -> None:
    """Wait until the simulator's history is in the broker, then until the worker folded it,
    with a progress bar for the folding."""
    from tqdm import tqdm

    from streams.read import census_pending

    state_path = data_dir / SIMULATOR_STATE_FILE

    def history_done() -> bool:
        try:
            state: dict[str, Any] = json.loads(state_path.read_text())
        except (OSError, ValueError):
            return False
        return bool(state.get("history_done"))

    wait_for(sup, history_done, "the simulated history in the broker", timeout_s=1800)
    ends = end_offsets(bootstrap, topic)
    total = sum(ends.values())
    say(
        f"Historique dans le broker ({total} messages) ; le worker l'intègre. / "
        f"History in the broker ({total} records); the worker folds it."
    )
    bar = tqdm(total=total, unit="msg", desc="fold", disable=not sys.stderr.isatty(), leave=False)
    shown = 0

    def folded() -> bool:
        nonlocal shown
        done, _ = folded_share(engine, topic, ends)
        bar.update(done - shown)
        shown = done
        # The forecaster reads the census: the backlog's hours must be recomputed first.
        return done >= total and not census_pending(engine)

    try:
        wait_for(sup, folded, "the history folded by the worker", timeout_s=1800, poll_s=1.0)
    finally:
        bar.close()
    (data_dir / LIVE_FILE).touch()
    say(
        "Historique intégré ; le simulateur passe en direct. / "
        "History folded; the simulator goes live."
    )
