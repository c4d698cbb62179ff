"""Table recovery reads the changelog to its true end, whatever the broker says the end is."""

from __future__ import annotations

import asyncio

import pytest
from faust.types import TP
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from parcours.topics import ensure_topics
from streams.runtime.faust_compat import log_ends

pytestmark = pytest.mark.integration


def test_log_ends_counts_every_record_of_the_last_batch(broker: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}changelog-like"
    ensure_topics(broker, [topic], 2)
    producer = KafkaProducer(bootstrap_servers=broker, linger_ms=50)
    for batch in (10, 3):  # two record batches on partition 0, the last one of three records
        for i in range(batch):
            producer.send(topic, b"state %d" % i, partition=0)
        producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker)
    reported = consumer.end_offsets([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    consumer.close()
    tps = [TP(topic, 0), TP(topic, 1)]

    ends = asyncio.run(log_ends(broker, tps, {tp: reported[TopicPartition(*tp)] for tp in tps}))

    assert ends[TP(topic, 0)] == 13
    assert ends.get(TP(topic, 1), 0) == 0  # empty: nothing to read
    # Given the true end, it reads one record and agrees.
    assert asyncio.run(log_ends(broker, tps[:1], {tps[0]: 13})) == {tps[0]: 13}
