"""Publishing to Kafka with kafka-python: acks=all, retries, and an answer only after the acks.

The producer is created lazily (its constructor contacts the broker), so the gateway starts and
answers 503 while the broker is down. After any failed delivery the producer is thrown away and
rebuilt on the next request: an idempotent producer whose batch expired can be left in a state
where later sends fail, and a fresh one is cheap.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import (
    InvalidRecordError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from kafka.partitioner.default import DefaultPartitioner

from ingest.outcome import BrokerUnavailable
from parcours.settings import Settings
from parcours.topics import Topics, ensure_topics, partition_of_key

log = logging.getLogger(__name__)

# After a failed connection, requests get 503 at once for this long instead of each waiting.
RECONNECT_BACKOFF_S = 1.0
# Dead-letter payloads are cut to stay under Kafka's default 1 MiB message size.
MAX_DEADLETTER_BYTES = 900_000
# Room for a record's key, headers and framing above the largest resource accepted.
RECORD_OVERHEAD_BYTES = 64 * 1024
# Failures of one record, not of the connection: the producer stays as it is for everyone.
RECORD_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError)


class CachedKeyPartitioner(DefaultPartitioner):  # type: ignore[misc]
    """Kafka's default murmur2 partitioning (the same partition as any Kafka client for a key),
    with key hashes cached: the records of one Bundle mostly share a patient key, and the
    pure-Python murmur2 is a visible part of the gateway's CPU."""

    def partition(
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: bytes | None,
        cluster: Any,
    ) -> int:
        """The partition of `serialized_key` (random among available ones without a key)."""
        if serialized_key is None or topic not in cluster.topics():
            return int(
                super().partition(topic, key, serialized_key, value, serialized_value, cluster)
            )
        partitions = sorted(cluster.partitions_for_topic(topic))
        return int(partitions[partition_of_key(serialized_key, len(partitions))])


def find_config(answer: Any, name: str) -> str | None:
    """The value of config `name` anywhere in a describe_configs answer (its shape differs
    between kafka-python versions: nested dicts, or responses with resource tuples)."""
    stack = [answer]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if name in node and isinstance(node[name], str | int):
                return str(node[name])
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            if len(node) >= 2 and node[0] == name and isinstance(node[1], str | int):
                return str(node[1])
            stack.extend(node)
        elif hasattr(node, "resources"):
            stack.append(node.resources)
    return None


