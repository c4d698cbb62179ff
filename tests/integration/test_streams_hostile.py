"""Hostile records written straight to the raw topic (no gateway in front), folded by a real
worker: each goes to the dead letters with a reason naming what is wrong, the valid records
around it (before and after, of the same patient key and of others) reach SQL, and a replay of
the whole topic doubles nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from parcours.db import make_engine
from parcours.settings import Settings
from parcours.topics import Topics, ensure_topics
from streams.runtime.batch import BatchProcessor, RawMessage, rules_from_settings
from streams.sink.writer import SqlSink
from tests.integration.ingest_helpers import read_topic
from tests.integration.streams_helpers import count, raw_key, rows, uncommitted, worker_env
from tests.support import fresh_database, parcours_process, wait_until

pytestmark = pytest.mark.integration

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]
# Versions of one Encounter sent in one burst.
BURST = 2000


class NotUtf8(str):
    """A header key whose bytes on the wire are not UTF-8 (kafka-python encodes header keys
    with `str.encode`; Kafka checks nothing)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe-key"


def encounter(eid: str, pid: str, **changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": eid,
        "meta": {"versionId": "1", "lastUpdated": "2026-03-01T10:00:00Z"},
        "status": "finished",
        "class": {"code": "EMER"},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": "2026-03-01T08:00:00Z", "end": "2026-03-01T10:00:00Z"},
        "serviceProvider": {"reference": "Organization/org-h"},
    }
    resource.update(changes)
    return resource


def ward(lid: str, parent: str | None = None, name: str = "Ward") -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Location",
        "id": lid,
        "status": "active",
        "name": name,
        "physicalType": {"coding": [{"code": "wa"}]},
    }
    if parent:
        resource["partOf"] = {"reference": f"Location/{parent}"}
    return resource


def period(start: str, end: str) -> dict[str, str]:
    return {"start": start, "end": end}


def hostile(p: str, pid: str) -> list[tuple[bytes | None, bytes, str]]:
    """(key, value, what the reason must say) of records the worker must dead-letter."""
    key = pid.encode()

    def bad(eid: str, **changes: Any) -> bytes:
        return json.dumps(encounter(f"{p}{eid}", pid, **changes)).encode()

    return [
        (key, b'{"resourceType":"Encounter","id":"\xff\xfe"}', "UTF-8"),
        (key, b"[1, 2, 3]", "resourceType is missing"),
        (key, b"42", "resourceType is missing"),
        (key, b"null", "resourceType is missing"),
        (key, json.dumps("x" * 100_000).encode(), "resourceType is missing"),
        (key, b'{"id": "x"}', "resourceType is missing"),
        (key, b'{"resourceType": ["Encounter"], "id": "x"}', "is not a string"),
        (key, b'{"resourceType": "Foo", "id": "x"}', "is not an R4 resource type"),
        (key, b'{"resourceType":"Encounter","x":' + b"[" * 10_000 + b"]" * 10_000 + b"}", "depth"),
        (key, bad("nul", id="e\u0000x"), "is not a FHIR id"),
        (key, bad("ctl", id="e\u0001\u001b[31m"), "is not a FHIR id"),
        (key, bad("long", id="e" * 5000), "is not a FHIR id"),
        (key, bad("org", serviceProvider={"reference": "Organization/o\u0000"}), "NUL"),
        (
            key,
            bad(
                "disp", hospitalization={"dischargeDisposition": {"coding": [{"code": "h\u0000"}]}}
            ),
            "NUL",
        ),
        (key, bad("v", meta={"versionId": "1\u0000"}), "NUL"),
        (f"Location/{p}nul".encode(), json.dumps(ward(f"{p}nul", name="W\u0000")).encode(), "NUL"),
        (
            key,
            b'{"resourceType":"Encounter","id":"' + p.encode() + b'inf","length":{"value":1e400}}',
            "infinity",
        ),
        (key, bad("nan", period=period("NaN", "2026-03-01T10:00:00Z")), "period.start"),
        (key, bad("y0", period=period("0000-01-01", "2026-03-01T10:00:00Z")), "period.start"),
        (
            key,
            bad("y9999", period=period("2026-03-01T08:00:00Z", "9999-12-31T23:59:59+14:00")),
            "period.end",
        ),
        (key, bad("feb30", period=period("2026-02-30", "2026-03-01T10:00:00Z")), "period.start"),
        (
            key,
            bad("leap", period=period("2026-03-01T08:00:00Z", "2026-03-01T23:59:60Z")),
            "a leap second",
        ),
        (
            key,
            bad("rev", period=period("2026-03-01T10:00:00Z", "2026-03-01T08:00:00Z")),
            "before period.start",
        ),
        (key, b"", "tombstone"),
    ]


