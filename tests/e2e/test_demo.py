"""`parcours demo` comes up with one command, data flows end to end, Ctrl-C leaves no process;
run again, it never counts a patient twice; its simulated history gives forecasts at once."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from parcours.broker import free_port
from tests.e2e.browser import shot
from tests.support import wait_until

pytestmark = pytest.mark.e2e


def descendants(pid: int) -> set[int]:
    """Every live process whose ancestry leads to `pid`, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces; the fields after its closing paren are fixed.
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents[int(entry.name)] = ppid
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def count(db: Path, table: str) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def hl7_acks(db: Path) -> Counter[str]:
    """ADT messages the demo's hospital sent over MLLP, by ACK code."""
    with sqlite3.connect(db, timeout=30) as conn:
        found = conn.execute(
            "SELECT ack_code, sum(count) FROM hl7_message_counts "
            "WHERE integrator = 'demo-simulator' AND sending_facility = 'clinique-valmy' "
            "GROUP BY ack_code"
        ).fetchall()
    return Counter({str(code): int(n) for code, n in found})


def test_demo_runs_the_whole_pathway_on_sqlite_and_ctrl_c_leaves_no_orphan(
    tmp_path: Path, browser: Browser
) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
    }
    ports = {name: free_port() for name in ("BROKER", "INGEST", "DASHBOARD")}
    for name, port in ports.items():
        env[f"PARCOURS_{name}_PORT"] = str(port)
    env["PARCOURS_DATA_DIR"] = str(tmp_path / "data")
    db = tmp_path / "data" / "parcours.db"
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "parcours", "demo", "--speed", "600"),
                *("--forecast-every", "0", "--history-days", "1"),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: b"demo is up" in log.read_bytes() or proc.poll() is not None,
                120,
                what="the demo banner",
            )
            assert proc.poll() is None, log.read_text()[-3000:]
            # The banner gives one dashboard account per role, with this run's passwords.
            banner = log.read_text()
            for role in ("coordinator", "manager", "integrator", "admin"):
                assert re.search(rf"^\s+{role}: \S{{12,}}$", banner, re.M), role
            # They are given as soon as the dashboard answers, not once the history is folded.
            assert banner.index("admin: ") < banner.index("Historique dans le broker"), banner
            # Simulator → gateway → Kafka → worker → SQL: the territory and stays land.
            wait_until(lambda: count(db, "stays") > 0, 120, what="stays in SQL")
            wait_until(lambda: count(db, "location_occupancy") > 0, 60, what="occupancy")
            # The live part goes through the gateway once the history is folded.
            wait_until(
                lambda: count(db, "ingest_log") > 0, 120, what="live resources via the gateway"
            )
            # One hospital's live movements come as PAM.fr ADT over MLLP, all acknowledged.
            wait_until(lambda: hl7_acks(db)["AA"] > 0, 180, what="ADT messages over MLLP")
            assert set(hl7_acks(db)) == {"AA"}, hl7_acks(db)
            assert count(db, "hl7_encounters") > 0
            gateway = f"http://127.0.0.1:{ports['INGEST']}"
            assert httpx.get(f"{gateway}/fhir/metadata", timeout=10).status_code == 200
            dash = f"http://127.0.0.1:{ports['DASHBOARD']}"
            assert httpx.get(f"{dash}/_stcore/health", timeout=10).status_code == 200
            # A manager, given an account with `parcours users create`, signs in and opens the
            # bed board: the simulated territory's hospitals are there.
            subprocess.run(
                [sys.executable, "-m", "parcours", "users", "create", "cadre", "--role", "manager"],
                env={**env, "PARCOURS_USER_PASSWORD": "mot de passe du cadre"},
                check=True,
                timeout=60,
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(dash)
            expect(page.get_by_role("heading", name="Connexion à Parcours")).to_be_visible(
                timeout=60_000
            )
            page.get_by_label("Identifiant").fill("cadre")
            page.get_by_label("Mot de passe").fill("mot de passe du cadre")
            page.get_by_role("button", name="Se connecter", exact=True).click()
            expect(page.get_by_role("heading", name="Tableau des lits")).to_be_visible(
                timeout=60_000
            )
            # The table paints on a canvas; its accessible cells carry the text.
            cell = page.get_by_test_id("stDataFrame").get_by_text("CHU Dijon Bourgogne")
            expect(cell.first).to_be_attached(timeout=60_000)
            shot(page, "demo_bed_board")
            page.close()

            children = descendants(proc.pid)
            names = {Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children}
            joined = b"\n".join(names)
            for part in (
                b"broker",
                b"ingest\x00serve",
                b"ingest\x00mllp",
                b"streams\x00worker",
                b"dashboard",
                b"simulate",
            ):
                assert part in joined, f"{part!r} not running: {joined!r}"

            proc.send_signal(signal.SIGINT)
            assert proc.wait(90) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    time.sleep(0.5)
    survivors = [pid for pid in children if alive(pid)]
    assert survivors == [], f"orphans left after Ctrl-C: {survivors}"
    assert b"Parcours demo stopped." in log.read_bytes()


def open_stays(db: Path) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        row = conn.execute(
            "SELECT count(*) FROM stays WHERE admitted_at IS NOT NULL AND discharged_at IS NULL"
        ).fetchone()
    return int(row[0])


def recorded_topic(db: Path) -> tuple[str, str]:
    with sqlite3.connect(db, timeout=30) as conn:
        row = conn.execute(
            "SELECT topic_id, recorded_at FROM topic_identity WHERE topic = 'fhir.raw'"
        ).fetchone()
    return str(row[0]), str(row[1])


def dedupe_rows_before(db: Path, instant: str) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ingest_log WHERE received_at < ?", (instant,)
        ).fetchone()
    return int(row[0])


