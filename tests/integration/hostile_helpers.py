"""Helpers for the hostile-input tests: count what reached the raw topic, judge an answer."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

MARKER_KEY = b"__corpus-marker__"


class TopicCounter:
    """What some topics received since the last `sync()`, exactly (the raw topic and the
    directory topic, where the gateway sends hospitals, places and practitioners).

    `sync()` writes a marker to every partition (acks=all) and reads each partition up to its
    marker. Whatever the gateway published before answering was acknowledged before the marker
    was sent, so it sits before the marker: no end-offset guess and no waiting for quiet.
    """

    def __init__(self, bootstrap: str, *topics: str) -> None:
        self.topics = topics
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.partitions = []
        for topic in topics:
            parts = self.consumer.partitions_for_topic(topic) or set()
            assert parts, f"{topic} has no partitions"
            self.partitions += [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)
        self.sync()

    def sync(self, timeout_ms: int = 30_000) -> list[ConsumerRecord]:
        """The records published since the previous sync (markers left out)."""
        token = uuid.uuid4().hex.encode()
        for tp in self.partitions:
            self.producer.send(tp.topic, key=MARKER_KEY, value=token, partition=tp.partition).get(
                timeout=30
            )
        pending = set(self.partitions)
        records: list[ConsumerRecord] = []
        polls = 0
        while pending:
            polls += 1
            assert polls * 200 < timeout_ms, f"markers not read back from {self.topics}"
            for tp, batch in self.consumer.poll(timeout_ms=200).items():
                for rec in batch:
                    if rec.key == MARKER_KEY:
                        if rec.value == token:
                            pending.discard(tp)
                    elif tp in pending:
                        records.append(rec)
        return records

    def close(self) -> None:
        """Close both clients."""
        self.producer.close(timeout=5)
        self.consumer.close()


@dataclass
class Case:
    """One hostile (or valid) request and the statuses it may get."""

    name: str
    path: str
    body: bytes
    expect: frozenset[int]
    method: str = "POST"
    content_type: str | None = "application/fhir+json"
    auth: str | None = "ok"
    # Per-entry statuses of a batch or $import answer, when the case pins them.
    entries: tuple[int, ...] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def body_of(value: Any) -> bytes:
    """JSON bytes of `value` (ensure_ascii keeps control characters escaped)."""
    return json.dumps(value).encode()


def accepted_in(resp: httpx.Response) -> int:
    """How many records a 2xx answer says were published (201s)."""
    if resp.status_code == 201:
        return 1
    if resp.status_code != 200:
        return 0
    body = resp.json()
    if body.get("resourceType") == "Bundle" and body.get("type") in (
        "batch-response",
        "transaction-response",
    ):
        return sum(1 for e in body["entry"] if e["response"]["status"].startswith("201"))
    return 0


def entry_statuses(resp: httpx.Response) -> tuple[int, ...]:
    """Per-entry HTTP statuses of a batch- or transaction-response."""
    return tuple(int(e["response"]["status"].split()[0]) for e in resp.json()["entry"])


def assert_outcome(resp: httpx.Response) -> None:
    """A 4xx whose body is an OperationOutcome with at least one issue, each with a code and a
    diagnostics text or an element name, and no more than the capped count."""
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:500])
    assert resp.headers["content-type"].startswith("application/fhir+json"), resp.headers
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome", body
    issues = body["issue"]
    assert 1 <= len(issues) <= 101, len(issues)
    for issue in issues:
        assert issue["code"] and (issue.get("diagnostics") or issue.get("expression")), issue


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")
