"""Helpers for the ingest integration tests: start a real gateway, read a topic from the start."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from parcours.broker import free_port
from tests.support import parcours_env, parcours_process, wait_until

FHIR = "application/fhir+json"


@dataclass
class Gateway:
    """A running `parcours ingest serve` process."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self, token: str | None) -> httpx.Client:
        """An HTTP client for this gateway, with `token` as bearer if given."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def log_tail(self) -> str:
        """The end of the gateway's log, for assertion messages."""
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def gateway_env(bootstrap: str, db_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """Environment of a gateway process."""
    return parcours_env(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        DATABASE_URL=db_url,
        PARCOURS_TOPIC_PREFIX=prefix,
        **extra,
    )


@contextmanager
def run_gateway(
    env: dict[str, str], log_path: Path, port: int | None = None, healthy: bool = True
) -> Iterator[Gateway]:
    """Start a gateway and wait until /healthz answers (200 if `healthy`, any status else)."""
    port = port or free_port()
    with parcours_process(["ingest", "serve", "--port", str(port)], env, log_path) as proc:
        gw = Gateway(f"http://127.0.0.1:{port}", proc, log_path)

        def up() -> bool:
            assert proc.poll() is None, gw.log_tail()
            try:
                status = httpx.get(f"{gw.url}/healthz", timeout=15).status_code
            except httpx.HTTPError:
                return False
            return status == 200 or not healthy

        wait_until(up, timeout_s=60, what="the gateway's /healthz")
        yield gw


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[ConsumerRecord]:
    """Every record of `topic` (assign + seek: no consumer group).

    The reported end offsets are a floor, not the end: Tansu's is the base offset of a
    partition's last record batch plus one (`streams.runtime.faust_compat.log_ends`). So the read
    goes on past them until a fetch comes back empty.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while True:
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            fetched = consumer.poll(timeout_ms=500)
            for batch in fetched.values():
                records.extend(batch)
            if not fetched and all(consumer.position(tp) >= end[tp] for tp in partitions):
                return records
    finally:
        consumer.close()


def unique(prefix: str) -> str:
    """A fresh FHIR id."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def encounter(eid: str, patient: str, **over: object) -> dict[str, object]:
    """A small valid inpatient Encounter."""
    res: dict[str, object] = {
        "resourceType": "Encounter",
        "id": eid,
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": f"Patient/{patient}"},
        "period": {"start": "2026-01-12T07:15:00+00:00"},
    }
    res.update(over)
    return res


def transaction(entries: list[dict[str, object]], btype: str = "transaction") -> dict[str, object]:
    """A Bundle of `btype` that PUTs each resource at its Type/id."""
    return {
        "resourceType": "Bundle",
        "type": btype,
        "entry": [
            {
                "fullUrl": f"urn:uuid:{r['id']}",
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in entries
        ],
    }
