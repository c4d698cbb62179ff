"""`parcours simulate --kafka`: a backfill lands on the real broker's raw topic, keyed by patient,
in the same order as the NDJSON backfill of the same seed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from parcours.settings import Settings
from parcours.topics import Topics, is_directory_key
from simulate.fhir import message_key
from tests.support import parcours_env

pytestmark = pytest.mark.integration
SMALL = Path(__file__).resolve().parents[1] / "fixtures" / "simulate" / "small_territory.yaml"
ARGS = [
    "simulate",
    "--seed",
    "3",
    "--days",
    "1",
    "--territory",
    str(SMALL),
    "--start",
    "2026-01-05",
    "--warmup-days",
    "7",
    "--no-progress",
]


def simulate(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "parcours", *ARGS, *args],
        env=env,
        capture_output=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def read_all(broker: str, topic: str, partitions: int, expected: int) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=broker, consumer_timeout_ms=5000)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    messages: list[Any] = []
    for _ in range(20):
        batch = consumer.poll(timeout_ms=2000, max_records=5000)
        for records in batch.values():
            messages.extend(records)
        if len(messages) >= expected and not batch:
            break
    consumer.close()
    return messages


def test_kafka_backfill_is_keyed_by_patient_and_matches_the_ndjson_backfill(
    broker: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = parcours_env(
        KAFKA_BOOTSTRAP_SERVERS=broker,
        PARCOURS_TOPIC_PREFIX=topic_prefix,
        PARCOURS_TOPIC_PARTITIONS="3",
    )
    summary = simulate(["--kafka", "--truth", str(tmp_path / "truth")], env)
    produced = summary["sink"]["produced"]
    withheld = summary["sink"].get("invalid_withheld", 0)
    assert produced > 1000
    assert produced + withheld == summary["resources"]

    topics = Topics.from_settings(Settings(topic_prefix=topic_prefix))
    # Reference data on the directory topic (one partition), the rest on the raw topic.
    directory = read_all(broker, topics.directory, 1, 1)
    messages = directory + read_all(broker, topics.raw, 3, produced - len(directory))
    assert len(messages) == produced
    assert directory
    assert all(is_directory_key(m.key) == (m.topic == topics.directory) for m in messages)

    per_key: dict[bytes, list[dict[str, Any]]] = defaultdict(list)
    partition_of: dict[bytes, set[int]] = defaultdict(set)
    for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
        resource = json.loads(m.value)
        assert m.key.decode() == message_key(resource)
        assert not resource["id"].endswith("-err")
        assert dict(m.headers)["source"] == b"parcours-simulate"
        per_key[m.key].append(resource)
        partition_of[m.key].add(m.partition)
    assert all(len(p) == 1 for p in partition_of.values())
    assert {k for k in per_key if k.startswith(b"Location/")}
    assert sum(1 for k in per_key if b"/" not in k) > 200  # patients

    # The same seed, written to NDJSON: the same resources, in the same order per key.
    out = tmp_path / "ndjson"
    simulate(["--out", str(out)], env)
    expected: dict[bytes, list[dict[str, Any]]] = defaultdict(list)
    for line in (out / "fhir.ndjson").read_text(encoding="utf-8").splitlines():
        resource = json.loads(line)
        if not resource["id"].endswith("-err"):
            expected[message_key(resource).encode()].append(resource)
    assert per_key == expected
    assert (tmp_path / "truth" / "occupancy_hourly.csv").read_text() == (
        out / "truth" / "occupancy_hourly.csv"
    ).read_text()
