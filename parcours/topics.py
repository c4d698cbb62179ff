"""Kafka topic names, and creating them.

Every message on these topics is keyed by the patient reference (`Patient/<id>` is not
used: the key is the bare patient id, UTF-8).
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

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
