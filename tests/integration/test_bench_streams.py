"""`parcours bench streams` runs end to end on a small territory (what it prints, not how fast)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support import fresh_database, parcours_env

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode", ["backlog", "live"])
def test_bench_streams_with_two_workers_prints_its_table_and_summary(
    broker: str, pg_url: str, mode: str
) -> None:
    def bench(db: str) -> subprocess.CompletedProcess[str]:
        args = ["--compact-days", "0.5", "--seconds", "2", "--rate", "50", "--workers", "2"]
        args += ["--live"] if mode == "live" else []
        return subprocess.run(
            [sys.executable, "-m", "parcours", "bench", "streams", "--database-url", db, *args],
            env=parcours_env(KAFKA_BOOTSTRAP_SERVERS=broker),
            capture_output=True,
            text=True,
            timeout=300,
        )

    with fresh_database(pg_url) as db:
        run = bench(db)
        assert run.returncode == 0, run.stderr[-3000:]
        # The bench filled the database it was given; a second run on it is refused.
        again = bench(db)
    out = run.stdout
    assert "| plain aiokafka + json.loads (peer, same topic) |" in out
    assert "| 2 parcours streams workers, raw → SQL" in out
    assert ("live: producing the territory took" in out) == (mode == "live")
    assert ("from a backlog: the territory was produced" in out) == (mode == "backlog")
    rates = re.search(
        r"summary: ([\d,]+) msg/s \(([\d,]+) events/s, 2 workers at ([\d,]+) each", out
    )
    assert rates, out
    assert all(int(x.replace(",", "")) > 0 for x in rates.groups())
    assert again.returncode == 1
    assert "needs an empty database" in again.stderr
