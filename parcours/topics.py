"""Kafka topic names, and creating them.

Every message on these topics is keyed by the patient reference (`Patient/<id>` is not
used: the key is the bare patient id, UTF-8).
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from functools import lru_cache

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.partitioner.default import murmur2

from parcours.settings import Settings


@dataclass(frozen=True)
class Topics:
    """The topic names of one deployment (a prefix isolates tests and tenants)."""

    raw: str
    deadletter: str
    events: str
    alerts: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Topics:
        """Topic names with the configured prefix."""
        p = settings.topic_prefix
        return cls(
            raw=f"{p}fhir.raw",
            deadletter=f"{p}fhir.deadletter",
            events=f"{p}pathway.events",
            alerts=f"{p}pathway.alerts",
        )

    def all(self) -> list[str]:
        """Every topic name, in a stable order."""
        return [self.raw, self.deadletter, self.events, self.alerts]


def ensure_topics(
    bootstrap: str, names: list[str], partitions: int, replication_factor: int = 1
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="parcours-admin")
    try:
        existing = set(admin.list_topics())
        missing = [n for n in names if n not in existing]
        if not missing:
            return
        # Another process may create a topic between the listing and the creation: fine.
        with suppress(TopicAlreadyExistsError):
            admin.create_topics(
                [
                    NewTopic(
                        name=n, num_partitions=partitions, replication_factor=replication_factor
                    )
                    for n in missing
                ]
            )
    finally:
        admin.close()


@lru_cache(maxsize=65536)
def _key_hash(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF


def partition_of_key(key: bytes, partitions: int) -> int:
    """The partition any Kafka client's default partitioner gives `key` among `partitions`.

    The gateway publishes by it and the worker places each patient's state by it: a patient's
    events, state and changelog record share one partition. Key hashes are cached, since the
    records of one Bundle mostly share a patient key and murmur2 is pure Python.
    """
    return _key_hash(key) % partitions
