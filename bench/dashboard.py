"""`parcours bench dashboard`: each page's time to render in headless Chromium, and each dashboard
query's median, beside a bare `SELECT 1` round trip on the same database.

The data: `--days` of the default (Dijon-like) territory, simulated to a broker, folded by a stream
worker into PostgreSQL; done once, and reused when the database already holds stays.
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, func, select, text

from dashboard import accounts, queries, roles
from dashboard.accounts import Role
from parcours.db import make_engine, upgrade
from parcours.db.pathway_models import StayRow, StreamProgressRow
from parcours.timeutil import utc_or_none


class BenchError(RuntimeError):
    """The benchmark could not run (what is missing is in the message)."""


@dataclass
class Result:
    """What one run measured."""

    stays: int
    loaded_s: float | None
    select1_ms: float
    queries_ms: dict[str, float] = field(default_factory=dict)
    pages_s: dict[str, float] = field(default_factory=dict)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


@contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parcours", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def load(db_url: str, days: int, workdir: Path) -> float:
    """Simulate `days` of the default territory into the database; the seconds it took."""
    from parcours.broker import EmbeddedBroker, free_port

    began = time.monotonic()
    upgrade(db_url)
    broker = EmbeddedBroker(port=free_port()).start()
    try:
        env = _env(
            KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
            DATABASE_URL=db_url,
            PARCOURS_TOPIC_PREFIX=f"bench-dash-{secrets.token_hex(3)}-",
            PARCOURS_WORKER_WEB_PORT="0",
        )
        with _process(["streams", "worker"], env, workdir / "worker.log") as worker:
            sim = subprocess.run(
                [sys.executable, "-m", "parcours", "simulate", "--days", str(days), "--kafka"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=(workdir / "simulate.log").open("wb"),
                check=False,
            )
            if sim.returncode != 0:
                raise BenchError(f"the simulator failed; see {workdir / 'simulate.log'}")
            engine = make_engine(db_url)
            deadline = time.monotonic() + 3600
            while time.monotonic() < deadline:
                if worker.poll() is not None:
                    raise BenchError(f"the stream worker stopped; see {workdir / 'worker.log'}")
                with engine.connect() as conn:
                    lags = conn.execute(select(StreamProgressRow.lag)).scalars().all()
                if lags and all(lag == 0 for lag in lags):
                    break
                time.sleep(5)
            else:
                raise BenchError("the stream worker did not catch up within an hour")
    finally:
        broker.stop()
    return time.monotonic() - began


def _median_ms(call: Callable[[], Any], runs: int) -> float:
    call()  # warm the pool and the database's caches: the dashboard runs warm
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def time_queries(engine: Engine, runs: int) -> tuple[float, dict[str, float]]:
    """Median of `SELECT 1` and of every query the pages run."""
    from streams import read

    now = datetime.now(UTC)
    with engine.connect() as conn:
        newest = conn.scalar(select(func.max(StayRow.admitted_at)))
    # The territory's clock: the simulated days end before now, the worklists look back from them.
    at = utc_or_none(newest)
    at = at or now

    def select1() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1")).scalar()

    hospitals = list(queries.hospitals(engine))
    patient = (queries.find_patients(engine, limit=1) or [""])[0]
    calls: dict[str, Callable[[], Any]] = {
        "bed_board (ward)": lambda: queries.bed_board(engine, "ward"),
        "bed_board (hospital)": lambda: queries.bed_board(engine, "hospital"),
        "occupancy_heatmap (7 days)": lambda: queries.occupancy_heatmap(
            engine, at - timedelta(days=7)
        ),
        "places": lambda: queries.places(engine),
        "data_age": lambda: queries.data_age(engine, now),
        "stream_progress": lambda: queries.stream_progress(engine, now),
        "unit_forecast (one hospital)": lambda: (
            queries.unit_forecast(engine, hospitals[0]) if hospitals else None
        ),
        "expected_departures (every hospital)": lambda: queries.expected_departures(
            engine, hospitals, now, now + timedelta(hours=12)
        ),
        "ed_now": lambda: queries.ed_now(engine, at, timedelta(hours=4)),
        "discharged_without_follow_up": lambda: queries.discharged_without_follow_up(engine, at),
        "readmissions": lambda: queries.readmissions(engine, at),
        "long_stays": lambda: queries.long_stays(engine, at, timedelta(days=12)),
        "alerts (open)": lambda: queries.alerts(engine, "open"),
        "alerts (open, one hospital)": lambda: queries.alerts(
            engine, "open", unit_ids=hospitals[:1]
        ),
        "find_patients": lambda: queries.find_patients(engine, "0"),
        "pathway (one patient)": lambda: read.pathway(engine, patient),
        "alert_history (one patient)": lambda: queries.alert_history(engine, patient),
        "pathway_totals": lambda: queries.pathway_totals(engine),
        "feeds": lambda: queries.feeds(engine),
        "recent_rejections": lambda: queries.recent_rejections(engine),
        "access_audit": lambda: accounts.access_audit(engine),
        "acknowledgements": lambda: queries.acknowledgements(engine),
    }
    return _median_ms(select1, runs), {name: _median_ms(c, runs) for name, c in calls.items()}


def time_pages(db_url: str, workdir: Path, runs: int) -> dict[str, float]:
    """Median seconds from a click in the menu to the page fully drawn, for every page."""
    from playwright.sync_api import expect, sync_playwright

    from parcours.broker import free_port

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise BenchError("Debian's chromium is missing: apt-get install chromium")
    engine = make_engine(db_url)
    name, password = f"bench-{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    accounts.create_user(engine, name, Role.ADMIN, password)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = _env(DATABASE_URL=db_url)
    with _process(["dashboard", "--port", str(port)], env, workdir / "dashboard.log"):
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("the dashboard did not start")
            time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.get_by_label("Identifiant").fill(name)
            page.get_by_label("Mot de passe").fill(password)
            page.get_by_role("button", name="Se connecter", exact=True).click()
            sidebar = page.get_by_test_id("stSidebar")
            expect(sidebar).to_be_visible(timeout=60_000)
            done = page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]')
            times: dict[str, list[float]] = {spec.title: [] for spec in roles.PAGES}
            title = page.get_by_test_id("stMain").get_by_role("heading", level=1).first
            expect(title).to_be_visible(timeout=60_000)
            for _ in range(runs + 1):
                for spec in roles.PAGES:
                    before = title.inner_text()
                    t0 = time.perf_counter()
                    sidebar.get_by_role("link", name=spec.title).click()
                    # Drawn: the next page's title is up and its script has finished.
                    expect(title).not_to_have_text(before, timeout=60_000)
                    expect(done).to_be_visible(timeout=60_000)
                    times[spec.title].append(time.perf_counter() - t0)
            browser.close()
    # The first round opens every page once cold; the dashboard's users work warm.
    return {title: statistics.median(ts[1:]) for title, ts in times.items()}


def run(db_url: str, days: int, runs: int = 5) -> Result:
    """Load the data if needed, then measure the queries and the pages."""
    if not db_url.startswith("postgresql"):
        raise BenchError(
            "the dashboard bench runs on PostgreSQL: set DATABASE_URL or --database-url"
        )
    upgrade(db_url)
    engine = make_engine(db_url)
    workdir = Path(tempfile.mkdtemp(prefix="parcours-bench-dashboard-"))
    with engine.connect() as conn:
        stays = conn.scalar(select(func.count()).select_from(StayRow)) or 0
    loaded = None
    if not stays:
        loaded = load(db_url, days, workdir)
        with engine.connect() as conn:
            stays = conn.scalar(select(func.count()).select_from(StayRow)) or 0
    # What autovacuum does to a live database after a bulk load: statistics and visibility map.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    select1, timed = time_queries(engine, runs)
    pages = time_pages(db_url, workdir, max(1, runs // 2))
    return Result(stays, loaded, select1, timed, pages)


def report(result: Result) -> str:
    """The table, with the goal beside each figure, and a one-line summary."""
    lines = [
        f"data: {result.stays:,} stays"
        + (f" (loaded in {result.loaded_s:.0f} s)" if result.loaded_s else " (reused)"),
        "",
        f"{'query':<34} {'median ms':>10}   goal < 200 ms",
        f"{'SELECT 1 (peer)':<34} {result.select1_ms:>10.1f}",
    ]
    lines += [f"{name:<34} {ms:>10.1f}" for name, ms in result.queries_ms.items()]
    lines += ["", f"{'page':<34} {'median s':>10}   goal < 2 s"]
    lines += [f"{name:<34} {s:>10.2f}" for name, s in result.pages_s.items()]
    slowest_q = max(result.queries_ms.items(), key=lambda kv: kv[1])
    slowest_p = max(result.pages_s.items(), key=lambda kv: kv[1])
    lines += [
        "",
        f"summary: slowest query {slowest_q[0]} {slowest_q[1]:.0f} ms "
        f"(SELECT 1: {result.select1_ms:.1f} ms), slowest page {slowest_p[0]} {slowest_p[1]:.2f} s",
    ]
    return "\n".join(lines)
