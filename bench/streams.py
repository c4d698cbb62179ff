"""`parcours bench streams`: raw topic → committed SQL rows, beside a plain aiokafka+json loop.

1. Ours, from a backlog (the default): days of the simulator's compact territory
   (`simulate.territory.compact_territory`, clean, references included) are produced to a fresh
   raw topic, then a real `parcours streams worker` process starts. Its start-up (group
   join, table recovery) is measured apart, up to the time its log says it is ready; the clock
   starts there and stops when every pathway and census row of the territory is in SQL. That is
   how the peer reads the topic too. Throughput is messages (and canonical events) per second
   over that span: every batch counts, the first one too.
   With `live=True` the worker starts first (its start-up measured with one GP visit, whose row
   is awaited), and the clock runs from the first message produced: the worker gets the
   territory as fast as one kafka-python producer sends it, which shares the machine with it.
2. Latency: with the worker caught up, new GP visits are produced at a steady rate (200/s by
   default); the time from the send to the row being visible in `community_visits` is measured by
   polling SQL every 20 ms (so latencies carry up to 20 ms of polling error).
3. Peer, same run, same topic, once the worker has stopped: a plain aiokafka consumer that reads
   the territory's messages and `json.loads` each, nothing else. It is the ceiling of any Python
   consumer here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from parcours.db import make_engine, upgrade
from parcours.settings import Settings
from parcours.topics import Topics, ensure_topics
from simulate.run import feed
from simulate.territory import compact_territory
from streams.core.fhir_map import MappingError, map_resource
from streams.read import census_pending
from streams.runtime.faust_compat import consumed_partitions, ready_at
from streams.runtime.gc_tuning import IDLE_S


@dataclass
class StreamsBenchResult:
    """What `run` measured."""

    messages: int
    events: int
    produce_s: float
    peer_s: float
    startup_s: float
    worker_s: float
    latency_ms: list[float]
    rate: float
    batch_size: int
    workers: int = 1
    live: bool = False

    @property
    def peer_rate(self) -> float:
        """Messages per second of the plain aiokafka+json loop."""
        return self.messages / self.peer_s

    @property
    def ours_rate(self) -> float:
        """Raw messages per second, first to last committed batch."""
        return self.messages / self.worker_s

    @property
    def events_rate(self) -> float:
        """Canonical events per second, first to last committed batch."""
        return self.events / self.worker_s

    def percentile(self, q: float) -> float:
        """A latency percentile in ms (nearest rank)."""
        values = sorted(self.latency_ms)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, max(0, round(q * len(values)) - 1))]


def _key(resource: dict[str, Any]) -> str:
    from ingest.bundle import patient_key

    return patient_key(resource) or f"{resource['resourceType']}/{resource['id']}"


def produce(bootstrap: str, topic: str, resources: list[dict[str, Any]]) -> float:
    """Send every resource (acks=all); returns the seconds it took."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=512 * 1024
    )
    start = time.perf_counter()
    for r in resources:
        producer.send(topic, key=_key(r).encode(), value=json.dumps(r).encode())
    producer.flush()
    producer.close()
    return time.perf_counter() - start


async def _peer(bootstrap: str, topic: str, total: int) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        if not parts:
            await consumer.stop()
            consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap)
            await consumer.start()
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        seen = 0
        start = time.perf_counter()
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                for record in records:
                    json.loads(record.value)
                    seen += 1
        return time.perf_counter() - start
    finally:
        await consumer.stop()


def _count_events(resources: list[dict[str, Any]]) -> int:
    n = 0
    for r in resources:
        with contextlib.suppress(MappingError):
            n += len(map_resource(r))
    return n


def _done(engine: Any, expected: dict[str, int]) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.scalar(text("SELECT count(*) FROM stays WHERE discharged_at IS NOT NULL"))
            == expected["discharged"]
            and conn.scalar(text("SELECT count(*) FROM community_visits"))
            >= expected["community_visits"]
            and conn.scalar(text("SELECT count(*) FROM ed_visits")) == expected["ed_visits"]
            and conn.scalar(text("SELECT count(*) FROM referrals")) == expected["referrals"]
        )


def _has_visit(engine: Any, patient_id: str) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.scalar(
                text("SELECT count(*) FROM community_visits WHERE patient_id = :p"),
                {"p": patient_id},
            )
        )


def _gp_visit(pid: str, at: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": f"{pid}-visit",
        "meta": {"versionId": "1", "lastUpdated": at.isoformat()},
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": at.isoformat(), "end": (at + timedelta(minutes=15)).isoformat()},
    }