def send(broker: str, topic: str, records: list[Record]) -> dict[int, int]:
    """Produce `records`, acks=all; the offset of the last one sent to each partition."""
    producer = KafkaProducer(bootstrap_servers=broker, acks="all", max_request_size=2 * 1024**2)
    try:
        sent = [
            producer.send(topic, key=key, value=value, headers=headers)
            for key, value, headers in records
        ]
        producer.flush()
        last: dict[int, int] = {}
        for future in sent:
            meta = future.get(timeout=30)
            last[meta.partition] = max(last.get(meta.partition, -1), meta.offset)
        return last
    finally:
        producer.close()


def dead_letters(broker: str, topic: str) -> list[tuple[bytes, str]]:
    """(value, reason) of every dead letter."""
    return [(r.value or b"", dict(r.headers)["reason"].decode()) for r in read_topic(broker, topic)]


def test_hostile_raw_records_are_dead_lettered_and_the_rest_is_folded_once(
    broker: str, pg_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    p = topic_prefix
    pid, other = f"{p}pat", f"{p}other"
    topics = Topics.from_settings(Settings(topic_prefix=p))
    ensure_topics(broker, topics.all(), 4)

    def rec(
        resource: dict[str, Any], key: bytes | None = None, headers: dict[str, bytes] | None = None
    ) -> Record:
        value = json.dumps(resource).encode()
        return (key if key is not None else pid.encode(), value, list((headers or {}).items()))

    garbage = {
        "source": b"\xff\xfe\x00",
        "resource-type": b"\x80",
        "received-at": b"\x00",
        NotUtf8("bad-key"): b"x",
    }
    big = encounter(f"{p}big", other, period=period("2026-03-03T08:00:00Z", "2026-03-03T09:00:00Z"))
    big["text"] = {"status": "generated", "div": "<div>" + "y" * 900_000 + "</div>"}
    valid_before = [
        rec(encounter(f"{p}ed1", pid)),
        rec(encounter(f"{p}ed2", other), other.encode()),
        # Valid FHIR a feed should not send, but whose meaning is clear: kept.
        rec(ward(f"{p}wa", f"{p}wb"), f"Location/{p}wa".encode()),
        rec(ward(f"{p}wb", f"{p}wa"), f"Location/{p}wb".encode()),
        rec(ward(f"{p}ed1"), f"Location/{p}ed1".encode()),  # an Encounter's id, as a Location
    ]
    corpus = hostile(p, pid)
    # A garbage header on a hostile record: its dead letter is recorded all the same.
    hostile_records: list[Record] = [(k, v or None, []) for k, v, _ in corpus]
    hostile_records[0] = (hostile_records[0][0], hostile_records[0][1], list(garbage.items()))
    valid_after = [
        rec(
            encounter(f"{p}amb1", pid, **{"class": {"code": "AMB"}}),
            headers=garbage,
        ),
        rec(
            encounter(
                f"{p}ed3", other, period=period("2026-03-02T08:00:00Z", "2026-03-02T09:00:00Z")
            ),
            b"",
        ),
        rec(
            encounter(
                f"{p}ed4", other, period=period("2026-03-04T08:00:00Z", "2026-03-04T09:00:00Z")
            ),
            b"\x00\xff",
        ),
        rec(big, other.encode()),
        rec(
            encounter(
                f"{p}self",
                pid,
                **{"class": {"code": "IMP"}},
                period=period("2026-03-05T08:00:00Z", "2026-03-06T08:00:00Z"),
                partOf={"reference": f"Encounter/{p}self"},
                location=[{"location": {"reference": f"Location/{p}wa"}, "status": "completed"}],
            )
        ),
    ]
    burst = [
        rec(
            encounter(
                f"{p}stay",
                pid,
                meta={"versionId": str(v)},
                status="finished" if v == BURST else "in-progress",
                **{"class": {"code": "IMP"}},
                period=period("2026-03-10T08:00:00Z", "2026-03-12T08:00:00Z")
                if v == BURST
                else {"start": "2026-03-10T08:00:00Z"},
            )
        )
        for v in range(1, BURST + 1)
    ]
    records = valid_before + hostile_records + valid_after + burst
    send(broker, topics.raw, records)
    # Read whole at every worker start: dead-lettered at each, recorded once.
    closed = {**ward(f"{p}closed"), "status": "closed"}
    send(broker, topics.directory, [rec(closed, f"Location/{p}closed".encode())])

    def folded(db: str) -> bool:
        return (
            count(db, "SELECT count(*) FROM ed_visits WHERE patient_id IN (:a, :b)", a=pid, b=other)
            == 5
            and count(db, "SELECT count(*) FROM community_visits WHERE patient_id = :a", a=pid) == 1
            and count(
                db,
                "SELECT count(*) FROM stays WHERE patient_id = :a AND discharged_at IS NOT NULL",
                a=pid,
            )
            == 2
        )

    with fresh_database(pg_url) as db:
        log = tmp_path / "worker.log"
        with parcours_process(["streams", "worker"], worker_env(broker, db, p), log) as proc:

            def done() -> bool:
                assert proc.poll() is None, log.read_text()[-3000:]
                return folded(db) and len(dead_letters(broker, topics.deadletter)) > len(corpus)

            wait_until(done, timeout_s=120, what="the valid records and the dead letters")
            first = {
                table: count(db, f"SELECT count(*) FROM {table}")
                for table in ("ed_visits", "community_visits", "stays", "stay_locations")
            }
            assert proc.poll() is None

        found = dead_letters(broker, topics.deadletter)
        assert len(found) == len(corpus) + 1, [reason for _, reason in found]
        by_value = {value: reason for value, reason in found}
        for _, value, expected in corpus:
            assert expected in by_value[value], (value[:80], by_value[value])
        assert "Location.status 'closed'" in by_value[json.dumps(closed).encode()]
        shown = rows(
            db, "SELECT source, diagnostics FROM ingest_rejections ORDER BY source, diagnostics"
        )
        assert len(shown) == len(corpus) + 1
        assert all(diagnostics for _, diagnostics in shown)
        assert first == {"ed_visits": 5, "community_visits": 1, "stays": 2, "stay_locations": 2}
        assert count(db, "SELECT count(*) FROM locations WHERE location_id LIKE :p", p=f"{p}%") == 3

        # The same records again, then the whole topic replayed by a new consumer group.
        # (Read from the producer: kafka-python's reader cannot read the header key that is not
        # UTF-8.)
        last = send(broker, topics.raw, valid_before + valid_after + burst)
        env = worker_env(broker, db, p, PARCOURS_STREAMS_APP_ID=f"{p}replay")
        with parcours_process(["streams", "worker"], env, tmp_path / "replay.log") as proc:

            def replayed() -> bool:
                assert proc.poll() is None, (tmp_path / "replay.log").read_text()[-3000:]
                return uncommitted(broker, f"{p}replay", topics.raw, last) == 0

            wait_until(replayed, timeout_s=120, what="the replay")
            assert folded(db)
        again = {table: count(db, f"SELECT count(*) FROM {table}") for table in first}
        assert again == first
        # Every hostile record was dead-lettered again; Feed health shows each once.
        assert len(dead_letters(broker, topics.deadletter)) == 2 * (len(corpus) + 1)
        assert count(db, "SELECT count(*) FROM ingest_rejections") == len(corpus) + 1


def test_a_merge_loop_written_past_the_gateway_is_dead_lettered_and_keeps_the_pathway(
    db_url: str, topic_prefix: str
) -> None:
    p = topic_prefix
    a, b, c = f"{p}a", f"{p}b", f"{p}c"

    def patient(pid: str, into: str, at: str) -> dict[str, Any]:
        return {
            "resourceType": "Patient",
            "id": pid,
            "meta": {"lastUpdated": at},
            "link": [{"type": "replaced-by", "other": {"reference": f"Patient/{into}"}}],
        }

    def day(n: int) -> dict[str, str]:
        return period(f"2026-03-0{n}T08:00:00Z", f"2026-03-0{n}T09:00:00Z")

    processor = BatchProcessor(SqlSink(make_engine(db_url)), rules_from_settings(Settings()))
    states: dict[str, Any] = {}

    def fold(*resources: dict[str, Any]) -> list[str]:
        msgs = [RawMessage(raw_key(r).encode(), json.dumps(r).encode()) for r in resources]
        outcome = processor.process(msgs, states.get)
        states.update({pid: value for pid, (_, value) in outcome.states.items()})
        return [reason for _, _, reason in outcome.rejects]

    def visits() -> dict[str, int]:
        found = rows(
            db_url,
            "SELECT patient_id, count(*) FROM ed_visits WHERE patient_id LIKE :p GROUP BY 1",
            p=f"{p}%",
        )
        return {pid: n for pid, n in found}

    assert fold(encounter(f"{p}e1", a, period=day(1)), encounter(f"{p}e2", b, period=day(2))) == []
    assert fold(encounter(f"{p}e3", c, period=day(3))) == []
    # a merged into b (its records are b's to send again): a's pathway goes.
    assert fold(patient(a, b, "2026-03-05T00:00:00Z")) == []
    assert visits() == {b: 1, c: 1}
    # b merged back into a: refused, and b keeps its pathway.
    reasons = fold(patient(b, a, "2026-03-05T00:00:01Z"))
    assert len(reasons) == 1 and f"Patient {b} replaced-by {a}" in reasons[0], reasons
    assert fold(encounter(f"{p}e4", b, period=day(4))) == []
    assert visits() == {b: 2, c: 1}
    # The database refuses a patient's rows as a whole: b's other records of the batch that
    # holds the merge go to the dead letters with it, under the same reason.
    reasons = fold(encounter(f"{p}e5", b, period=day(5)), patient(b, a, "2026-03-05T00:00:02Z"))
    assert len(reasons) == 2 and all("merge loop" in r for r in reasons), reasons
    assert visits() == {b: 2, c: 1}
    # Within one batch, c into b and b into c: the first is kept, the second refused.
    reasons = fold(patient(c, b, "2026-03-06T00:00:00Z"), patient(b, c, "2026-03-06T00:00:01Z"))
    assert len(reasons) == 1 and f"Patient {b} replaced-by {c}" in reasons[0], reasons
    assert visits() == {b: 2}