@dataclass(frozen=True)
class Message:
    """One record for the raw topic."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True)
class Ack:
    """Where the broker stored a record."""

    partition: int
    offset: int


def collect_acks(futures: list[Any], deadline: float) -> list[Ack | Exception]:
    """Each record's Ack, or its error (the send's own, or its future's), waiting until
    `deadline` (`time.monotonic()`) at the most."""
    results: list[Ack | Exception] = []
    for fut in futures:
        if isinstance(fut, Exception):
            results.append(fut)
            continue
        try:
            meta = fut.get(timeout=max(0.01, deadline - time.monotonic()))
            results.append(Ack(partition=meta.partition, offset=meta.offset))
        except (KafkaError, OSError, ValueError) as exc:
            results.append(exc)
    return results


class Publisher:
    """A thread-safe, lazily connected producer for the raw and dead-letter topics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.timeout_s = settings.ingest_publish_timeout_s
        self._producer: KafkaProducer | None = None
        self._admin: KafkaAdminClient | None = None
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._last_failure = 0.0
        self._last_ack = 0.0
        # The raw topic's `max.message.bytes`, when the broker tells it.
        self._topic_max_bytes: int | None = None
        # Bumped whenever the connection to the broker is lost or the broker answers with
        # another cluster id: what was checked about the broker before may no longer hold.
        self.epoch = 0
        self._cluster_id: str | None = None

    @property
    def connected(self) -> bool:
        """True while a producer exists and the broker acknowledged recently."""
        return self._producer is not None and time.monotonic() - self._last_ack < 30

    def _connect(self) -> KafkaProducer:
        timeout_ms = int(self.timeout_s * 1000)
        producer = KafkaProducer(
            bootstrap_servers=self.settings.bootstrap,
            client_id="parcours-ingest",
            acks="all",
            retries=2**31 - 1,
            enable_idempotence=True,
            # Requests publish up to a few hundred records at once: one big batch per partition,
            # and fewer wake-ups of the sender thread while the request thread appends.
            linger_ms=5,
            batch_size=1024 * 1024,
            delivery_timeout_ms=timeout_ms,
            request_timeout_ms=max(500, timeout_ms - 100),
            max_block_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
            # Above the largest resource the gateway lets through (entries.py refuses bigger
            # ones with 413), so the producer never refuses a record for its size.
            max_request_size=self.settings.ingest_max_resource_bytes + RECORD_OVERHEAD_BYTES,
            partitioner=CachedKeyPartitioner(),
        )
        try:
            ensure_topics(
                self.settings.bootstrap,
                [self.topics.raw, self.topics.deadletter, self.topics.directory],
                self.settings.topic_partitions,
            )
        except Exception:
            producer.close(timeout=0)
            raise
        self._topic_max_bytes = self._read_topic_max_bytes()
        return producer

    def _read_topic_max_bytes(self) -> int | None:
        """The raw topic's `max.message.bytes`, or None if the broker does not say."""
        from kafka.admin import ConfigResource, ConfigResourceType

        admin = None
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.settings.bootstrap,
                client_id="parcours-ingest-config",
                request_timeout_ms=int(self.timeout_s * 1000),
            )
            found = admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, self.topics.raw)]
            )
            value = find_config(found, "max.message.bytes")
            return int(value) if value is not None else None
        except (KafkaError, OSError, ValueError, TypeError, AttributeError) as exc:
            log.info("the broker did not give the raw topic's max.message.bytes: %s", exc)
            return None
        finally:
            if admin is not None:
                admin.close()

    def max_resource_bytes(self) -> int:
        """The largest resource to accept: the setting, lowered to what the raw topic takes
        when the broker says less (so such a resource gets 413, not a permanent 503)."""
        limit = self.settings.ingest_max_resource_bytes
        if self._topic_max_bytes is not None:
            limit = min(limit, self._topic_max_bytes - RECORD_OVERHEAD_BYTES)
        return max(1024, limit)

    def producer(self) -> KafkaProducer:
        """The producer, connecting first if needed; BrokerUnavailable if that fails."""
        with self._lock:
            if self._producer is not None:
                return self._producer
            if time.monotonic() - self._last_failure < RECONNECT_BACKOFF_S:
                raise BrokerUnavailable("Kafka is unreachable (retrying shortly)")
            try:
                self._producer = self._connect()
            except (KafkaError, OSError, ValueError) as exc:
                self._last_failure = time.monotonic()
                log.warning("Kafka at %s is unreachable: %s", self.settings.bootstrap, exc)
                raise BrokerUnavailable(f"Kafka is unreachable: {exc}") from exc
            log.info("connected to Kafka at %s", self.settings.bootstrap)
            return self._producer

    def reset(self) -> None:
        """Drop the clients; the next request connects afresh."""
        self._discard()

    def _discard(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
            admin, self._admin = self._admin, None
            self._last_failure = time.monotonic()
            self.epoch += 1
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception:  # closing a broken client must not hide the real error
                log.debug("closing the producer failed", exc_info=True)
        if admin is not None:
            try:
                admin.close()
            except Exception:
                log.debug("closing the admin client failed", exc_info=True)

    def check(self) -> None:
        """Raise BrokerUnavailable unless the broker answers a metadata request now.

        Called before a request publishes anything or answers "duplicate" (about a millisecond
        on a live broker), so that a request meets a dead or frozen broker before its first
        record is sent: a record sent to a frozen broker can still be written when it wakes,
        after the client got its 503, and would then be published twice once the client
        retries. A new cluster id bumps `epoch`, as a lost connection does.
        """
        self.producer()
        if not self._probe_lock.acquire(timeout=self.timeout_s):
            raise BrokerUnavailable("Kafka did not answer (probe timed out)")
        try:
            if self._admin is None:
                self._admin = KafkaAdminClient(
                    bootstrap_servers=self.settings.bootstrap,
                    client_id="parcours-ingest-probe",
                    request_timeout_ms=int(self.timeout_s * 1000),
                    bootstrap_timeout_ms=int(self.timeout_s * 1000),
                )
            cluster = self._admin.describe_cluster()
        except (KafkaError, OSError, ValueError) as exc:
            self._probe_lock.release()
            self._discard()
            raise BrokerUnavailable(f"Kafka did not answer: {exc}") from exc
        cluster_id = str(cluster.get("cluster_id") or "") if isinstance(cluster, dict) else ""
        if cluster_id != self._cluster_id:
            if self._cluster_id is not None:
                log.warning("the broker's cluster id changed: %s", cluster_id)
                with self._lock:
                    self.epoch += 1
            self._cluster_id = cluster_id
        self._probe_lock.release()

    def publish(self, messages: Sequence[Message]) -> list[Ack | Exception]:
        """Send every message to its topic (`Topics.for_key`: reference data to the directory,
        the rest to the raw topic) and wait for each ack (acks=all).

        Returns, per message, its Ack or the exception that stopped it. Waits at most the
        configured publish timeout in total.
        """
        producer = self.producer()
        deadline = time.monotonic() + self.timeout_s + 1.0
        futures: list[Any] = []
        for m in messages:
            try:
                futures.append(
                    producer.send(
                        self.topics.for_key(m.key), value=m.value, key=m.key, headers=m.headers
                    )
                )
            except (KafkaError, OSError, ValueError) as exc:
                futures.append(exc)
        # Each future below reports its own failure.
        with contextlib.suppress(KafkaError):
            producer.flush(timeout=max(0.0, deadline - time.monotonic()))
        results = collect_acks(futures, deadline)
        if any(isinstance(r, Exception) and not isinstance(r, RECORD_ERRORS) for r in results):
            self._discard()
        elif results:
            self._last_ack = time.monotonic()
        return results

    def dead_letter(self, key: bytes | None, payload: bytes, headers: dict[str, str]) -> None:
        """Send a refused payload to the dead-letter topic with its reason; never raises.

        Dead letters are best effort: the rejection is also stored in SQL, and a refused request
        must get its 4xx even when Kafka is down.
        """
        producer = self._producer
        if producer is None:
            log.warning("dead letter dropped (Kafka unreachable): %s", headers.get("reason"))
            return
        hdrs = [(k, v.encode()) for k, v in headers.items()]
        if len(payload) > MAX_DEADLETTER_BYTES:
            payload = payload[:MAX_DEADLETTER_BYTES]
            hdrs.append(("truncated", b"true"))
        try:
            producer.send(self.topics.deadletter, value=payload, key=key, headers=hdrs)
        except (KafkaError, OSError, ValueError) as exc:
            log.warning("dead letter dropped: %s", exc)

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait for pending dead letters (used at shutdown and by tests)."""
        producer = self._producer
        if producer is not None:
            try:
                producer.flush(timeout=timeout_s)
            except KafkaError as exc:
                log.warning("flush failed: %s", exc)

    def close(self) -> None:
        """Flush and close the clients."""
        self.flush()
        with self._lock:
            producer, self._producer = self._producer, None
            admin, self._admin = self._admin, None
        if producer is not None:
            producer.close(timeout=5)
        if admin is not None:
            admin.close()
