"""HL7 v2 ADT over a real MLLP socket → `parcours ingest mllp` → broker → stream worker → SQL."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, TopicPartition

from dashboard.queries import hl7_messages
from ingest.mllp import AdtProcessor, MllpListener
from ingest.ownership import grant
from ingest.publish import Publisher
from parcours.broker import free_port
from parcours.db import make_engine, upgrade
from parcours.settings import Settings
from parcours.topics import Topics, ensure_topics
from tests.hl7_messages import MllpClient, ack_code, adt, err_location
from tests.integration.streams_helpers import count, rows, worker_env
from tests.support import parcours_env, parcours_process, wait_until

pytestmark = pytest.mark.integration
SENDERS = json.dumps({"gam-test": ["CHU21"], "gam-other": ["CH2"]})


@dataclass
class Feed:
    """A running listener and worker of one test."""

    port: int
    db: str
    broker: str
    topics: Topics
    run: str

    def client(self) -> MllpClient:
        return MllpClient("127.0.0.1", self.port)

    def raw_records(self) -> list[tuple[bytes, dict[str, bytes]]]:
        """Every record on the raw topic (key, headers)."""
        consumer = KafkaConsumer(bootstrap_servers=self.broker, consumer_timeout_ms=2000)
        try:
            parts = [
                TopicPartition(self.topics.raw, p)
                for p in consumer.partitions_for_topic(self.topics.raw) or ()
            ]
            consumer.assign(parts)
            consumer.seek_to_beginning()
            return [(r.key, dict(r.headers)) for r in consumer]
        finally:
            consumer.close()


def _dead_letters(broker: str, topic: str) -> list[dict[str, bytes]]:
    consumer = KafkaConsumer(bootstrap_servers=broker, consumer_timeout_ms=3000)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        return [dict(r.headers) for r in consumer]
    finally:
        consumer.close()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def feed(broker: str, pg_url: str, topic_prefix: str, tmp_path: Path) -> Iterator[Feed]:
    topics = Topics.from_settings(Settings(topic_prefix=topic_prefix))
    ensure_topics(broker, topics.all(), 4)
    port = free_port()
    env = worker_env(
        broker,
        pg_url,
        topic_prefix,
        PARCOURS_MLLP_PORT=str(port),
        PARCOURS_MLLP_SENDERS=SENDERS,
        PARCOURS_MLLP_MAX_MESSAGE_BYTES="20000",
        PARCOURS_TIMEZONE="Europe/Paris",
    )
    with (
        parcours_process(["ingest", "mllp"], env, tmp_path / "mllp.log") as listener,
        parcours_process(["streams", "worker"], env, tmp_path / "worker.log") as worker,
    ):
        wait_until(lambda: _port_open(port), timeout_s=60, what="the MLLP port")
        yield Feed(port, pg_url, broker, topics, uuid.uuid4().hex[:6])
        assert listener.poll() is None, (tmp_path / "mllp.log").read_text()[-3000:]
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]


def _stay(db: str, stay_id: str) -> tuple[object, ...] | None:
    found = rows(
        db,
        "SELECT patient_id, admitted_at, discharged_at FROM stays WHERE stay_id = :s",
        s=stay_id,
    )
    return found[0] if found else None


def _wards(db: str, stay_id: str) -> list[str]:
    return [
        r[0]
        for r in rows(
            db, "SELECT ward_id FROM stay_locations WHERE stay_id = :s ORDER BY start_at", s=stay_id
        )
    ]


def test_admission_transfers_out_of_order_repeat_and_discharge(feed: Feed) -> None:
    ipp, nda, ins = f"P{feed.run}", f"N{feed.run}", f"1{int(feed.run, 16):012d}"
    c = feed.client()
    common = {"ipp": ipp, "nda": nda, "ins": ins}
    assert ack_code(c.send(adt("A01", movement="M1", at="20260301100000", **common))) == "AA"
    transfer = adt("A02", movement="M3", at="20260303100000", ward="PNEUMO", **common)
    assert ack_code(c.send(transfer)) == "AA"
    # A transfer that happened before the previous one, sent after it.
    assert (
        ack_code(c.send(adt("A02", movement="M2", at="20260302100000", ward="NEURO", **common)))
        == "AA"
    )
    before = len(feed.raw_records())
    # The interface engine repeats a message: AA, and nothing is published.
    assert ack_code(c.send(transfer)) == "AA"
    assert len(feed.raw_records()) == before
    assert ack_code(c.send(adt("A03", movement="M4", at="20260305110000", **common))) == "AA"
    c.close()

    def discharged() -> bool:
        stay = _stay(feed.db, nda)
        return stay is not None and stay[2] is not None

    wait_until(discharged, timeout_s=90, what="the discharged stay")
    patient, admitted, left = _stay(feed.db, nda)  # type: ignore[misc]
    assert patient == ipp
    assert admitted.isoformat() == "2026-03-01T09:00:00+00:00"  # 10:00 in Paris (winter)
    assert left.isoformat() == "2026-03-05T10:00:00+00:00"
    assert _wards(feed.db, nda) == ["CHU21-CARDIO", "CHU21-NEURO", "CHU21-PNEUMO"]
    # The stay's versions were published keyed by the patient, like the HTTP gateway's.
    keys = {k for k, h in feed.raw_records() if h.get("resource-type") == b"Encounter"}
    assert keys == {ipp.encode()}
    # Each version is in the gateway's ingest log with what it holds, so that a FHIR resend of
    # it with other content is refused (409), not taken for a duplicate.
    logged = rows(
        feed.db,
        "SELECT digest FROM ingest_log WHERE resource_type = 'Encounter' AND resource_id = :n",
        n=nda,
    )
    assert len(logged) >= 4 and all(r[0] and len(r[0]) == 64 for r in logged), logged
    assert (
        count(feed.db, "SELECT count(*) FROM patient_identifiers WHERE patient_id = :p", p=ipp) == 2
    )
    # The gateway's identifier index knows the patient too (FHIR feeds' conditional references).
    assert (
        count(
            feed.db,
            "SELECT count(*) FROM identifier_index WHERE resource_type = 'Patient' "
            "AND resource_id = :p AND value = :v",
            p=ipp,
            v=ins,
        )
        == 1
    )
    # `parcours pathways show` finds the patient by the INS value.
    out = subprocess.run(
        [sys.executable, "-m", "parcours", "pathways", "show", ins, "--json"],
        env=parcours_env(DATABASE_URL=feed.db),
        capture_output=True,
        check=True,
    )
    assert [s["stay_id"] for s in json.loads(out.stdout)["stays"]] == [nda]


def test_cancelled_admission_withdraws_the_stay(feed: Feed) -> None:
    ipp, nda = f"P{feed.run}", f"N{feed.run}"
    c = feed.client()
    assert ack_code(c.send(adt("A01", ipp=ipp, nda=nda, movement="A1"))) == "AA"
    wait_until(lambda: _stay(feed.db, nda), timeout_s=90, what="the admitted stay")
    cancel = adt("A11", ipp=ipp, nda=nda, movement="A1", action="CANCEL", original="A01")
    assert ack_code(c.send(cancel)) == "AA"
    c.close()
    wait_until(lambda: _stay(feed.db, nda) is None, timeout_s=90, what="the stay withdrawn")


def test_merge_moves_the_stay_to_the_surviving_patient(feed: Feed) -> None:
    old, survivor, nda = f"O{feed.run}", f"S{feed.run}", f"N{feed.run}"
    c = feed.client()
    assert ack_code(c.send(adt("A01", ipp=old, nda=nda, ins=None))) == "AA"
    wait_until(lambda: _stay(feed.db, nda), timeout_s=90, what="the stay of the old patient")
    assert ack_code(c.send(adt("A40", ipp=survivor, merged_ipp=old))) == "AA"
    c.close()

    def moved() -> bool:
        stay = _stay(feed.db, nda)
        return stay is not None and stay[0] == survivor

    wait_until(moved, timeout_s=90, what="the stay under the surviving patient")
    wait_until(
        lambda: count(feed.db, "SELECT count(*) FROM stays WHERE patient_id = :p", p=old) == 0,
        timeout_s=60,
        what="no stay left under the merged patient",
    )


def test_a_merge_back_is_refused_on_mrg1_and_publishes_nothing(feed: Feed) -> None:
    """A40 X into Y, then Y into X (directly, or through a chain of earlier A40s) would leave
    each patient replaced by another: refused (AE on MRG-1) as the gateway's `merge-loop`."""
    x, y = f"X{feed.run}", f"Y{feed.run}"
    c = feed.client()
    assert ack_code(c.send(adt("A40", ipp=y, merged_ipp=x, ins=None))) == "AA"
    before = len(feed.raw_records())
    back = adt("A40", ipp=x, merged_ipp=y, ins=None, control_id=f"LOOP{feed.run}")
    ack = c.send(back)
    assert (ack_code(ack), err_location(ack)) == ("AE", "MRG^1^1^1"), ack
    assert "^merge-loop^HL70357" in ack, ack
    assert len(feed.raw_records()) == before
    # The connection stays open.
    assert ack_code(c.send(adt("A08", ipp=y, nda=f"N{feed.run}", ins=None))) == "AA"

    # Through a chain: A into B, B into C; then C into A is a loop, C into a new D is not.
    a, b, cc, d = (f"{p}{feed.run}" for p in "ABCD")
    assert ack_code(c.send(adt("A40", ipp=b, merged_ipp=a, ins=None))) == "AA"
    assert ack_code(c.send(adt("A40", ipp=cc, merged_ipp=b, ins=None))) == "AA"
    before = len(feed.raw_records())
    ack = c.send(adt("A40", ipp=a, merged_ipp=cc, ins=None))
    assert (ack_code(ack), err_location(ack)) == ("AE", "MRG^1^1^1"), ack
    assert len(feed.raw_records()) == before
    assert ack_code(c.send(adt("A40", ipp=d, merged_ipp=cc, ins=None))) == "AA"
    c.close()

    # Counted and listed in feed health with its reason, and dead-lettered.
    refused = rows(
        feed.db,
        "SELECT http_status, reason, expression FROM ingest_rejections WHERE resource_id = :c",
        c=f"LOOP{feed.run}",
    )
    assert refused == [(422, "merge-loop", "MRG-1")]
    engine = make_engine(feed.db)
    try:
        table = hl7_messages(engine)
    finally:
        engine.dispose()
    row = table[(table["integrator"] == "gam-test") & (table["trigger"] == "A40")].iloc[0]
    assert row["AE"] >= 2 and "merge-loop" in row["reasons"]
    dead = _dead_letters(feed.broker, feed.topics.deadletter)
    assert sum(h.get("reason-code") == b"merge-loop" for h in dead) == 2


