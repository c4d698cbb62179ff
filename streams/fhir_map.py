"""FHIR R4 resource (as JSON) → canonical pathway events. Pure: no I/O, no clock.

FHIR objects stop here. fhir.resources does not enforce code values, so the codes this
module relies on (Encounter.class, Encounter.status) are checked here.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from streams import StreamsError
from streams.events import CanonicalEvent, EncounterRecorded, SourceRef

ENCOUNTER_CLASSES = frozenset({"AMB", "EMER", "IMP", "HH", "VR", "ACUTE", "NONAC", "OBSENC", "SS"})
ENCOUNTER_STATUSES = frozenset(
    {
        "planned",
        "arrived",
        "triaged",
        "in-progress",
        "onleave",
        "finished",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)


class MappingError(StreamsError):
    """The resource cannot be turned into canonical events; the reason goes to the dead letters."""


def parse_time(value: str | None) -> datetime | None:
    """A FHIR dateTime/instant as an aware datetime; a date-only value is midnight UTC."""
    if not value:
        return None
    text = value.replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        # FHIR requires a zone when a time is given; a bare date carries none, read it as UTC.
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def reference_id(ref: dict[str, Any] | None) -> str | None:
    """The id part of a reference: `Patient/123` → `123`, `urn:uuid:abc` → `abc`."""
    if not ref or not isinstance(ref.get("reference"), str):
        return None
    text: str = ref["reference"]
    return text.rsplit("/", 1)[-1].removeprefix("urn:uuid:")


def source_ref(resource: dict[str, Any]) -> SourceRef:
    """(type, id, version): versionId, else meta.lastUpdated, else a content hash."""
    meta = resource.get("meta") or {}
    version = meta.get("versionId") or meta.get("lastUpdated")
    if not version:
        digest = hashlib.sha256(json.dumps(resource, sort_keys=True).encode()).hexdigest()
        version = f"sha256:{digest[:16]}"
    return SourceRef(resource.get("resourceType", "?"), str(resource.get("id", "?")), str(version))


def map_encounter(resource: dict[str, Any]) -> list[CanonicalEvent]:
    """An Encounter → one EncounterRecorded event."""
    enc_id = resource.get("id")
    if not enc_id:
        raise MappingError("Encounter.id is missing")
    patient = reference_id(resource.get("subject"))
    if not patient:
        raise MappingError("Encounter.subject does not reference a patient")
    class_code = (resource.get("class") or {}).get("code")
    if class_code not in ENCOUNTER_CLASSES:
        raise MappingError(f"Encounter.class.code {class_code!r} is not an R4 ActEncounterCode")
    status = resource.get("status")
    if status not in ENCOUNTER_STATUSES:
        raise MappingError(f"Encounter.status {status!r} is not an R4 encounter status")
    period = resource.get("period") or {}
    return [
        EncounterRecorded(
            patient_id=patient,
            encounter_id=str(enc_id),
            class_code=class_code,
            status=status,
            start=parse_time(period.get("start")),
            end=parse_time(period.get("end")),
            service_provider=reference_id(resource.get("serviceProvider")),
            source=source_ref(resource),
        )
    ]


def map_resource(resource: dict[str, Any]) -> list[CanonicalEvent]:
    """Any FHIR resource → canonical events (an empty list for types with no pathway meaning)."""
    if not isinstance(resource, dict) or "resourceType" not in resource:
        raise MappingError("not a FHIR resource: resourceType is missing")
    if resource["resourceType"] == "Encounter":
        return map_encounter(resource)
    return []
