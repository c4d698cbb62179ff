"""The 24 Synthea bundles through a real broker and a real worker into PostgreSQL.

The counts of inpatient stays, ED visits and community visits, and the LOS of every stay, must
equal what this test reads from the bundle files itself. Then the same input is sent twice, and
a second worker with a new app id replays the raw topic from the start: the SQL tables must end
exactly as after the first clean run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from sqlalchemy import text

from parcours.db import make_engine
from parcours.settings import Settings
from parcours.topics import Topics, ensure_topics
from tests.integration.streams_helpers import (
    count,
    produce,
    snapshot,
    synthea_resources,
    worker_env,
)
from tests.support import fresh_database, parcours_process, wait_until

pytestmark = pytest.mark.integration
PARTITIONS = 4


def expected_from_bundles(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """What the bundles say, read straight from the JSON (not through Parcours' mapping)."""
    stays: dict[str, float] = {}
    ed = community = 0
    patients = set()
    for r in resources:
        if r["resourceType"] != "Encounter":
            continue
        code = r["class"]["code"]
        patients.add(r["subject"]["reference"].split("/")[-1])
        if code == "IMP":
            start = datetime.fromisoformat(r["period"]["start"])
            end = datetime.fromisoformat(r["period"]["end"])
            stays[r["id"]] = round((end - start).total_seconds() / 3600, 6)
        elif code == "EMER":
            ed += 1
        elif code in ("AMB", "HH", "VR"):
            community += 1
    return {"stays": stays, "ed": ed, "community": community, "patients": patients}


def sentinels(topic: str, broker: str, tag: str) -> list[str]:
    """One AMB Encounter per partition, sent last: once all are in SQL, the worker has read
    everything before them."""
    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    ids = []
    for p in range(PARTITIONS):
        pid = f"sentinel-{tag}-{p}"
        enc = {
            "resourceType": "Encounter",
            "id": f"enc-{pid}",
            "meta": {"versionId": "1"},
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": f"Patient/{pid}"},
            "period": {"start": "2021-06-01T08:00:00+00:00", "end": "2021-06-01T08:30:00+00:00"},
        }
        producer.send(topic, key=pid.encode(), value=json.dumps(enc).encode(), partition=p)
        ids.append(pid)
    producer.flush()
    producer.close()
    return ids


def without_sentinels(snap: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """The snapshot minus the sentinel rows."""
    return {
        table: [r for r in rows if not any(isinstance(v, str) and "sentinel-" in v for v in r)]
        for table, rows in snap.items()
    }


def test_synthea_bundles_end_in_sql_with_the_counts_of_the_files(
    broker: str, pg_url: str, topic_prefix: str, shared_data: Path, tmp_path: Path
) -> None:
    topics = Topics.from_settings(Settings(topic_prefix=topic_prefix))
    ensure_topics(broker, topics.all(), PARTITIONS)
    resources = synthea_resources(shared_data)
    expected = expected_from_bundles(resources)
    assert len(expected["stays"]) == 126 and expected["ed"] == 77  # the data README's counts
    organizations = len({r["id"] for r in resources if r["resourceType"] == "Organization"})
    produce(broker, topics.raw, resources)

    with fresh_database(pg_url) as db:
        env = worker_env(broker, db, topic_prefix, PARCOURS_TOPIC_PARTITIONS=str(PARTITIONS))
        log_a = tmp_path / "worker-a.log"
        with parcours_process(["streams", "worker"], env, log_a) as proc:

            def done() -> bool:
                assert proc.poll() is None, log_a.read_text()[-3000:]
                return (
                    count(db, "SELECT count(*) FROM stays") == len(expected["stays"])
                    and count(db, "SELECT count(*) FROM ed_visits") == expected["ed"]
                    and count(db, "SELECT count(*) FROM community_visits") == expected["community"]
                    and count(db, "SELECT count(*) FROM pathway_states")
                    == len(expected["patients"])
                    and count(db, "SELECT count(*) FROM organizations") == organizations
                    # The census hours a backlog left are recomputed once the worker is idle.
                    and count(db, "SELECT count(*) FROM census_pending") == 0
                )

            wait_until(done, timeout_s=120, what="the Synthea pathways in SQL")
            engine = make_engine(db)
            with engine.connect() as conn:
                los = {
                    r.stay_id: round(r.los_hours, 6)
                    for r in conn.execute(text("SELECT stay_id, los_hours FROM stays"))
                }
                hospital_rows = conn.scalar(
                    text("SELECT count(*) FROM census_hourly WHERE unit_type = 'hospital'")
                )
                admissions = conn.scalar(text("SELECT sum(admissions) FROM census_hourly"))
                ed_arrivals = conn.scalar(text("SELECT sum(ed_arrivals) FROM census_hourly"))
            engine.dispose()
            assert los == expected["stays"]
            # No Location in Synthea: the census falls back to hospital level, and still adds up.
            assert hospital_rows > 0
            assert admissions == len(expected["stays"])
            assert ed_arrivals == expected["ed"]
            # No Location either: each hospital is named after its Organization.
            unnamed = count(
                db,
                "SELECT count(*) FROM location_occupancy WHERE unit_type = 'hospital'"
                " AND name IS NULL",
            )
            assert unnamed == 0
            clean = snapshot(db, "")

            # The same input a second time changes nothing.
            produce(broker, topics.raw, resources)
            first = sentinels(topics.raw, broker, "a")
            wait_until(
                lambda: (
                    count(
                        db,
                        "SELECT count(*) FROM community_visits "
                        "WHERE patient_id LIKE 'sentinel-a-%'",
                    )
                    == len(first)
                ),
                timeout_s=120,
                what="the first sentinels",
            )
            assert without_sentinels(snapshot(db, "")) == without_sentinels(clean)

        # A worker with a new app id replays the raw topic from the start onto the same tables.
        second = sentinels(topics.raw, broker, "b")
        env_b = {**env, "PARCOURS_STREAMS_APP_ID": f"{topic_prefix}replay"}
        log_b = tmp_path / "worker-b.log"
        with parcours_process(["streams", "worker"], env_b, log_b) as proc_b:

            def replayed() -> bool:
                assert proc_b.poll() is None, log_b.read_text()[-3000:]
                return count(
                    db,
                    "SELECT count(*) FROM community_visits WHERE patient_id LIKE 'sentinel-b-%'",
                ) == len(second)

            wait_until(replayed, timeout_s=150, what="the replay to reach the second sentinels")
        assert without_sentinels(snapshot(db, "")) == without_sentinels(clean)

        # The read interface on the same database.
        patient = sorted(expected["patients"])[0]
        out = subprocess.run(
            [sys.executable, "-m", "parcours", "pathways", "show", patient, "--json"],
            env=env,
            capture_output=True,
            check=True,
        )
        shown = json.loads(out.stdout)
        own_stays = {
            r["id"]
            for r in resources
            if r["resourceType"] == "Encounter"
            and r["class"]["code"] == "IMP"
            and r["subject"]["reference"].endswith(patient)
        }
        assert {s["stay_id"] for s in shown["stays"]} == own_stays
        out = subprocess.run(
            [sys.executable, "-m", "parcours", "pathways", "summary", "--json"],
            env=env,
            capture_output=True,
            check=True,
        )
        summary = json.loads(out.stdout)
        assert summary["stays"] == len(expected["stays"])
        assert summary["ed_visits"] == expected["ed"]
        values = sorted(expected["stays"].values())
        assert summary["los_hours_median"] == pytest.approx((values[62] + values[63]) / 2, abs=0.01)