def test_a_patient_of_another_integrator_is_refused_until_granted(feed: Feed) -> None:
    ipp, nda, other_nda = f"P{feed.run}", f"N{feed.run}", f"M{feed.run}"
    c = feed.client()
    assert ack_code(c.send(adt("A01", ipp=ipp, nda=nda))) == "AA"
    before = len(feed.raw_records())
    # Another integrator's feed names the same patient: refused on PID-3, nothing published.
    intruder = adt("A01", ipp=ipp, nda=other_nda, facility="CH2")
    ack = c.send(intruder)
    assert ack_code(ack) == "AR", ack
    assert err_location(ack) == "PID^1^3^1", ack
    text = ack.encode("latin-1").decode("utf-8")
    assert f"le patient {ipp} appartient à un autre intégrateur" in text, text
    assert "^forbidden^HL70357" in ack and "|206^" in ack, ack
    # Nor may it merge that patient into one of its own (MRG-1).
    merge = adt("A40", ipp=f"Q{feed.run}", merged_ipp=ipp, facility="CH2")
    ack = c.send(merge)
    assert (ack_code(ack), err_location(ack)) == ("AR", "MRG^1^1^1"), ack
    assert len(feed.raw_records()) == before
    # Nor may it write, for a patient of its own, the stay of gam-test's visit number (PV1-19).
    ack = c.send(adt("A01", ipp=f"R{feed.run}", nda=nda, facility="CH2"))
    assert (ack_code(ack), err_location(ack)) == ("AR", "PV1^1^19^1"), ack
    assert len(feed.raw_records()) == before
    # A refused message claims nothing: its own new patient stays free.
    free = "SELECT count(*) FROM ingest_owners WHERE kind = 'patient' AND value = :v"
    assert count(feed.db, free, v=f"Q{feed.run}") == 0
    engine = make_engine(feed.db)
    try:
        refused = rows(
            feed.db,
            "SELECT http_status, reason FROM ingest_rejections WHERE source = 'gam-other'",
        )
        assert sorted(refused) == [(403, "forbidden")] * 3
        table = hl7_messages(engine)
        row = table[(table["integrator"] == "gam-other") & (table["trigger"] == "A01")].iloc[0]
        assert row["AR"] == 2 and "forbidden" in row["reasons"]
        # Once an admin grants it what gam-test owns, the same message goes through.
        grant(engine, "gam-other", "owner", "gam-test")
    finally:
        engine.dispose()
    assert ack_code(c.send(intruder)) == "AA"
    c.close()
    wait_until(lambda: _stay(feed.db, other_nda), timeout_s=90, what="the granted stay")
    assert _stay(feed.db, other_nda)[0] == ipp  # type: ignore[index]


