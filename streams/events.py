"""Canonical pathway events: small, frozen, past tense; shared by producers and consumers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class SourceRef:
    """The FHIR resource version an event came from; the idempotency key of every transition."""

    resource_type: str
    resource_id: str
    version: str


@dataclass(frozen=True)
class EncounterRecorded:
    """An Encounter was recorded (created or updated) in a source system."""

    patient_id: str
    encounter_id: str
    class_code: str
    status: str
    start: datetime | None
    end: datetime | None
    service_provider: str | None
    source: SourceRef

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form, for logs and JSON."""
        return asdict(self)


CanonicalEvent = EncounterRecorded
