"""Walking skeleton: FHIR Encounter → raw topic (kafka-python) → Faust worker → PostgreSQL row."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sqlalchemy import text

from parcours.db import make_engine
from parcours.settings import Settings
from parcours.topics import Topics, ensure_topics
from tests.support import parcours_env, parcours_process, wait_until

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"


def test_encounter_lands_in_postgres_and_garbage_is_dead_lettered(
    broker: str, pg_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics.from_settings(Settings(topic_prefix=topic_prefix))
    ensure_topics(broker, topics.all(), 4)
    encounter = json.loads((FIXTURES / "encounter_emer.json").read_text())
    encounter["id"] = f"enc-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    producer.send(topics.raw, key=b"pat-1", value=json.dumps(encounter).encode())
    producer.send(topics.raw, key=b"pat-1", value=b"{not json")
    producer.flush()
    producer.close()

    env = parcours_env(
        KAFKA_BOOTSTRAP_SERVERS=broker,
        DATABASE_URL=pg_url,
        PARCOURS_TOPIC_PREFIX=topic_prefix,
        PARCOURS_WORKER_WEB_PORT="0",
    )
    engine = make_engine(pg_url)

    def row() -> dict[str, object] | None:
        with engine.connect() as conn:
            found = (
                conn.execute(
                    text("SELECT * FROM encounters WHERE encounter_id = :id"),
                    {"id": encounter["id"]},
                )
                .mappings()
                .first()
            )
        return dict(found) if found else None

    with parcours_process(["streams", "worker"], env, tmp_path / "worker.log") as proc:
        landed = wait_until(row, timeout_s=90, what="the encounter row")
        assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]

    assert landed["patient_id"] == "pat-1"
    assert landed["class_code"] == "EMER"
    assert landed["status"] == "finished"
    assert landed["service_provider"] == "chu-dijon"
    assert landed["source_version"] == "1"
    assert landed["period_start"].isoformat() == "2026-01-12T07:15:00+00:00"

    consumer = KafkaConsumer(bootstrap_servers=broker, consumer_timeout_ms=5000)
    partitions = [TopicPartition(topics.deadletter, p) for p in range(4)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    dead = list(consumer)
    consumer.close()
    assert [m.value for m in dead] == [b"{not json"]
    reason = dict(dead[0].headers)["reason"].decode()
    assert "Expecting property name" in reason or "JSON" in reason
