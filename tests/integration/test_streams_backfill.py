"""A backfill on PostgreSQL's default settings: reference data first, bounded statements, poison
messages isolated, a prompt stop, and the ED in the census.

- The directory topic (Organizations, Locations…) is read whole before any patient event, so a
  backfill whose Locations were sent after the stays that use them (and on another topic than
  their partitions) places every stay in its ward: the same rows as a single-partition run with
  the Locations first, and no stand-in ward.
- A batch whose census rewrite deletes more than 50,000 (unit, hour) keys completes.
- A message SQL cannot store (a NUL character in a Location name, in an Encounter) goes to
  the dead letters with its reason, shows on the Feed health page, and the rest is written; a
  clean version of the Location is written.
- SIGTERM in the middle of a long batch stops the worker (fold processes included) within 10 s;
  a restart ends equal to a clean run.
- The ED's hourly occupancy equals the simulator's ground truth.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from parcours.db import make_engine
from parcours.db.bulk import bulk_write
from parcours.settings import Settings
from parcours.topics import Topics, ensure_topics, is_directory_key
from simulate.truth import occupancy_rows
from streams.runtime.batch import BatchProcessor, RawMessage, rules_from_settings
from streams.sink.writer import SqlSink
from tests.integration.streams_helpers import (
    assert_same_tables,
    count,
    finished,
    raw_key,
    rows,
    run_to_the_end,
    snapshot,
    territory_feed,
    worker_env,
)
from tests.support import fresh_database, parcours_process, wait_until

pytestmark = pytest.mark.integration


def send(broker: str, sends: list[tuple[str, dict[str, Any]]]) -> None:
    """Produce (topic, resource) pairs in order, keyed like the gateway, acks=all."""
    producer = KafkaProducer(
        bootstrap_servers=broker, acks="all", linger_ms=20, batch_size=256 * 1024
    )
    try:
        for topic, resource in sends:
            producer.send(
                topic,
                key=raw_key(resource).encode(),
                value=json.dumps(resource).encode(),
            )
        producer.flush()
    finally:
        producer.close()


def topics_for(broker: str, prefix: str, partitions: int) -> Topics:
    topics = Topics.from_settings(Settings(topic_prefix=prefix))
    ensure_topics(broker, topics.all(), partitions)
    return topics


def is_directory(resource: dict[str, Any]) -> bool:
    return is_directory_key(raw_key(resource))


def test_directory_first_places_every_stay_as_a_single_partition_run(
    broker: str, pg_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    simulated = territory_feed(topic_prefix, days=3, seed=11)
    resources, expected = simulated.resources, simulated.expected
    directory = [r for r in resources if is_directory(r)]
    patients = [r for r in resources if not is_directory(r)]

    # Reference: one raw partition, the Locations first.
    single = topics_for(broker, f"{topic_prefix}one-", 1)
    send(broker, [(single.raw, r) for r in directory + patients])
    # Backfill: four partitions, the patient events sent first, the directory after them.
    spread = topics_for(broker, f"{topic_prefix}four-", 4)
    send(broker, [(spread.raw, r) for r in patients] + [(spread.directory, r) for r in directory])

    with fresh_database(pg_url) as one_db, fresh_database(pg_url) as four_db:
        env = worker_env(broker, one_db, f"{topic_prefix}one-", PARCOURS_TOPIC_PARTITIONS="1")
        run_to_the_end(env, one_db, expected, tmp_path / "one.log", "the single-partition run")
        env = worker_env(broker, four_db, f"{topic_prefix}four-", PARCOURS_TOPIC_PARTITIONS="4")
        run_to_the_end(env, four_db, expected, tmp_path / "four.log", "the backfill")
        wards = {r["id"] for r in directory if r.get("physicalType")}
        census_wards = {
            u
            for (u,) in rows(
                four_db, "SELECT DISTINCT unit_id FROM census_hourly WHERE unit_type = 'ward'"
            )
        }
        assert census_wards, "the census has ward rows"
        assert census_wards <= wards, f"stand-in wards: {sorted(census_wards - wards)[:5]}"
        assert count(four_db, "SELECT count(*) FROM stay_locations WHERE ward_id IS NULL") == 0
        assert_same_tables(
            snapshot(one_db, topic_prefix), snapshot(four_db, topic_prefix), "after the backfill"
        )


def raw_messages(resources: list[dict[str, Any]]) -> list[RawMessage]:
    return [RawMessage(raw_key(r).encode(), json.dumps(r).encode()) for r in resources]


def fold_and_write(db_url: str, msgs: list[RawMessage]) -> Any:
    processor = BatchProcessor(SqlSink(make_engine(db_url)), rules_from_settings(Settings()))
    return processor.process(msgs, lambda pid: None)


def test_a_census_rewrite_of_more_than_50000_keys_completes(pg_url: str, topic_prefix: str) -> None:
    resources = territory_feed(topic_prefix, days=1, seed=4).resources
    msgs = raw_messages(resources)
    with fresh_database(pg_url) as clean, fresh_database(pg_url) as crowded:
        fold_and_write(clean, msgs)
        hospitals = rows(
            clean,
            "SELECT hospital_id, min(hour), max(hour) FROM census_hourly"
            " WHERE unit_type = 'hospital' GROUP BY hospital_id",
        )
        assert hospitals
        # Rows of wards that do not exist over the hours the batch recomputes: the batch must
        # delete every one of them, more than 50,000 keys in all.
        engine = make_engine(crowded)
        stale = []
        for hospital, lo, hi in hospitals:
            hours = int((hi - lo).total_seconds() // 3600) + 1
            for ward in range(30_000 // hours + 1):
                for h in range(hours):
                    stale.append(
                        {
                            "unit_type": "ward",
                            "unit_id": f"{topic_prefix}ghost-{hospital}-{ward}",
                            "hour": datetime.fromtimestamp(lo.timestamp() + 3600 * h, UTC),
                            "hospital_id": hospital,
                            "occupancy": 1,
                            "admissions": 0,
                            "discharges": 0,
                            "transfers_in": 0,
                            "transfers_out": 0,
                            "ed_arrivals": 0,
                        }
                    )
        assert len(stale) > 50_000
        with engine.begin() as conn:
            bulk_write(conn, _census_table(), stale)
        engine.dispose()

        outcome = fold_and_write(crowded, msgs)

        assert outcome.rejects == []
        assert (
            count(crowded, "SELECT count(*) FROM census_hourly WHERE unit_id LIKE '%ghost%'") == 0
        )
        assert_same_tables(snapshot(clean, topic_prefix), snapshot(crowded, topic_prefix), "")


def _census_table() -> Any:
    from parcours.db.pathway_models import CensusHourlyRow

    return CensusHourlyRow.__table__


def poisoned(prefix: str) -> list[dict[str, Any]]:
    """A Location whose name holds a NUL character, and a patient whose Encounter does."""
    return [
        {
            "resourceType": "Location",
            "id": f"{prefix}poison-ward",
            "meta": {"versionId": "1"},
            "status": "active",
            "name": "Ward\u0000A",
            "physicalType": {"coding": [{"code": "wa"}]},
        },
        {
            "resourceType": "Encounter",
            "id": f"{prefix}poison-enc",
            "meta": {"versionId": "1", "lastUpdated": "2026-03-02T10:00:00Z"},
            "status": "finished",
            "class": {"code": "IMP"},
            "subject": {"reference": f"Patient/{prefix}poison-patient"},
            "period": {"start": "2026-03-02T08:00:00Z", "end": "2026-03-02T10:00:00Z"},
            "hospitalization": {"dischargeDisposition": {"coding": [{"code": "home\u0000x"}]}},
            "serviceProvider": {"reference": f"Organization/{prefix}org\u00001"},
        },
    ]


def test_what_the_database_refuses_is_dead_lettered_and_the_rest_is_written(
    pg_url: str, topic_prefix: str
) -> None:
    resources = territory_feed(topic_prefix, days=1, seed=8).resources
    middle = len(resources) // 2
    poison = poisoned(topic_prefix)
    with fresh_database(pg_url) as clean, fresh_database(pg_url) as db:
        fold_and_write(clean, raw_messages(resources))
        outcome = fold_and_write(db, raw_messages(resources[:middle] + poison + resources[middle:]))
        rejected = {json.loads(value)["id"]: reason for _, value, reason in outcome.rejects}
        assert set(rejected) == {r["id"] for r in poison}
        assert all(reason.strip() for reason in rejected.values())
        assert_same_tables(snapshot(clean, topic_prefix), snapshot(db, topic_prefix), "")


def test_a_location_sql_cannot_store_is_dead_lettered_and_its_clean_version_written(
    pg_url: str, topic_prefix: str
) -> None:
    resources = territory_feed(topic_prefix, days=0.5, seed=5).resources
    directory = [r for r in resources if is_directory(r)]
    ward = poisoned(topic_prefix)[0]
    with fresh_database(pg_url) as db:
        # The worker reads the directory topic whole at every start: two starts, two reads. The
        # mapping refuses the NUL at each (its Feed health row is one: `dedupe_key`).
        first = fold_and_write(db, raw_messages([*directory, ward]))
        again = fold_and_write(db, raw_messages([*directory, ward]))
        for outcome in (first, again):
            assert [json.loads(value)["id"] for _, value, _ in outcome.rejects] == [ward["id"]]
            assert "NUL" in outcome.rejects[0][2]
        assert count(db, "SELECT count(*) FROM locations WHERE location_id LIKE '%poison%'") == 0
        # A new version of it is read again (and written, once it is clean).
        fixed = {**ward, "meta": {"versionId": "2"}, "name": "Ward A"}
        assert fold_and_write(db, raw_messages([fixed])).rejects == []
        assert count(db, "SELECT count(*) FROM locations WHERE location_id LIKE '%poison%'") == 1


def _resource_or_none(value: bytes) -> dict[str, Any]:
    try:
        found = orjson.loads(value)
    except orjson.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}


# Raw records no gateway would let through: JSON nested deeper than any parser's default limit,
# a lone surrogate in an id (PostgreSQL's text refuses it), and a record without a value (a
# tombstone).
RAW_POISON: list[tuple[bytes, bytes | None]] = [
    (
        b"deep-patient",
        b'{"resourceType":"Patient","id":"deep","x":' + b"[" * 3000 + b"]" * 3000 + b"}",
    ),
    (b"surrogate-patient", b'{"resourceType":"Encounter","id":"\\ud800x","status":"finished"}'),
    (b"tombstone-patient", None),
]


def send_raw(broker: str, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()


def dead_letters(broker: str, topic: str) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
    consumer = KafkaConsumer(bootstrap_servers=broker, consumer_timeout_ms=3000)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        return [(_resource_or_none(r.value), dict(r.headers)) for r in consumer]
    finally:
        consumer.close()


def test_a_poison_resource_mid_stream_does_not_stop_the_worker(
    broker: str, pg_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    simulated = territory_feed(topic_prefix, days=28, seed=9)
    resources, expected = simulated.resources, simulated.expected
    topics = topics_for(broker, topic_prefix, 4)
    middle = len(resources) // 2
    stream = resources[:middle] + poisoned(topic_prefix) + resources[middle:]
    assert len(stream) > 10_000
    send(broker, [(topics.for_key(raw_key(r)), r) for r in stream])
    send_raw(broker, topics.raw, RAW_POISON)
    with fresh_database(pg_url) as db:
        log = tmp_path / "worker.log"
        with parcours_process(
            ["streams", "worker"], worker_env(broker, db, topic_prefix), log
        ) as proc:

            def done() -> bool:
                assert proc.poll() is None, log.read_text()[-3000:]
                return finished(db, expected) and count(
                    db, "SELECT count(*) FROM ingest_rejections WHERE source = 'stream-worker'"
                ) >= 2 + len(RAW_POISON)

            wait_until(done, timeout_s=180, what="every pathway and four dead letters")
            assert proc.poll() is None
        found = dead_letters(broker, topics.deadletter)
        ids = {r["id"]: h for r, h in found if "id" in r}
        assert {r["id"] for r in poisoned(topic_prefix)} <= set(ids)
        assert all(h.get("reason") for _, h in found)
        assert len(found) == len(poisoned(topic_prefix)) + len(RAW_POISON)
        shown = rows(
            db,
            "SELECT resource_id, reason, diagnostics FROM ingest_rejections"
            " WHERE source = 'stream-worker' ORDER BY resource_id",
        )
        assert {r["id"] for r in poisoned(topic_prefix)} | {"deep-patient"} <= {r[0] for r in shown}
        assert len(shown) == len(poisoned(topic_prefix)) + len(RAW_POISON)
        assert all(r[2] for r in shown)
        assert count(db, "SELECT count(*) FROM locations WHERE location_id LIKE '%poison%'") == 0


def test_sigterm_mid_batch_stops_promptly_and_a_restart_ends_like_a_clean_run(
    broker: str, pg_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    simulated = territory_feed(topic_prefix, days=48, seed=12)
    resources, expected = simulated.resources, simulated.expected
    topics = topics_for(broker, topic_prefix, 4)
    send(broker, [(topics.for_key(raw_key(r)), r) for r in resources])
    with fresh_database(pg_url) as clean, fresh_database(pg_url) as db:
        env = worker_env(broker, clean, topic_prefix, PARCOURS_STREAMS_APP_ID=f"{topic_prefix}a")
        run_to_the_end(env, clean, expected, tmp_path / "clean.log", "the clean run")
        # Large batches, so that the stop finds one under way.
        env = worker_env(
            broker,
            db,
            topic_prefix,
            PARCOURS_STREAMS_APP_ID=f"{topic_prefix}b",
            PARCOURS_WORKER_BATCH_SIZE="8000",
        )
        log = tmp_path / "stopped.log"
        with parcours_process(["streams", "worker"], env, log) as proc:
            wait_until(
                lambda: count(db, "SELECT count(*) FROM stays") > 0,
                timeout_s=120,
                every_s=0.05,
                what="the first batch written",
            )
            children = _children(proc.pid)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pytest.fail(
                    "the worker did not stop within 10 s of SIGTERM:\n" + log.read_text()[-3000:]
                )
            assert not finished(db, expected), "the stop came after the whole backlog"
            assert all(not _alive(pid) for pid in children), "a fold process outlived the worker"
        run_to_the_end(env, db, expected, tmp_path / "restart.log", "the restart")
        assert_same_tables(
            snapshot(clean, topic_prefix), snapshot(db, topic_prefix), "after a stop"
        )


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(x) for x in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent's wait is missing.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_ed_census_hours_equal_the_simulators_truth(pg_url: str, topic_prefix: str) -> None:
    simulated = territory_feed(topic_prefix, days=2, seed=13)
    # The simulator's own hourly occupancy of its EDs (present at hour H when start <= H < end).
    present = {
        (row["ward_id"], int(datetime.fromisoformat(row["hour"]).timestamp()) // 3600): row[
            "occupancy"
        ]
        for row in occupancy_rows(simulated.simulation)
        if row["service"] == "urgences" and row["occupancy"] > 0
    }
    assert present and max(present.values()) > 1
    first = int(simulated.simulation.start.timestamp()) // 3600
    with fresh_database(pg_url) as db:
        fold_and_write(db, raw_messages(simulated.resources))
        found = {
            (unit, int(hour.timestamp()) // 3600): occupancy
            for unit, hour, occupancy in rows(
                db,
                "SELECT unit_id, hour, occupancy FROM census_hourly"
                " WHERE unit_type = 'ward' AND unit_id LIKE '%urgences' AND occupancy > 0",
            )
        }
        # The truth starts with the run; the census stops at the latest time the data reached.
        last = max(hour for _, hour in found)
        assert {k: v for k, v in found.items() if k[1] >= first} == {
            k: v for k, v in present.items() if k[1] <= last
        }
