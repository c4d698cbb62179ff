"""Helpers of the stream worker's integration tests: feed the raw topic, own databases,
snapshots."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sqlalchemy import text

from ingest.bundle import patient_key, resolve_entries
from parcours.db import make_engine
from parcours.settings import Settings
from parcours.topics import Topics, ensure_topics
from simulate.run import Feed, feed
from simulate.territory import compact_territory
from tests.support import parcours_env, parcours_process, wait_until

SYNTHEA = Path("fhir") / "synthea-r4-2019"
FEED_START = datetime(2026, 1, 5, tzinfo=UTC)


def territory_feed(prefix: str, days: float, seed: int) -> Feed:
    """`days` of the simulator's compact territory, every id starting with `prefix`: its
    messages in delivery order and the counts they must end with in SQL."""
    return feed(compact_territory(prefix), seed, FEED_START, days, id_prefix=prefix)


def raw_key(resource: dict[str, Any]) -> str:
    """The Kafka key the gateway gives a resource: its patient, else `Type/id`."""
    return patient_key(resource) or f"{resource['resourceType']}/{resource['id']}"


def synthea_resources(shared_data: Path) -> list[dict[str, Any]]:
    """Every resource of the 24 Synthea bundles, references resolved, in file order."""
    out: list[dict[str, Any]] = []
    for path in sorted((shared_data / SYNTHEA).glob("*.json")):
        out.extend(resolve_entries(json.loads(path.read_text())))
    return out


def produce(broker: str, topic: str, resources: Iterable[dict[str, Any]]) -> int:
    """Send resources keyed like the gateway does, acks=all; returns how many."""
    producer = KafkaProducer(
        bootstrap_servers=broker, acks="all", linger_ms=20, batch_size=256 * 1024
    )
    n = 0
    try:
        for resource in resources:
            producer.send(
                topic, key=raw_key(resource).encode(), value=json.dumps(resource).encode()
            )
            n += 1
        producer.flush()
    finally:
        producer.close()
    return n


def last_offsets(broker: str, topic: str) -> dict[int, int]:
    """Partition → offset of its last record, read from the records themselves (Tansu's
    ListOffsets answers the start of the last batch, not the end of the log)."""
    consumer = KafkaConsumer(bootstrap_servers=broker, consumer_timeout_ms=3000)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        last: dict[int, int] = {}
        for record in consumer:
            last[record.partition] = max(record.offset, last.get(record.partition, -1))
        return last
    finally:
        consumer.close()


def uncommitted(broker: str, group: str, topic: str, last: dict[int, int]) -> int:
    """How many records of `topic`, up to `last` (see `last_offsets`), lie past the offsets that
    consumer group `group` committed."""
    # A consumer of the group that never subscribes: it reads the group's offsets, joins nothing.
    consumer = KafkaConsumer(bootstrap_servers=broker, group_id=group, enable_auto_commit=False)
    try:
        return sum(
            offset + 1 - (consumer.committed(TopicPartition(topic, p)) or 0)
            for p, offset in last.items()
        )
    finally:
        consumer.close()


def worker_env(broker: str, db_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """Environment of a stream worker for a test (no web port, short session timeout)."""
    settings = {
        "KAFKA_BOOTSTRAP_SERVERS": broker,
        "DATABASE_URL": db_url,
        "PARCOURS_TOPIC_PREFIX": prefix,
        "PARCOURS_WORKER_WEB_PORT": "0",
        "PARCOURS_WORKER_SESSION_TIMEOUT_S": "6",
        # Wall-clock timers would make runs differ; the tests that want them turn them on.
        "PARCOURS_PATHWAY_TIMER_INTERVAL_S": "0",
        "PARCOURS_LOG_LEVEL": "WARNING",
    }
    return parcours_env(**{**settings, **extra})


# Per table: its key columns and the column that scopes it to a test's patients or hospitals.
SNAPSHOT_TABLES = {
    "pathway_states": ("patient_id", "patient_id"),
    "stays": ("stay_id", "patient_id"),
    "stay_locations": ("stay_id, seq", "patient_id"),
    "ed_visits": ("encounter_id", "patient_id"),
    "community_visits": ("encounter_id", "patient_id"),
    "referrals": ("referral_id", "patient_id"),
    "alerts": ("alert_id", "coalesce(patient_id, unit_id)"),
    "census_hourly": ("unit_type, unit_id, hour", "hospital_id"),
    "location_occupancy": ("unit_type, unit_id", "hospital_id"),
    "locations": ("location_id", "location_id"),
}


def snapshot(db_url: str, like: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the pathway and census tables whose scope column starts with `like`."""
    engine = make_engine(db_url)
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table, (key, scope) in SNAPSHOT_TABLES.items():
            rows = conn.execute(
                text(f"SELECT * FROM {table} WHERE {scope} LIKE :p ORDER BY {key}"),
                {"p": f"{like}%"},
            ).all()
            out[table] = [tuple(_plain(v) for v in r) for r in rows]
    engine.dispose()
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return value


def rows(db_url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """The rows of one query."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def count(db_url: str, sql: str, **params: Any) -> int:
    """One count query."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(text(sql), params) or 0)
    finally:
        engine.dispose()


def finished(db: str, expected: dict[str, int]) -> bool:
    """True once every stay, visit, referral and location of the territory is in SQL, and the
    census hours of the backlog are recomputed."""
    return (
        count(db, "SELECT count(*) FROM stays") == expected["stays"]
        and count(db, "SELECT count(*) FROM stays WHERE discharged_at IS NOT NULL")
        == expected["discharged"]
        and count(db, "SELECT count(*) FROM ed_visits") == expected["ed_visits"]
        and count(db, "SELECT count(*) FROM community_visits") == expected["community_visits"]
        and count(db, "SELECT count(*) FROM referrals") == expected["referrals"]
        and count(db, "SELECT count(*) FROM locations") == expected["locations"]
        and count(db, "SELECT count(*) FROM census_pending") == 0
    )


def assert_same_tables(
    clean: dict[str, list[tuple[Any, ...]]], other: dict[str, list[tuple[Any, ...]]], when: str
) -> None:
    """Every table of snapshot `other` equals the clean run's; a difference shows a few rows."""
    for table in clean:
        only_clean = sorted(set(clean[table]) - set(other[table]))[:3]
        only_other = sorted(set(other[table]) - set(clean[table]))[:3]
        assert other[table] == clean[table], (
            f"{table} differs {when}: clean run only {only_clean}; other run only {only_other}"
        )


def run_to_the_end(
    env: dict[str, str], db: str, expected: dict[str, int], log: Path, what: str
) -> None:
    """Run one stream worker until the whole territory is in `db`; if it exits, show its log."""
    with parcours_process(["streams", "worker"], env, log) as proc:

        def done() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            return finished(db, expected)

        wait_until(done, timeout_s=150, what=what)


def feed_territory(
    broker: str, prefix: str, partitions: int, days: float, seed: int
) -> tuple[Topics, dict[str, int], int]:
    """Create the test's topics and send `days` of the compact territory to its raw topic: the
    topics, the counts the territory must end with in SQL, and how many messages were sent."""
    topics = Topics.from_settings(Settings(topic_prefix=prefix))
    ensure_topics(broker, topics.all(), partitions)
    run = territory_feed(prefix, days, seed)
    return topics, run.expected, produce(broker, topics.raw, run.resources)
