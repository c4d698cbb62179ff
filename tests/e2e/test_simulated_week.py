"""Seven simulated days, pushed like an integrator through the real gateway, processed by a real
stream worker into PostgreSQL: the hourly occupancy of every ward equals the simulator's truth.

The feed carries the simulator's default imperfections: duplicates, out-of-order and late
deliveries, missing discharge times (the mapping falls back to `meta.lastUpdated`), and invalid
resources the gateway must reject.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from ingest.auth import create_token
from parcours.db import make_engine
from parcours.settings import Settings
from parcours.topics import Topics, ensure_topics
from tests.integration.ingest_helpers import gateway_env, run_gateway
from tests.integration.streams_helpers import worker_env
from tests.support import fresh_database, parcours_process, wait_until

pytestmark = pytest.mark.e2e
SMALL = Path(__file__).resolve().parents[1] / "fixtures" / "simulate" / "small_territory.yaml"


def truth_by_ward(path: Path) -> tuple[dict[tuple[str, datetime], int], dict[str, str]]:
    """(ward, hour) → occupancy, and ward → service, from the truth CSV."""
    occupancy: dict[tuple[str, datetime], int] = {}
    service: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            occupancy[(row["ward_id"], datetime.fromisoformat(row["hour"]))] = int(row["occupancy"])
            service[row["ward_id"]] = row["service"]
    return occupancy, service


def test_a_simulated_week_through_gateway_worker_and_sql_matches_the_truth(
    broker: str, pg_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    with fresh_database(pg_url) as db_url:
        settings = Settings(topic_prefix=topic_prefix)
        ensure_topics(broker, Topics.from_settings(settings).all(), 4)
        engine = make_engine(db_url)
        token = create_token(engine, "simulator-e2e")
        gw_env = gateway_env(broker, db_url, topic_prefix)
        with (
            run_gateway(gw_env, tmp_path / "gateway.log") as gateway,
            parcours_process(
                ["streams", "worker"],
                worker_env(broker, db_url, topic_prefix),
                tmp_path / "worker.log",
            ) as worker,
        ):
            sim_env = {**gw_env, "PARCOURS_INGEST_TOKEN": token}
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "parcours",
                    "simulate",
                    "--gateway",
                    gateway.url,
                    "--seed",
                    "5",
                    "--days",
                    "7",
                    "--territory",
                    str(SMALL),
                    "--start",
                    "2026-01-05",
                    "--truth",
                    str(tmp_path / "truth"),
                    "--no-progress",
                ],
                env=sim_env,
                capture_output=True,
                timeout=600,
                check=False,
            )
            assert done.returncode == 0, done.stderr.decode()[-3000:]
            summary: dict[str, Any] = json.loads(done.stdout)
            sink, deliveries = summary["sink"], summary["deliveries"]
            # Every deliberately invalid resource was rejected, and only those.
            assert deliveries["invalid"] > 0 and deliveries["duplicate"] > 0
            assert deliveries["missing_discharge"] > 0, deliveries
            assert sink["rejected"] == deliveries["invalid"], gateway.log_tail()
            assert sink["accepted"] == sink["sent"] - sink["rejected"]

            truth, service = truth_by_ward(tmp_path / "truth" / "occupancy_hourly.csv")
            start = datetime.fromisoformat(summary["start"])
            end = datetime.fromisoformat(summary["end"])
            # The last hours may not be reached yet by the census watermark (the time of the
            # last event a hospital sent), so compare up to two hours before the end.
            hours = [h for (_, h) in truth if start <= h < end - timedelta(hours=2)]
            wards = sorted({w for w in service if service[w] != "urgences"})
            expected = {(w, h): truth[(w, h)] for w in wards for h in set(hours)}

            def derived() -> dict[tuple[str, datetime], int]:
                with engine.connect() as conn:
                    rows = conn.execute(
                        text(
                            "SELECT unit_id, hour, occupancy FROM census_hourly "
                            "WHERE unit_type = 'ward' AND hour >= :lo AND hour < :hi"
                        ),
                        {"lo": start, "hi": end - timedelta(hours=2)},
                    ).all()
                got: dict[tuple[str, datetime], int] = defaultdict(int)
                for unit_id, hour, occ in rows:
                    got[(unit_id, hour)] = occ
                return {key: got.get(key, 0) for key in expected}

            def converged() -> bool:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                return derived() == expected

            try:
                wait_until(converged, timeout_s=240, every_s=3, what="census = truth")
            except AssertionError:
                got = derived()
                wrong = sorted((k, expected[k], got[k]) for k in expected if got[k] != expected[k])
                raise AssertionError(
                    f"{len(wrong)} of {len(expected)} ward-hours differ, first: {wrong[:10]}"
                ) from None
        engine.dispose()
    assert len(wards) >= 7 and len(expected) >= 7 * 24 * 7 - 2 * 7
    assert sum(expected.values()) > 0
