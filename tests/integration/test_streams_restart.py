"""A worker stopped with SIGTERM, records sent to the raw topic meanwhile, a new worker started:
the new records reach SQL as soon as the new worker has joined the group, restart after restart,
and each stopped worker has left the group, the first one too (`faust_compat.leave_group`).

A fetch that waited while every partition was paused at the end of table recovery was handed
the raw records read since the seek to the committed offsets, and Faust dropped them (see
`streams.runtime.faust_compat.FetchThread`): in about one restart in ten they waited for the next
restart, or were committed over once a later record came. The restart cycles show the worker;
`test_a_fetch_while_every_partition_is_paused_takes_nothing` shows the fetch itself, on the real
consumer objects and broker, every time.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaProducer

from parcours.settings import Settings
from parcours.topics import Topics, ensure_topics
from streams.runtime.bootstrap import create_app
from streams.runtime.faust_compat import BatchConsumer, FetchThread
from tests.integration.streams_helpers import count, worker_env
from tests.support import parcours_process, wait_until

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"
PARTITIONS = 4
PER_ROUND = 40
RESTARTS = 6
# A restart takes about 10 s on Tansu (its JoinGroup answers after 5 s); records dropped by a
# fetch waited for the next restart, or for ever.
WITHIN_S = 60


def send_encounters(broker: str, topic: str, tag: str) -> None:
    """`PER_ROUND` ED encounters of as many patients, ids starting with `tag`, acks=all."""
    template = json.loads((FIXTURES / "encounter_emer.json").read_text())
    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    try:
        for i in range(PER_ROUND):
            patient = f"{tag}-pat-{i}"
            encounter = {**template, "id": f"{tag}-enc-{i}"}
            encounter["subject"] = {"reference": f"Patient/{patient}"}
            producer.send(topic, key=patient.encode(), value=json.dumps(encounter).encode())
        producer.flush()
    finally:
        producer.close()


def encounters(db: str, tag: str) -> int:
    return count(db, "SELECT count(*) FROM encounters WHERE encounter_id LIKE :t", t=f"{tag}-enc-%")


def test_records_sent_while_the_worker_was_stopped_are_written_after_each_restart(
    broker: str, pg_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics.from_settings(Settings(topic_prefix=topic_prefix))
    ensure_topics(broker, topics.all(), PARTITIONS)
    env = worker_env(
        broker,
        pg_url,
        topic_prefix,
        PARCOURS_TOPIC_PARTITIONS=str(PARTITIONS),
        PARCOURS_LOG_LEVEL="INFO",
    )
    for round_ in range(RESTARTS + 1):
        tag = f"{topic_prefix}r{round_}"
        # The first round is sent to a running worker, the others while no worker runs.
        if round_:
            send_encounters(broker, topics.raw, tag)
        log = tmp_path / f"worker-{round_}.log"
        with parcours_process(["streams", "worker"], env, log) as proc:
            if not round_:
                send_encounters(broker, topics.raw, tag)

            def written(tag: str = tag, log: Path = log) -> bool:
                assert proc.poll() is None, log.read_text()[-3000:]
                return encounters(pg_url, tag) == PER_ROUND

            wait_until(
                written,
                timeout_s=WITHIN_S,
                what=f"round {round_}'s records in SQL (worker log {log})",
            )
        # The stopped worker left the group, from its first generation on (Tansu's is 0).
        assert "left consumer group" in log.read_text(), log.read_text()[-3000:]
        # Every earlier round is written once, none lost or doubled.
        for earlier in range(round_ + 1):
            assert encounters(pg_url, f"{topic_prefix}r{earlier}") == PER_ROUND


def test_a_fetch_while_every_partition_is_paused_takes_nothing(
    broker: str, topic_prefix: str, tmp_path: Path
) -> None:
    topic = f"{topic_prefix}paused"
    ensure_topics(broker, [topic], 2)
    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    for i in range(10):
        producer.send(topic, b"record %d" % i, partition=i % 2)
    producer.flush()
    producer.close()
    settings = Settings(
        kafka_bootstrap_servers=broker,
        database_url=f"sqlite:///{tmp_path / 'p.db'}",
        data_dir=tmp_path,
        worker_web_port=0,
    )
    app = create_app(settings)
    assert isinstance(app.consumer, BatchConsumer)

    async def fetch(active: set[object]) -> dict[object, list[object]]:
        thread = app.consumer._new_consumer_thread()
        assert isinstance(thread, FetchThread)
        consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(2)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            # Records are buffered by aiokafka's background fetch whatever Faust has paused.
            await consumer.getmany(*tps[:1], timeout_ms=2000)
            consumer.seek(tps[0], 0)
            return dict(await thread._fetch_records(consumer, active, timeout=2.0))
        finally:
            await consumer.stop()

    # Faust's own set, every partition paused: nothing, not the buffered records of all.
    assert asyncio.run(fetch(set())) == {}
    assert set(asyncio.run(fetch({TopicPartition(topic, 0)}))) == {TopicPartition(topic, 0)}
