"""Alerts reach SQL and the alerts topic: a time-based one from the worker's timer, and the
census-level "ward above capacity", raised and resolved."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from parcours.settings import Settings
from parcours.topics import Topics, ensure_topics
from tests.integration.streams_helpers import count, produce, worker_env
from tests.support import fresh_database, parcours_process, wait_until

pytestmark = pytest.mark.integration
PARTITIONS = 2


def stay(prefix: str, n: int, ward: str, start: datetime, hours: float) -> dict[str, Any]:
    pid = f"{prefix}p{n}"
    end = start + timedelta(hours=hours)
    return {
        "resourceType": "Encounter",
        "id": f"{pid}-stay",
        "meta": {"versionId": "1"},
        "status": "finished",
        "class": {"code": "IMP"},
        "subject": {"reference": f"Patient/{pid}"},
        "serviceProvider": {"reference": f"Organization/{prefix}org"},
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "location": [
            {
                "location": {"reference": f"Location/{ward}"},
                "status": "completed",
                "physicalType": {"coding": [{"code": "wa"}]},
                "period": {"start": start.isoformat(), "end": end.isoformat()},
            }
        ],
        "hospitalization": {"dischargeDisposition": {"coding": [{"code": "home"}]}},
    }


def test_timer_and_capacity_alerts_reach_sql_and_the_alerts_topic(
    broker: str, pg_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics.from_settings(Settings(topic_prefix=topic_prefix))
    ensure_topics(broker, topics.all(), PARTITIONS)
    p = topic_prefix
    ward = f"{p}w"
    t0 = datetime(2025, 3, 1, 8, tzinfo=UTC)
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "Location",
            "id": f"{p}site",
            "meta": {"versionId": "1"},
            "status": "active",
            "physicalType": {"coding": [{"code": "si"}]},
            "managingOrganization": {"reference": f"Organization/{p}org"},
        },
        {
            "resourceType": "Location",
            "id": ward,
            "meta": {"versionId": "1"},
            "status": "active",
            "name": "Cardiologie",
            "physicalType": {"coding": [{"code": "wa"}]},
            "partOf": {"reference": f"Location/{p}site"},
        },
    ]
    # Capacity 2 (territory config); three overlapping stays put the ward above it for 2 hours.
    resources += [stay(p, n, ward, t0 + timedelta(hours=n), 4) for n in range(3)]
    produce(broker, topics.raw, resources)

    with fresh_database(pg_url) as db:
        env = worker_env(
            broker,
            db,
            p,
            PARCOURS_TOPIC_PARTITIONS=str(PARTITIONS),
            PARCOURS_PATHWAY_TIMER_INTERVAL_S="2",
            PARCOURS_CENSUS_CAPACITY=json.dumps({ward: 2}),
        )
        log = tmp_path / "worker.log"
        with parcours_process(["streams", "worker"], env, log) as proc:

            def alerts_in_sql() -> bool:
                assert proc.poll() is None, log.read_text()[-3000:]
                # Discharged in 2025 with no community follow-up: the wall-clock timer raises it.
                return (
                    count(db, "SELECT count(*) FROM alerts WHERE alert_type = 'no_follow_up'") >= 1
                    and count(
                        db,
                        "SELECT count(*) FROM alerts WHERE alert_type = 'ward_over_capacity' "
                        "AND status = 'resolved'",
                    )
                    == 1
                )

            wait_until(alerts_in_sql, timeout_s=120, what="the alerts in SQL")

        consumer = KafkaConsumer(bootstrap_servers=broker, consumer_timeout_ms=5000)
        parts = [TopicPartition(topics.alerts, n) for n in range(PARTITIONS)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        sent = [json.loads(m.value) for m in consumer]
        consumer.close()
    kinds = {(a["alert_type"], a["status"]) for a in sent}
    assert ("no_follow_up", "open") in kinds
    assert ("ward_over_capacity", "resolved") in kinds
    capacity = next(a for a in sent if a["alert_type"] == "ward_over_capacity")
    # Over capacity from the third admission (t0 + 2 h) to the first discharge (t0 + 4 h).
    assert capacity["raised_at"] == (t0 + timedelta(hours=2)).isoformat()
    assert capacity["resolved_at"] == (t0 + timedelta(hours=4)).isoformat()