def test_a_location_of_another_integrator_is_refused(feed: Feed) -> None:
    """The Locations PV1-3 names are published with the stay: another integrator's feed may
    not name (and so rewrite) a ward it did not create first. (gam-other's wards, since another
    test of this session lets gam-other write what gam-test owns.)"""
    c = feed.client()
    first = adt("A01", ipp=f"Q{feed.run}", nda=f"M{feed.run}", facility="CH2", ward="REA")
    assert ack_code(c.send(first)) == "AA"
    before = len(feed.raw_records())
    own = adt("A01", ipp=f"P{feed.run}", nda=f"N{feed.run}", ward="REA")
    intruder = own.replace(b"|REA^101^1^CHU21|", b"|REA^101^1^CH2|")
    assert intruder != own
    ack = c.send(intruder)
    assert (ack_code(ack), err_location(ack)) == ("AR", "PV1^1^3^1"), ack
    assert "le lieu Location/CH2" in ack.encode("latin-1").decode("utf-8"), ack
    assert len(feed.raw_records()) == before
    # Its own establishment's wards are its own.
    assert ack_code(c.send(own)) == "AA"
    c.close()


@pytest.mark.parametrize(
    ("message", "code", "where"),
    [
        (adt("A01", nda=""), "AE", "PV1^1^19^1"),
        (adt("A01", patient_class="X"), "AE", "PV1^1^2^1"),
        (adt("A01", ipp="", ins=None), "AE", "PID^1^3^1"),
        (adt("A01", ipp="  ", ins=None), "AE", "PID^1^3^1"),
        (adt("A01", ipp='""', ins=None), "AE", "PID^1^3^1"),
        (adt("A01", nda='""'), "AE", "PV1^1^19^1"),
        (adt("A01", at="2026-03-01"), "AE", "MSH^1^7^1"),
        (adt("A01", action="DELETE"), "AE", "ZBE^1^4^1"),
        (adt("A01", charset="ISO IR87"), "AE", "MSH^1^18^1"),
        (adt("A99"), "AR", "MSH^1^9^1^2"),
        (adt("A01", version="2.1"), "AR", "MSH^1^12^1"),
        (adt("A01", message_type="ORU"), "AR", "MSH^1^9^1"),
        (adt("A01", facility="INCONNU"), "AR", "MSH^1^4^1"),
        (b"PID|||1", "AE", "MSH^1"),
        (adt("A01").replace(b"MSH|^~\\&", b"MSH|^^~\\&", 1), "AE", "MSH^1^2^1"),
    ],
)
def test_invalid_messages_get_a_nack_and_publish_nothing(
    feed: Feed, message: bytes, code: str, where: str
) -> None:
    before = len(feed.raw_records())
    c = feed.client()
    ack = c.send(message.replace(b"IPP001", f"P{feed.run}".encode()))
    assert ack_code(ack) == code, ack
    assert err_location(ack) == where, ack
    # The connection stays open after a NACK.
    assert ack_code(c.send(adt("A08", ipp=f"P{feed.run}", nda=f"N{feed.run}"))) == "AA"
    c.close()
    # Only the A08's new Patient was published.
    assert len(feed.raw_records()) - before == 1


