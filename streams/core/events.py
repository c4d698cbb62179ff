"""Canonical pathway events: small, frozen, past tense; shared by producers and consumers.

`streams/core/fhir_map.py` is the only place that makes them from FHIR. Every patient event carries
the patient key, its event time `at` (from FHIR, timezone-aware) and the resource version it came
from, which makes every transition idempotent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar

import orjson


@dataclass(frozen=True)
class SourceRef:
    """The FHIR resource version an event came from; the idempotency key of every transition."""

    resource_type: str
    resource_id: str
    version: str


@dataclass(frozen=True, kw_only=True)
class PatientEvent:
    """Base of every event about one patient."""

    patient_id: str
    at: datetime
    source: SourceRef
    # One resource version maps to `parts` patient events; the pathway applies them together, so
    # a new version replaces what the previous one said without a half-applied state in between.
    part: int = 1
    parts: int = 1

    @property
    def kind(self) -> str:
        """The event's name, e.g. `PatientAdmitted`."""
        return type(self).__name__

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form, for logs and JSON."""
        return {"kind": self.kind, **asdict(self)}


# --- Community side -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ReferralSent(PatientEvent):
    """A community practitioner referred the patient to a hospital (ServiceRequest)."""

    referral_id: str
    requester: str | None = None
    performer: str | None = None
    status: str = "active"


@dataclass(frozen=True, kw_only=True)
class AppointmentBooked(PatientEvent):
    """An appointment was booked (scheduled admission, consultation or follow-up)."""

    appointment_id: str
    start: datetime | None = None
    status: str = "booked"
    based_on: str | None = None
    # Where it takes place, when the Appointment says: its service (serviceType code) and the
    # Location among its participants.
    service: str | None = None
    location: str | None = None


@dataclass(frozen=True, kw_only=True)
class CommunityVisited(PatientEvent):
    """A community contact took place (AMB, HH or VR Encounter); `at` is its start."""

    encounter_id: str
    class_code: str
    end: datetime | None = None
    provider: str | None = None
    based_on: str | None = None


@dataclass(frozen=True, kw_only=True)
class HomeCareStarted(PatientEvent):
    """Home care began (EpisodeOfCare)."""

    episode_id: str
    care_type: str | None = None


@dataclass(frozen=True, kw_only=True)
class HomeCareEnded(PatientEvent):
    """Home care ended (EpisodeOfCare finished)."""

    episode_id: str


# --- Emergency department -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EdArrived(PatientEvent):
    """The patient arrived in an ED (EMER Encounter start)."""

    encounter_id: str
    hospital: str | None = None
    ward: str | None = None
    based_on: str | None = None


@dataclass(frozen=True, kw_only=True)
class EdDeparted(PatientEvent):
    """The patient left the ED; `admitted` when an inpatient stay followed."""

    encounter_id: str
    admitted: bool = False
    disposition: str | None = None


# --- Inpatient stay -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PatientAdmitted(PatientEvent):
    """An inpatient stay began (IMP Encounter start). `stay_id` is the Encounter id."""

    stay_id: str
    hospital: str | None = None
    ward: str | None = None
    bed: str | None = None
    admit_source: str | None = None
    from_ed_encounter: str | None = None
    service: str | None = None
    based_on: str | None = None


@dataclass(frozen=True, kw_only=True)
class PatientTransferred(PatientEvent):
    """The patient moved to another ward or bed during a stay (an `Encounter.location` entry).

    `at` is the move time; `until` the end of that location period when known.
    """

    stay_id: str
    location: str
    ward: str | None = None
    bed: str | None = None
    until: datetime | None = None
    service: str | None = None


@dataclass(frozen=True, kw_only=True)
class PatientDischarged(PatientEvent):
    """An inpatient stay ended (IMP Encounter finished)."""

    stay_id: str
    disposition: str | None = None


@dataclass(frozen=True, kw_only=True)
class PatientDied(PatientEvent):
    """The patient died (Patient.deceased or disposition `exp`)."""


@dataclass(frozen=True, kw_only=True)
class PatientReplaced(PatientEvent):
    """The patient record was merged into another (`Patient.link` replaced-by): its records now
    belong to `replaced_by`'s pathway, where the gateway sends them again."""

    replaced_by: str


