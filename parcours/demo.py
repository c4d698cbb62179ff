"""`parcours demo`: the whole system on one machine, as child processes stopped together.

Order matters: the broker answers before anything connects to it, the schema exists before any
process writes, the gateway answers before the simulator pushes to it.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import httpx

from parcours import ParcoursError
from parcours.broker import free_port, wait_for_metadata
from parcours.settings import Settings
from parcours.supervise import Supervisor

DEMO_INTEGRATOR = "demo-simulator"


@dataclass(frozen=True)
class DemoOptions:
    """What `parcours demo` starts besides the core (broker, gateway, worker)."""

    simulate: bool = True
    speed: float = 60.0
    seed: int = 1
    dashboard: bool = True
    forecast_every_s: float = 600.0


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


def run_demo(settings: Settings, options: DemoOptions, sup: Supervisor) -> list[str]:
    """Start every process under `sup`; returns the lines of the banner to show."""
    from ingest.auth import create_token
    from parcours.db import make_engine, upgrade
    from parcours.runtime import redact
    from parcours.topics import Topics, ensure_topics

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PARCOURS_DATA_DIR"] = str(settings.data_dir.resolve())
    env["DATABASE_URL"] = settings.db_url
    exe = [sys.executable, "-m", "parcours"]

    if not settings.kafka_bootstrap_servers:
        sup.start("broker", [*exe, "broker", "--port", str(settings.broker_port)], env)
        env["KAFKA_BOOTSTRAP_SERVERS"] = f"{settings.broker_host}:{settings.broker_port}"
    bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS") or settings.bootstrap
    wait_for_metadata(bootstrap, timeout_s=60)
    ensure_topics(bootstrap, Topics.from_settings(settings).all(), settings.topic_partitions)
    upgrade(settings.db_url)

    gateway = f"http://{settings.ingest_host}:{settings.ingest_port}"
    sup.start("gateway", [*exe, "ingest", "serve"], env)
    if settings.worker_web_port:
        env.setdefault("PARCOURS_WORKER_WEB_PORT", str(free_port()))
    sup.start("streams worker", [*exe, "streams", "worker"], env)
    wait_http(f"{gateway}/healthz")
    banner = [
        f"Kafka (fhir.raw, fhir.deadletter): {bootstrap}",
        f"Database: {redact(settings.db_url)}",
        f"FHIR gateway: {gateway}/fhir  (OpenAPI: {gateway}/docs)",
    ]
    if options.dashboard:
        sup.start("dashboard", [*exe, "dashboard"], env)
        dash = f"http://{settings.dashboard_host}:{settings.dashboard_port}"
        wait_http(f"{dash}/_stcore/health")
        banner.append(f"Dashboard: {dash}")
    if options.forecast_every_s > 0:
        sup.start(
            "forecaster", [*exe, "forecast", "run", "--every", str(options.forecast_every_s)], env
        )
    if options.simulate:
        engine = make_engine(settings.db_url)
        try:
            token = create_token(engine, DEMO_INTEGRATOR, rotate=True)
        finally:
            engine.dispose()
        # The token goes through the environment, not argv, so `ps` does not show it.
        sim_env = {**env, "PARCOURS_INGEST_TOKEN": token}
        sup.start(
            "simulator",
            [
                *exe,
                "simulate",
                "--gateway",
                gateway,
                "--speed",
                str(options.speed),
                "--seed",
                str(options.seed),
            ],
            sim_env,
        )
        banner.append(
            f"Simulator: Dijon-like territory, {options.speed:g}x real time, pushing as "
            f"integrator '{DEMO_INTEGRATOR}'"
        )
    return banner