def test_a_refused_message_of_another_type_is_listed_under_its_own_type(feed: Feed) -> None:
    c = feed.client()
    message = adt("A01", message_type="ORU", control_id=f"ORU{feed.run}")
    ack = c.send(message.replace(b"ADT_A01", b"ORU_R01").replace(b"ORU^A01", b"ORU^R01"))
    c.close()
    assert ack_code(ack) == "AR", ack
    refused = rows(
        feed.db,
        "SELECT resource_type, reason FROM ingest_rejections WHERE resource_id = :c",
        c=f"ORU{feed.run}",
    )
    assert refused == [("ORU^R01", "unsupported-type")]


def test_framing_garbage_and_oversized_messages_do_not_stop_the_listener(feed: Feed) -> None:
    c = feed.client()
    c.send_raw(b"garbage before any block\x1c\r")
    huge = adt("A01", extra_segments="NTE|" + "x" * 30000 + "\r")
    ack = c.send(huge)
    assert ack_code(ack) == "AE" and "too-large" in ack, ack
    assert ack_code(c.send(adt("A08", ipp=f"P{feed.run}"))) == "AA"
    c.close()
    counts = rows(
        feed.db,
        "SELECT trigger, ack_code, reason, count FROM hl7_message_counts "
        "WHERE integrator = 'gam-test' AND reason = 'too-large'",
    )
    assert counts and counts[0][1] == "AE"
    # Feed health shows the refusal beside the sender and trigger.
    engine = make_engine(feed.db)
    try:
        table = hl7_messages(engine)
    finally:
        engine.dispose()
    row = table[(table["integrator"] == "gam-test") & (table["trigger"] == "A01")].iloc[0]
    assert row["AE"] >= 1 and "too-large" in row["reasons"]
    # The refused message is on the dead-letter topic with its reason.
    dead = _dead_letters(feed.broker, feed.topics.deadletter)
    assert any(
        h.get("reason-code") == b"too-large" and h.get("stage") == b"ingest-mllp" for h in dead
    )


