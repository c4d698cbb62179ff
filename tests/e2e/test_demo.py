"""`parcours demo` comes up with one command and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parcours.broker import free_port
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


def test_demo_starts_on_sqlite_and_ctrl_c_leaves_no_orphan(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
    }
    env["PARCOURS_BROKER_PORT"] = str(free_port())
    env["PARCOURS_DATA_DIR"] = str(tmp_path / "data")
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parcours", "demo"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: b"demo is up" in log.read_bytes(), 90, what="the demo banner")
            # The worker is a Faust process: wait until it has joined and runs its agent.
            wait_until(
                lambda: b"Ready" in log.read_bytes() or proc.poll() is not None,
                90,
                what="the stream worker",
            )
            children = descendants(proc.pid)
            assert proc.poll() is None, log.read_text()[-3000:]
            assert len(children) >= 3, f"expected broker, tansu and worker; got {children}"
            assert (tmp_path / "data" / "parcours.db").exists()

            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    time.sleep(0.5)
    survivors = [pid for pid in children if alive(pid)]
    assert survivors == [], f"orphans left after Ctrl-C: {survivors}"
    assert b"Parcours demo stopped." in log.read_bytes()
