"""`parcours bench ingest`: validated FHIR resources per second through the HTTP gateway.

The peer, measured in the same run on the same resources, is fhir.resources R4B validation in
this process, in a plain loop: the gateway cannot validate faster than that on one core, so the
ratio shows what HTTP, JSON, dedupe, SQL and Kafka acks (acks=all) cost on top.

Setup: the Synthea bundles of ../shared/data, their `urn:uuid` references resolved, cut into
transaction Bundles of 100 entries; a fresh embedded broker, a fresh SQLite file (or
`--database-url`, which must then hold no ingest_log rows for these resources), and one
`parcours ingest serve` process.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import rate_table
from ingest.bundle import resolve_entries

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class IngestBench:
    """Figures of one run."""

    resources: int
    bundles: int
    in_process_rate: float
    http_rate: float
    in_process_per_cpu_s: float
    gateway_per_cpu_s: float
    published: int
    duplicates: int
    latency_p50_ms: float
    latency_p95_ms: float
    concurrency: int
    bundle_size: int
    workers: int

    @property
    def ratio(self) -> float:
        """HTTP rate over in-process validation rate."""
        return self.http_rate / self.in_process_rate if self.in_process_rate else 0.0


def synthea_resources(data_dir: Path, files: int | None = None) -> list[dict[str, Any]]:
    """Every resource of the Synthea bundles, with real ids and `Type/id` references."""
    folder = data_dir / "fhir" / "synthea-r4-2019"
    paths = sorted(folder.glob("*.json"))[:files]
    if not paths:
        raise FileNotFoundError(f"no Synthea bundles in {folder}; set PARCOURS_SHARED_DATA")
    out: list[dict[str, Any]] = []
    for path in paths:
        out.extend(resolve_entries(json.loads(path.read_text())))
    return out


def transaction_bodies(resources: list[dict[str, Any]], size: int) -> list[bytes]:
    """Transaction Bundles of `size` entries (PUT Type/id), serialised once up front."""
    bodies = []
    for start in range(0, len(resources), size):
        chunk = resources[start : start + size]
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": f"{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                }
                for r in chunk
            ],
        }
        bodies.append(json.dumps(bundle).encode())
    return bodies


def in_process_rate(resources: list[dict[str, Any]]) -> tuple[float, float]:
    """Resources that fhir.resources R4B validates in a plain loop, per second of wall-clock
    time and per CPU second."""
    from fhir.resources.R4B import get_fhir_model_class

    for r in resources[:200]:  # import the models first: that is not validation
        get_fhir_model_class(r["resourceType"])
    started, cpu = time.perf_counter(), time.process_time()
    for r in resources:
        get_fhir_model_class(r["resourceType"]).model_validate(r)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return len(resources) / wall, len(resources) / cpu


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the processes of group `pgid` (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        # After the command name: state, ppid, pgrp, …, utime (12th), stime (13th).
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the gateway exited during startup")
        try:
            if httpx.get(f"{url}/healthz", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the gateway did not become healthy")


def http_rate(
    bodies: list[bytes], url: str, token: str, concurrency: int
) -> tuple[float, list[float], list[dict[str, Any]]]:
    """Post every body with `concurrency` client threads; (resources/s, latencies, answers)."""
    latencies: list[float] = []
    answers: list[dict[str, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()
    queue = list(reversed(bodies))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}

    def worker() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                t0 = time.perf_counter()
                resp = client.post("/fhir", content=body)
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    if resp.status_code != 200:
                        errors.append(f"{resp.status_code}: {resp.text[:300]}")
                    else:
                        answers.append(resp.json())

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    count = sum(len(a.get("entry") or []) for a in answers)
    return count / wall, latencies, answers


def run(
    data_dir: Path,
    files: int | None,
    bundle_size: int,
    concurrency: int,
    database_url: str | None,
    workers: int = 1,
) -> IngestBench:
    """Measure both rates on the same resources."""
    from ingest.auth import create_token
    from parcours.broker import EmbeddedBroker, free_port
    from parcours.db import make_engine, upgrade

    resources = synthea_resources(data_dir, files)
    bodies = transaction_bodies(resources, bundle_size)
    # The peer is measured before and after the HTTP run and averaged, so that a change in the
    # machine's load during the run weighs on both figures alike.
    peer_before, peer_cpu_before = in_process_rate(resources)

    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(port=free_port()) as broker:
        db_url = database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(db_url)
        engine = make_engine(db_url)
        token = create_token(engine, f"bench-{os.getpid()}-{int(time.time())}")
        engine.dispose()
        port = free_port()
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
            DATABASE_URL=db_url,
            PARCOURS_TOPIC_PREFIX=f"bench{os.getpid()}.",
            PARCOURS_LOG_LEVEL="WARNING",
        )
        url = f"http://127.0.0.1:{port}"
        log = open(Path(tmp) / "gateway.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "parcours", "ingest", "serve"),
                *("--port", str(port), "--workers", str(workers)),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_healthy(url, proc)
            cpu_before = group_cpu_seconds(proc.pid)
            rate, latencies, answers = http_rate(bodies, url, token, concurrency)
            gateway_cpu = group_cpu_seconds(proc.pid) - cpu_before
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            log.close()
    peer_after, peer_cpu_after = in_process_rate(resources)
    peer = (peer_before + peer_after) / 2
    peer_cpu = (peer_cpu_before + peer_cpu_after) / 2
    statuses = [e["response"]["status"] for a in answers for e in a.get("entry") or []]
    ordered = sorted(latencies)
    return IngestBench(
        resources=len(resources),
        bundles=len(bodies),
        in_process_rate=peer,
        http_rate=rate,
        in_process_per_cpu_s=peer_cpu,
        gateway_per_cpu_s=len(resources) / gateway_cpu if gateway_cpu else 0.0,
        published=statuses.count("201 Created"),
        duplicates=statuses.count("200 OK"),
        latency_p50_ms=statistics.median(ordered) * 1000,
        latency_p95_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000,
        concurrency=concurrency,
        bundle_size=bundle_size,
        workers=workers,
    )


def report(b: IngestBench) -> str:
    """The table and one-line summary `parcours bench ingest` prints."""
    rows = [
        (
            "fhir.resources R4B validation, in process, one core (peer)",
            f"{b.in_process_rate:,.0f}",
            "mean of a run before and one after the HTTP run",
        ),
        (
            f"gateway over HTTP, Bundles of {b.bundle_size}, {b.concurrency} clients, "
            f"{b.workers} worker{'s' if b.workers > 1 else ''}",
            f"{b.http_rate:,.0f}",
            f"p50 {b.latency_p50_ms:.0f} ms, p95 {b.latency_p95_ms:.0f} ms per Bundle",
        ),
    ]
    rows.append(
        (
            "per CPU second: peer process / gateway process",
            f"{b.in_process_per_cpu_s:,.0f} / {b.gateway_per_cpu_s:,.0f}",
            f"= {b.gateway_per_cpu_s / b.in_process_per_cpu_s:.0%} (gateway CPU time only)"
            if b.in_process_per_cpu_s
            else "",
        )
    )
    lines = rate_table(rows, "resources/s")
    lines.append(
        f"{b.resources} resources in {b.bundles} transaction Bundles: {b.published} published "
        f"(acks=all), {b.duplicates} answered as duplicates (repeated Organizations, Practitioners)"
    )
    verdict = "meets" if b.ratio >= 0.5 else "misses"
    lines.append(
        f"ingest: {b.http_rate:,.0f} validated resources/s through HTTP = {b.ratio:.0%} of "
        f"in-process validation ({b.in_process_rate:,.0f}/s); {verdict} the 50 % goal"
    )
    return "\n".join(lines)