def measure_latency(
    bootstrap: str, topic: str, engine: Any, rate: float, seconds: float, prefix: str
) -> list[float]:
    """Send GP visits at `rate`/s for `seconds`; event → visible row latencies in ms."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    total = int(rate * seconds)
    start = time.perf_counter()
    base = datetime(2026, 3, 1, tzinfo=UTC)
    like = f"{prefix}lat-%"
    i = 0
    last_poll = 0.0

    def poll() -> None:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT patient_id FROM community_visits WHERE patient_id LIKE :p"),
                {"p": like},
            ).all()
        now = time.perf_counter()
        for (pid,) in rows:
            seen.setdefault(pid, now)

    while i < total or len(seen) < total:
        now = time.perf_counter()
        while i < total and now - start >= i / rate:
            pid = f"{prefix}lat-{i:06d}"
            producer.send(
                topic,
                key=pid.encode(),
                value=json.dumps(_gp_visit(pid, base + timedelta(seconds=i))).encode(),
            )
            sent[pid] = time.perf_counter()
            i += 1
        producer.flush()
        if now - last_poll >= 0.02:
            poll()
            last_poll = now
        if now - start > seconds + 60:
            break
        time.sleep(0.002)
    producer.close()
    return [(seen[p] - sent[p]) * 1000 for p in sent if p in seen]


@contextmanager
def _bench_setup(
    bootstrap: str | None, db_url: str | None
) -> Iterator[tuple[str, str, Engine, str]]:
    """(bootstrap, database URL, engine, work folder) for one bench run: an embedded broker unless
    `bootstrap` is given, a migrated database that must hold no pathway yet (SQLite in the work
    folder unless `db_url` is given). The broker stops and the folder goes at the end."""
    from parcours.broker import EmbeddedBroker, free_port

    broker: EmbeddedBroker | None = None
    tmp = tempfile.TemporaryDirectory(prefix="parcours-bench-")
    try:
        if bootstrap is None:
            broker = EmbeddedBroker(port=free_port())
            broker.start()
            bootstrap = broker.bootstrap
        db_url = db_url or f"sqlite:///{Path(tmp.name) / 'bench.db'}"
        upgrade(db_url)
        engine = make_engine(db_url)
        with engine.connect() as conn:
            if conn.scalar(text("SELECT count(*) FROM pathway_states")):
                raise RuntimeError(
                    "the streams bench counts rows, so it needs an empty database; this one "
                    "already holds pathways. Create a new one (createdb …) or drop this one."
                )
        yield bootstrap, db_url, engine, tmp.name
    finally:
        if broker is not None:
            broker.stop()
        tmp.cleanup()


# The compact territory's runs start on this day (a Monday in winter).
COMPACT_START = datetime(2026, 1, 5, tzinfo=UTC)


def run(
    days: float,
    rate: float,
    latency_seconds: float,
    db_url: str | None,
    bootstrap: str | None,
    batch_size: int,
    workers: int = 1,
    live: bool = False,
) -> StreamsBenchResult:
    """Run the whole benchmark; starts an embedded broker and an SQLite file if none is given.

    With `workers` > 1, that many workers of one app share the partitions. From a backlog the
    clock starts when the first of them is ready (a later one's rebalance counts); live, once
    the group has settled and each holds its share."""
    with _bench_setup(bootstrap, db_url) as (bootstrap, db_url, engine, workdir):
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        settings = Settings(topic_prefix=prefix)
        if workers > settings.topic_partitions:
            raise RuntimeError(
                f"{workers} workers for {settings.topic_partitions} partitions: some would get "
                "nothing to do. Use fewer workers, or more partitions (PARCOURS_TOPIC_PARTITIONS)."
            )
        topics = Topics.from_settings(settings)
        ensure_topics(bootstrap, topics.all(), settings.topic_partitions)
        simulated = feed(compact_territory(prefix), 1, COMPACT_START, days, id_prefix=prefix)
        resources, expected = simulated.resources, simulated.expected
        events = _count_events(resources)

        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            DATABASE_URL=db_url,
            PARCOURS_TOPIC_PREFIX=prefix,
            PARCOURS_WORKER_WEB_PORT="0",
            PARCOURS_PATHWAY_TIMER_INTERVAL_S="0",
            PARCOURS_WORKER_BATCH_SIZE=str(batch_size),
            PARCOURS_DATA_DIR=workdir,
            # INFO: each worker's log says which partitions it consumes.
            PARCOURS_LOG_LEVEL="INFO",
        )
        produce_s = 0.0
        if not live:
            produce_s = produce(bootstrap, topics.raw, resources)
        log_paths = [Path(workdir) / f"worker-{i}.log" for i in range(workers)]
        logs = [open(path, "wb") for path in log_paths]  # noqa: SIM115
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "parcours", "streams", "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            for log in logs
        ]

        def wait_for(done: Any) -> float:
            while not done():
                for proc, path in zip(procs, log_paths, strict=True):
                    if proc.poll() is not None:
                        raise RuntimeError("a worker exited: " + path.read_text()[-2000:])
                time.sleep(0.05)
            return time.perf_counter()

        def shared() -> bool:
            """Every worker consumes its own share of the raw partitions."""
            latest = [consumed_partitions(p.read_text(), topics.raw)[-1:] for p in log_paths]
            shares = [parts[0] for parts in latest if parts and parts[0]]
            held = sorted(p for share in shares for p in share)
            return len(shares) == workers and held == list(range(settings.topic_partitions))

        try:
            if live:
                # Start-up (group join, table recovery) is measured apart: one GP visit, then
                # wait for its row. The clock of the throughput run starts once the worker is
                # idle.
                warm_up = f"{prefix}warm-up"
                visit = _gp_visit(warm_up, datetime(2026, 1, 1, tzinfo=UTC))
                produce(bootstrap, topics.raw, [visit])
                ready = wait_for(lambda: _has_visit(engine, warm_up) and shared())
                first = time.perf_counter()
                produce_s = produce(bootstrap, topics.raw, resources)
            else:
                # The worker consumes from the moment its log says it is ready: the clock starts
                # at that line's time stamp, read once the line is there.
                wait_for(lambda: any(ready_at(p.read_text(), topics.raw) for p in log_paths))
                stamps = [ready_at(p.read_text(), topics.raw) for p in log_paths]
                ready_wall = min(t for t in stamps if t is not None)
                first = time.perf_counter() - (time.time() - ready_wall)
                ready = first
            last = wait_for(lambda: _done(engine, expected))
            latencies = measure_latency(
                bootstrap, topics.raw, engine, rate, latency_seconds, prefix
            )
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for log in logs:
                log.close()
        peer_s = asyncio.run(_peer(bootstrap, topics.raw, len(resources)))
        engine.dispose()
        return StreamsBenchResult(
            messages=len(resources),
            events=events,
            produce_s=produce_s,
            peer_s=peer_s,
            startup_s=ready - started,
            worker_s=last - first,
            latency_ms=latencies,
            rate=rate,
            batch_size=batch_size,
            workers=workers,
            live=live,
        )


def report(result: StreamsBenchResult, db_label: str) -> str:
    """The table and the one-line summary."""
    r = result
    ours = "parcours streams worker, raw → committed SQL"
    if r.workers > 1:
        ours = f"{r.workers} parcours streams workers, raw → SQL"
    per_worker = (
        f", {r.workers} workers at {r.events_rate / r.workers:,.0f} each" if r.workers > 1 else ""
    )
    lines = [
        f"parcours bench streams: {r.messages} raw messages ({r.events} canonical events), "
        f"database {db_label}, batch {r.batch_size}",
        "",
        f"| {'what':<46} | {'messages/s':>10} | {'events/s':>9} |",
        f"|{'-' * 48}|{'-' * 12}|{'-' * 11}|",
        f"| {'plain aiokafka + json.loads (peer, same topic)':<46} | "
        f"{r.peer_rate:>10,.0f} | {'':>9} |",
        f"| {ours:<46} | {r.ours_rate:>10,.0f} | {r.events_rate:>9,.0f} |",
        "",
        (
            f"start-up to the first row{' and shared partitions' if r.workers > 1 else ''}: "
            f"{r.startup_s:.1f} s (group join, table recovery), not counted; live: producing "
            f"the territory took {r.produce_s:.1f} s of the {r.worker_s:.1f} s counted"
            if r.live
            else f"from a backlog: the territory was produced ({r.produce_s:.1f} s) before the "
            f"worker started; start-up to its ready log line {r.startup_s:.1f} s (group join, "
            f"table recovery), not counted; {r.worker_s:.1f} s counted"
        ),
        f"event → row latency at {r.rate:.0f} events/s over {len(r.latency_ms)} events: "
        f"p50 {r.percentile(0.5):.0f} ms, p99 {r.percentile(0.99):.0f} ms "
        f"(SQL polled every 20 ms)",
        "",
        f"summary: {r.ours_rate:,.0f} msg/s ({r.events_rate:,.0f} events/s{per_worker}) to "
        "committed SQL, "
        f"{r.ours_rate / r.peer_rate:.1%} of a bare aiokafka+json loop "
        f"({r.peer_rate:,.0f} msg/s); goal 10,000 events/s per worker; "
        f"p50/p99 latency {r.percentile(0.5):.0f}/{r.percentile(0.99):.0f} ms at {r.rate:.0f}/s",
    ]
    return "\n".join(lines)


# --- The backfill of the default territory ----------------------------------------------------


@dataclass
class BackfillResult:
    """What `run_backfill` measured."""

    days: float
    messages: int  # raw messages applied
    directory: int  # reference resources read from the directory topic
    events: int
    produce_s: float
    startup_s: float
    worker_s: float
    peer_s: float
    peak_rss_mb: float  # worker and its fold processes, summed, at the highest sample
    idle_rss_mb: float  # the same, once the backlog is done and the worker idle
    dead_tuples: int | None  # census_hourly, PostgreSQL only
    live_tuples: int | None
    stop_s: float  # SIGTERM in the middle of a replay → every process of the worker gone
    batch_size: int
    database: str

    @property
    def rate(self) -> float:
        """Raw messages per second, first to last committed batch."""
        return self.messages / self.worker_s

    @property
    def events_rate(self) -> float:
        """Canonical events per second, first to last committed batch."""
        return self.events / self.worker_s

    @property
    def peer_rate(self) -> float:
        """Messages per second of the plain aiokafka+json loop."""
        return self.messages / self.peer_s


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its descendants, in MB (Linux)."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def _metrics(port: int) -> dict[str, float]:
    import urllib.request

    try:
        # A fixed http URL on the loopback, the worker's own metrics.
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as answer:  # nosec B310
            body = answer.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = out.get(name, 0.0) + float(value)
    return out


def run_backfill(
    days: float, db_url: str | None, bootstrap: str | None, batch_size: int, seed: int = 1
) -> BackfillResult:
    """Simulate `days` of the default territory onto fresh topics (`parcours simulate --kafka`),
    then time one default `parcours streams worker` replaying that backlog to committed SQL; its
    RSS (children included) is sampled throughout. Then a second worker (another app id) starts
    on the same backlog and gets SIGTERM mid-replay: the time until its processes are all gone.
    Last, the aiokafka+json peer reads the same raw topic."""
    from parcours.broker import free_port

    with _bench_setup(bootstrap, db_url) as (bootstrap, db_url, engine, workdir):
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        topics = Topics.from_settings(Settings(topic_prefix=prefix))
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            DATABASE_URL=db_url,
            PARCOURS_TOPIC_PREFIX=prefix,
            PARCOURS_DATA_DIR=workdir,
            PARCOURS_PATHWAY_TIMER_INTERVAL_S="0",
            PARCOURS_WORKER_BATCH_SIZE=str(batch_size),
            PARCOURS_LOG_LEVEL="INFO",
        )
        started = time.perf_counter()
        simulated = subprocess.run(
            [
                *(sys.executable, "-m", "parcours", "simulate", "--seed", str(seed)),
                *("--days", f"{days:g}", "--kafka", "--no-progress"),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if simulated.returncode != 0:
            raise RuntimeError("the simulator failed: " + simulated.stderr[-2000:])
        produced = int(json.loads(simulated.stdout)["sink"]["produced"])
        produce_s = time.perf_counter() - started

        port = free_port()
        log_path = Path(workdir) / "worker.log"
        with open(log_path, "wb") as log:
            started = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "parcours", "streams", "worker"],
                env={**env, "PARCOURS_WORKER_WEB_PORT": str(port)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            peak = 0.0
            try:
                while not ready_at(log_path.read_text(), topics.raw):
                    if proc.poll() is not None:
                        raise RuntimeError("the worker exited: " + log_path.read_text()[-2000:])
                    time.sleep(0.05)
                ready_wall = ready_at(log_path.read_text(), topics.raw) or time.time()
                first = time.perf_counter() - (time.time() - ready_wall)
                startup_s = first - started
                while True:
                    if proc.poll() is not None:
                        raise RuntimeError("the worker exited: " + log_path.read_text()[-2000:])
                    peak = max(peak, rss_mb(proc.pid))
                    seen = _metrics(port)
                    applied = seen.get("parcours_worker_messages_total", 0) + seen.get(
                        "parcours_worker_directory_messages_total", 0
                    )
                    # The replay is done once the census of its backlog is.
                    if applied >= produced and not census_pending(engine):
                        break
                    time.sleep(0.1)
                last = time.perf_counter()
                # Idle: what the worker keeps once the backlog is done (it and its fold
                # processes give their free memory back after `IDLE_S`).
                for _ in range(int(IDLE_S * 10) + 50):
                    peak = max(peak, rss_mb(proc.pid))
                    time.sleep(0.1)
                idle = rss_mb(proc.pid)
            finally:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        dead = live_rows = None
        if engine.dialect.name == "postgresql":
            time.sleep(1.0)  # table statistics reach pg_stat within a second
            with engine.connect() as conn:
                live_rows, dead = conn.execute(
                    text(
                        "SELECT n_live_tup, n_dead_tup FROM pg_stat_user_tables"
                        " WHERE relname = 'census_hourly'"
                    )
                ).one()
        stop_s = _time_to_stop(env, topics, Path(workdir) / "stopped.log", prefix)
        peer_s = asyncio.run(
            _peer(
                bootstrap,
                topics.raw,
                produced - int(seen.get("parcours_worker_directory_messages_total", 0)),
            )
        )
        engine.dispose()
        return BackfillResult(
            days=days,
            messages=int(seen.get("parcours_worker_messages_total", 0)),
            directory=int(seen.get("parcours_worker_directory_messages_total", 0)),
            events=int(seen.get("parcours_worker_events_total", 0)),
            produce_s=produce_s,
            startup_s=startup_s,
            worker_s=last - first,
            peer_s=peer_s,
            peak_rss_mb=peak,
            idle_rss_mb=idle,
            dead_tuples=dead,
            live_tuples=live_rows,
            stop_s=stop_s,
            batch_size=batch_size,
            database="PostgreSQL" if engine.dialect.name == "postgresql" else "SQLite",
        )


def _time_to_stop(env: dict[str, str], topics: Topics, log_path: Path, prefix: str) -> float:
    """Start a worker of another app on the backlog, SIGTERM it a few seconds into its replay,
    and return the seconds until it and its fold processes are gone. Its rows are the same as
    the measured run's (a replay writes the same rows), so the database is left as it was."""
    import signal

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parcours", "streams", "worker"],
            env={
                **env,
                "PARCOURS_WORKER_WEB_PORT": "0",
                "PARCOURS_STREAMS_APP_ID": f"{prefix}stop",
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while not ready_at(log_path.read_text(), topics.raw):
                if proc.poll() is not None:
                    raise RuntimeError("the worker exited: " + log_path.read_text()[-2000:])
                time.sleep(0.05)
            time.sleep(3.0)  # in the middle of its first batches
            family = _tree(proc.pid)
            sent = time.perf_counter()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
            while any(Path(f"/proc/{p}").exists() and _running(p) for p in family):
                time.sleep(0.02)
            return time.perf_counter() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def report_backfill(r: BackfillResult) -> str:
    """The table and the one-line summary of `run_backfill`."""
    ratio = (
        f"{r.dead_tuples:,} dead / {r.live_tuples:,} live rows "
        f"({r.dead_tuples / max(1, r.live_tuples):.2f})"
        if r.dead_tuples is not None and r.live_tuples is not None
        else "n/a (SQLite)"
    )
    lines = [
        f"parcours bench streams --days {r.days:g}: the default territory's backfill, "
        f"{r.messages:,} raw messages ({r.events:,} canonical events) and {r.directory:,} "
        f"directory resources, database {r.database}, batch {r.batch_size}",
        "",
        f"| {'what':<46} | {'messages/s':>10} | {'events/s':>9} |",
        f"|{'-' * 48}|{'-' * 12}|{'-' * 11}|",
        f"| {'plain aiokafka + json.loads (peer, same topic)':<46} | "
        f"{r.peer_rate:>10,.0f} | {'':>9} |",
        f"| {'parcours streams worker, raw → committed SQL':<46} | "
        f"{r.rate:>10,.0f} | {r.events_rate:>9,.0f} |",
        "",
        f"simulated and produced in {r.produce_s:.1f} s before the worker started; start-up to "
        f"its ready log line {r.startup_s:.1f} s, not counted; {r.worker_s:.1f} s counted",
        f"peak RSS, worker and fold processes: {r.peak_rss_mb:,.0f} MB; idle after the "
        f"backfill: {r.idle_rss_mb:,.0f} MB",
        f"census_hourly after the replay: {ratio}",
        f"SIGTERM during a replay: every process of the worker gone in {r.stop_s:.1f} s",
        "",
        f"summary: {r.events_rate:,.0f} events/s ({r.rate:,.0f} msg/s, "
        f"{r.rate / r.peer_rate:.1%} of a bare aiokafka+json loop at {r.peer_rate:,.0f} msg/s); "
        f"goal 10,000 events/s; peak RSS {r.peak_rss_mb:,.0f} MB (goal < 1 GB); "
        f"stop {r.stop_s:.1f} s (goal < 10 s)",
    ]
    return "\n".join(lines)