@pytest.fixture
def small_listener(
    broker: str, pg_url: str, topic_prefix: str, tmp_path: Path
) -> Iterator[tuple[int, Path]]:
    """`parcours ingest mllp` alone, with room for 3 connections, making room by closing any
    idle one; its port and log."""
    topics = Topics.from_settings(Settings(topic_prefix=topic_prefix))
    ensure_topics(broker, topics.all(), 4)
    port = free_port()
    env = worker_env(
        broker,
        pg_url,
        topic_prefix,
        PARCOURS_MLLP_PORT=str(port),
        PARCOURS_MLLP_SENDERS=SENDERS,
        PARCOURS_MLLP_MAX_CONNECTIONS="3",
        PARCOURS_MLLP_EVICT_IDLE_S="0",
        PARCOURS_LOG_LEVEL="INFO",
    )
    log = tmp_path / "mllp.log"
    with parcours_process(["ingest", "mllp"], env, log) as listener:
        # Not `_port_open`: a probe would take one of the 3 connections for a while.
        wait_until(lambda: "MLLP listener on" in log.read_text(), timeout_s=60, what="the port")
        yield port, log
        assert listener.poll() is None, log.read_text()[-3000:]


def test_idle_connections_do_not_lock_a_real_sender_out(small_listener: tuple[int, Path]) -> None:
    """A sender that opens every connection the listener allows and sends nothing: the next
    real sender gets in, in the place of the connection idle longest."""
    port, log = small_listener
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(3)]
    try:
        run = uuid.uuid4().hex[:6]
        c = MllpClient("127.0.0.1", port)
        assert ack_code(c.send(adt("A01", ipp=f"P{run}", nda=f"N{run}"))) == "AA"
        c.close()
        # The first one opened was idle longest: closed by the listener.
        assert idle[0].recv(1) == b""
        evicted = f"127.0.0.1', {idle[0].getsockname()[1]})"
        wait_until(lambda: evicted in log.read_text(), timeout_s=30, what="the eviction logged")
        line = next(x for x in log.read_text().splitlines() if evicted in x)
        assert " WARNING ingest.mllp: " in line and "to make room" in line, line
    finally:
        for sock in idle:
            sock.close()