@contextmanager
def demo_run(env: dict[str, str], log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`parcours demo ARGS` until its simulated history is folded; Ctrl-C on the way out."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parcours", "demo", "--no-dashboard", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: b"History folded" in log.read_bytes() or proc.poll() is not None,
                900,
                every_s=1,
                what="the simulated history folded",
            )
            assert proc.poll() is None, log.read_text()[-3000:]
            yield proc
            proc.send_signal(signal.SIGINT)
            assert proc.wait(120) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.timeout(2400)
def test_demo_run_twice_counts_each_patient_once_and_forecasts_from_its_history(
    tmp_path: Path,
) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
    }
    for name in ("BROKER", "INGEST", "DASHBOARD", "WORKER_WEB"):
        env[f"PARCOURS_{name}_PORT"] = str(free_port())
    env["PARCOURS_DATA_DIR"] = str(tmp_path / "data")
    db = tmp_path / "data" / "parcours.db"

    # First run: 30 simulated days reach the broker, the worker folds them, and the forecaster,
    # started once they are folded, writes forecasts.
    with demo_run(env, tmp_path / "first.log", "--forecast-every", "3600"):
        first = open_stays(db)
        first_topic, _ = recorded_topic(db)
        assert first > 100
        wait_until(lambda: count(db, "forecasts") > 0, 900, every_s=2, what="forecasts")

    # Second run on the same folder: the embedded broker is new and empty, so the database is
    # emptied and the history sent again; the census is one run's, not two.
    log = tmp_path / "second.log"
    # The census at the end of a history hardly depends on its length (the simulator warms up
    # four weeks first): the later runs send 12 days, to keep the test short.
    with demo_run(env, log, "--forecast-every", "0", "--history-days", "12"):
        second = open_stays(db)
        topic, recorded_at = recorded_topic(db)
        assert topic != first_topic
        assert b"starts clean" in log.read_bytes()
        assert 0.8 * first <= second <= 1.2 * first, (first, second)
        # The live part goes through the gateway; its dedupe log holds only what this broker got.
        wait_until(lambda: count(db, "ingest_log") > 0, 120, what="live resources via the gateway")
        assert dedupe_rows_before(db, recorded_at) == 0

    # `--keep` replays the previous run's simulation into the new broker instead: still once.
    log = tmp_path / "keep.log"
    with demo_run(env, log, "--forecast-every", "0", "--history-days", "12", "--keep"):
        kept = open_stays(db)
        assert b"previous simulation replayed" in log.read_bytes()
        assert 0.8 * first <= kept <= 1.2 * first, (first, kept)