@dataclass(frozen=True, kw_only=True)
class ResourceRetracted(PatientEvent):
    """The source resource no longer stands for anything on the pathway.

    A cancelled or entered-in-error Encounter, a revoked ServiceRequest, a cancelled Appointment:
    whatever earlier versions of `source` said is withdrawn. `reason` is the status that says so.
    """

    reason: str


# --- Places -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocationRecorded:
    """A hospital, ward or bed Location was created or changed. Keyed by `Location/<id>`."""

    location_id: str
    name: str | None
    physical_type: str | None
    part_of: str | None
    status: str
    service_code: str | None
    service_name: str | None
    organization: str | None
    source: SourceRef
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def kind(self) -> str:
        """The event's name."""
        return type(self).__name__


@dataclass(frozen=True)
class OrganizationRecorded:
    """An Organization was created or changed: a hospital known by its Organization id (the
    Encounter's serviceProvider, a site Location's managingOrganization) is shown by its name.
    Keyed by `Organization/<id>`."""

    organization_id: str
    name: str | None
    source: SourceRef

    @property
    def kind(self) -> str:
        """The event's name."""
        return type(self).__name__


# --- Walking skeleton: a plain record of every Encounter version ---------------------------------


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

    @property
    def kind(self) -> str:
        """The event's name."""
        return type(self).__name__

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form, for logs and JSON."""
        return asdict(self)


CanonicalEvent = PatientEvent | LocationRecorded | OrganizationRecorded | EncounterRecorded


# --- JSON round trip of patient events (the pathway state stores its event log) ------------------

PATIENT_EVENT_TYPES: dict[str, type[PatientEvent]] = {
    cls.__name__: cls
    for cls in (
        ReferralSent,
        AppointmentBooked,
        CommunityVisited,
        HomeCareStarted,
        HomeCareEnded,
        EdArrived,
        EdDeparted,
        PatientAdmitted,
        PatientTransferred,
        PatientDischarged,
        PatientDied,
        PatientReplaced,
        ResourceRetracted,
    )
}


def patient_event_fields(event: PatientEvent) -> dict[str, Any]:
    """The event as an object of its fields plus its `kind` (values as they are): the one shape
    of an event in JSON, which `patient_event_from_json` reads back."""
    return {"kind": event.kind, **event.__dict__}


def patient_event_to_json(event: PatientEvent) -> dict[str, Any]:
    """A JSON-able dict (times as ISO 8601 strings with their offset); see
    `patient_event_from_json`."""
    data: dict[str, Any] = orjson.loads(orjson.dumps(patient_event_fields(event)))
    return data


def patient_event_from_json(data: dict[str, Any]) -> PatientEvent:
    """The event `patient_event_to_json` wrote. Raises KeyError/ValueError on foreign input."""
    cls = PATIENT_EVENT_TYPES[data["kind"]]
    kwargs: dict[str, Any] = {}
    for name in _field_names(cls):
        if name not in data:
            continue
        value = data[name]
        if name == "source":
            value = SourceRef(**value)
        elif isinstance(value, str) and name in _TIME_FIELDS:
            value = datetime.fromisoformat(value)
        kwargs[name] = value
    return cls(**kwargs)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type[PatientEvent]) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


_TIME_FIELDS = frozenset({"at", "start", "end", "until"})


_T = TypeVar("_T")


def shallow_copy(obj: _T, **changes: Any) -> _T:
    """A shallow copy of a record, event or state, with `changes` set: much cheaper than
    `copy.copy` or `dataclasses.replace`, which the rules and the mapper would call for every
    event. It also copies frozen events, whose fields only the copier may set."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__, **changes)
    return new