def test_a_connection_reading_a_message_is_never_closed_to_make_room(
    broker: str, topic_prefix: str, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'room.db'}"
    upgrade(db)
    settings = Settings(
        database_url=db,
        kafka_bootstrap_servers=broker,
        topic_prefix=topic_prefix,
        mllp_senders=json.loads(SENDERS),
        mllp_max_connections=2,
        mllp_evict_idle_s=0,
        mllp_parse_processes=0,
        mllp_locations=False,
    )
    ensure_topics(broker, Topics.from_settings(settings).all(), 2)
    run = uuid.uuid4().hex[:6]
    first = b"\x0b" + adt("A01", ipp=f"A{run}", nda=f"A{run}") + b"\x1c\r"
    second = b"\x0b" + adt("A01", ipp=f"C{run}", nda=f"C{run}") + b"\x1c\r"

    async def scenario() -> list[str]:
        engine = make_engine(db)
        publisher = Publisher(settings)
        listener = MllpListener(settings, AdtProcessor(engine, publisher, publish_locations=False))
        port = await listener.start("127.0.0.1", 0)

        async def until(probe: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + 30
            while not probe():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                await asyncio.sleep(0.01)

        def busy() -> int:
            return sum(c.busy for c in listener.open_connections)

        try:
            # A: the oldest connection, in the middle of a message; B: idle.
            a_r, a_w = await asyncio.open_connection("127.0.0.1", port)
            a_w.write(first[:50])
            await until(lambda: busy() == 1, "A reading its message")
            b_r, _b_w = await asyncio.open_connection("127.0.0.1", port)
            await until(lambda: len(listener.open_connections) == 2, "B open")
            # C takes B's place, not A's.
            c_r, c_w = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(b_r.read(), 20) == b""
            # With A and C both in the middle of a message, D finds no room.
            c_w.write(second[:50])
            await until(lambda: busy() == 2, "C reading its message")
            d_r, _d_w = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(d_r.read(), 20) == b""
            # A and C finish their messages on their connections.
            a_w.write(first[50:])
            c_w.write(second[50:])
            acks = [
                (await asyncio.wait_for(r.readuntil(b"\x1c\r"), 30)).decode("latin-1")
                for r in (a_r, c_r)
            ]
            a_w.close()
            c_w.close()
            return acks
        finally:
            await listener.stop()
            await asyncio.to_thread(publisher.close)
            engine.dispose()

    assert [ack_code(a) for a in asyncio.run(scenario())] == ["AA", "AA"]


GARBAGE = st.lists(
    st.one_of(
        st.binary(max_size=200),
        st.sampled_from(
            [
                b"\x0b",
                b"\x1c",
                b"\r",
                b"\x1c\r",
                b"\n",
                b"MSH|^~\\&|",
                b"|CHU21|",
                b"ADT^A01^",
                b"|2.5|",
            ]
        ),
    ),
    max_size=25,
).map(b"".join)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(garbage=GARBAGE)
def test_garbage_on_the_socket_never_kills_the_listener(feed: Feed, garbage: bytes) -> None:
    c = feed.client()
    try:
        c.send_raw(garbage)
        control = f"H{uuid.uuid4().hex[:12]}"
        c.send_raw(b"\x0b" + adt("A08", ipp=f"P{feed.run}", control_id=control) + b"\x1c\r")
        # Blocks the garbage completed are answered first; ours is answered in turn.
        for _ in range(50):
            ack = c.read_ack()
            if f"|{control}|" in ack:
                assert ack_code(ack) == "AA", ack
                break
        else:
            raise AssertionError("no ACK for the valid message after the garbage")
    finally:
        c.close()


SMALL = Path(__file__).resolve().parents[1] / "fixtures" / "simulate" / "small_territory.yaml"


def _raw_values(broker: str, topic: str, source: bytes) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=broker, consumer_timeout_ms=3000)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        return [r.value for r in consumer if dict(r.headers).get("source") == source]
    finally:
        consumer.close()


