"""Kafka topic names, and creating them.

Patient resources go to the raw topic, keyed by the bare patient id (UTF-8), so that a patient's
messages share a partition. Reference data (Organization, Location, Practitioner,
HealthcareService) goes to the directory topic, keyed `Type/id`: one partition, compacted (the
latest version of each resource is kept), read whole by every stream worker before it folds
patient events, so that no stay waits on the partition order for the ward it names.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from functools import lru_cache

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.partitioner.default import murmur2

from parcours.settings import Settings

# Resource types that describe the territory rather than a patient.
DIRECTORY_TYPES = frozenset({"Organization", "Location", "Practitioner", "HealthcareService"})
DIRECTORY_SUFFIX = "fhir.directory"


def is_directory_key(key: bytes | str | None) -> bool:
    """Whether a message keyed `key` (`Type/id` for resources without a patient) is reference
    data for the directory topic."""
    if key is None:
        return False
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    kind, slash, _ = text.partition("/")
    return bool(slash) and kind in DIRECTORY_TYPES


@dataclass(frozen=True)
class Topics:
    """The topic names of one deployment (a prefix isolates tests and tenants)."""

    raw: str
    deadletter: str
    events: str
    alerts: str
    directory: str = DIRECTORY_SUFFIX

    @classmethod
    def from_settings(cls, settings: Settings) -> Topics:
        """Topic names with the configured prefix."""
        p = settings.topic_prefix
        return cls(
            raw=f"{p}fhir.raw",
            deadletter=f"{p}fhir.deadletter",
            events=f"{p}pathway.events",
            alerts=f"{p}pathway.alerts",
            directory=f"{p}{DIRECTORY_SUFFIX}",
        )

    def all(self) -> list[str]:
        """Every topic name, in a stable order."""
        return [self.raw, self.deadletter, self.events, self.alerts, self.directory]

    def for_key(self, key: bytes | str | None) -> str:
        """The topic of a resource message keyed `key`: the directory for reference data,
        else the raw topic."""
        return self.directory if is_directory_key(key) else self.raw


def ensure_topics(
    bootstrap: str, names: list[str], partitions: int, replication_factor: int = 1
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are.

    The directory topic gets one partition and log compaction whatever `partitions` says."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="parcours-admin")
    try:
        existing = set(admin.list_topics())
        missing = [n for n in names if n not in existing]
        if not missing:
            return
        new = [
            NewTopic(
                name=n,
                num_partitions=1,
                replication_factor=replication_factor,
                topic_configs={"cleanup.policy": "compact"},
            )
            if n.endswith(DIRECTORY_SUFFIX)
            else NewTopic(name=n, num_partitions=partitions, replication_factor=replication_factor)
            for n in missing
        ]
        # Another process may create a topic between the listing and the creation: fine.
        with suppress(TopicAlreadyExistsError):
            admin.create_topics(new)
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