def test_simulator_sends_one_hospital_as_hl7_and_the_rest_as_fhir(
    broker: str, pg_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics.from_settings(Settings(topic_prefix=topic_prefix))
    ensure_topics(broker, topics.all(), 4)
    port = free_port()
    prefix = f"s{uuid.uuid4().hex[:6]}-"
    env = worker_env(
        broker,
        pg_url,
        topic_prefix,
        PARCOURS_MLLP_PORT=str(port),
        PARCOURS_MLLP_SENDERS=json.dumps({"sim-ch-test": ["ch-test"]}),
        # The directory sends the hospital's Locations as FHIR, with the same ids.
        PARCOURS_MLLP_LOCATIONS="false",
    )
    with (
        parcours_process(["ingest", "mllp"], env, tmp_path / "mllp.log"),
        parcours_process(["streams", "worker"], env, tmp_path / "worker.log"),
    ):
        wait_until(lambda: _port_open(port), timeout_s=60, what="the MLLP port")
        done = subprocess.run(
            [
                *(sys.executable, "-m", "parcours", "simulate", "--kafka", "--hl7", "ch-test"),
                *("--seed", "3", "--days", "1", "--territory", str(SMALL)),
                *("--start", "2026-01-05", "--warmup-days", "7", "--no-progress"),
                *("--id-prefix", prefix),
            ],
            env=env,
            capture_output=True,
            timeout=400,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        summary = json.loads(done.stdout)["sink"]
        assert summary["hl7_messages"] > 0
        assert summary.get("hl7_ack_AA") == summary["hl7_messages"], summary
        # The simulator itself sent the other establishments' stays as FHIR, none of ch-test's.
        providers = Counter(
            (json.loads(v).get("serviceProvider") or {}).get("reference")
            for v in _raw_values(broker, topics.raw, b"parcours-simulate")
            if b'"resourceType":"Encounter"' in v and b'"IMP"' in v
        )
        assert providers["Organization/clinique-test"] > 0
        assert providers["Organization/ch-test"] == 0

        def stays_of(hospital: str) -> int:
            return count(
                pg_url,
                "SELECT count(*) FROM stays WHERE hospital_id = :h AND patient_id LIKE :p",
                h=hospital,
                p=f"{prefix}%",
            )

        wait_until(lambda: stays_of("ch-test") > 0, timeout_s=120, what="ch-test stays from HL7")
        wait_until(lambda: stays_of("clinique-test") > 0, timeout_s=120, what="FHIR stays")
        # The HL7 stays sit in the directory's wards (same Location ids as FHIR).
        unknown = count(
            pg_url,
            "SELECT count(*) FROM stay_locations sl JOIN stays s USING (stay_id) "
            "WHERE s.hospital_id = 'ch-test' AND s.patient_id LIKE :p "
            "AND sl.ward_id NOT LIKE 'ch-test-%'",
            p=f"{prefix}%",
        )
        assert unknown == 0
