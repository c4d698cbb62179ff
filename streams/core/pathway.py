"""The per-patient care pathway: a pure state machine over canonical events. No I/O, no clock.

    transition(state | None, event, rules) -> (state, outputs)
    check_timers(state, now, rules)        -> (state, outputs)

How it stays correct when feeds repeat themselves and arrive out of order:

- The state keeps a bounded log of the patient's recent events, sorted by event time, and the
  *facts* (stays, ED visits, referrals…) are always the fold of that log over a compacted *base*.
  An event that arrives late is inserted where it belongs and the log is replayed, so a transfer
  that arrives after the discharge lands inside the stay.
- One FHIR resource version maps to `parts` events; they are applied together, and a new version
  of a resource *replaces* what its previous version said (a new Encounter version that says the
  same thing changes nothing; one that adds a location entry adds the transfer; a cancelled one
  withdraws the stay). The same version twice is a no-op; an older version after a newer one is
  ignored.
- Records are keyed by their resource id (a stay by its Encounter id…), so folding the same
  resource twice updates one record instead of making two.
- Links between records (which stay an ED visit led to, a referral's first hospital contact, a
  discharge's first community contact, readmissions, what a death or the next admission ended)
  are derived by `settle` from all the records at once, so they do not depend on arrival order.
- Events older than `rules.history_horizon` before the patient's clock, of resources with nothing
  open, are folded into the base and leave the log, which keeps the state small. An event that
  could not apply (a move of an unknown stay) is dropped when it is compacted.

Alerts are a pure function of the facts and a time (`evaluate_alerts`): after each transition or
timer tick the active set is recomputed and the difference comes out as `AlertRaised` /
`AlertResolved`, with deterministic ids `<kind>:<patient>:<subject>`, so replays upsert one row.
The time is the patient's clock: the latest event time seen, moved on by `check_timers`.

- `ed_boarding` (subject: the ED encounter): in the ED for `ed_boarding` or more, admission
  decided or not; clears at the departure.
- `referral_no_contact` (the referral): no hospital contact (ED arrival, admission, or an encounter
  or kept appointment based on it) `referral_contact` after it was sent; a booked appointment based
  on it holds the alert until its start plus `appointment_grace`. Clears at the contact, or when
  the referral is completed, revoked or withdrawn.
- `no_follow_up` (the stay): the latest stay ended by a discharge home (not death, not to another
  institution) and no community contact (visit, referral written, home care, kept appointment)
  `follow_up` after it; an appointment booked for after the discharge holds it until its start plus
  `appointment_grace`. Clears at the contact or the next admission.
- `readmission` (the new stay): admitted within `readmission` of the previous discharge (not a
  death, not a transfer to another hospital). Stays while that stay is open, then until the
  community has seen the patient, for at most `readmission` after its discharge.
- `long_stay` (the stay): an open stay longer than the p90 of its service (`los_p90`, by service
  code or ward id, else `los_p90_default`). Clears at the discharge.
- Nothing is raised for a deceased patient; a death clears every alert.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

import orjson

from parcours.timeutil import TimeFormatError, parse_fhir
from streams.core.events import (
    AppointmentBooked,
    CommunityVisited,
    EdArrived,
    EdDeparted,
    HomeCareEnded,
    HomeCareStarted,
    PatientAdmitted,
    PatientDied,
    PatientDischarged,
    PatientEvent,
    PatientReplaced,
    PatientTransferred,
    ReferralSent,
    ResourceRetracted,
    SourceRef,
    patient_event_fields,
    patient_event_from_json,
    shallow_copy,
)

# --- Rules ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathwayRules:
    """Thresholds of the pathway alerts. `Settings` builds one; tests pass their own.

    `los_p90` maps a service code (or a ward id) to the 90th percentile length of stay of that
    service; a stay whose service is unknown uses `los_p90_default`.
    """

    ed_boarding: timedelta = timedelta(hours=4)
    referral_contact: timedelta = timedelta(days=14)
    follow_up: timedelta = timedelta(days=7)
    readmission: timedelta = timedelta(days=30)
    los_p90: Mapping[str, timedelta] = field(default_factory=dict, hash=False)
    los_p90_default: timedelta = timedelta(days=12)
    # An ED visit belongs to the stay that starts while the patient is in the ED or this soon
    # after the departure (Synthea starts the IMP encounter at the ED arrival).
    ed_admission_link: timedelta = timedelta(hours=6)
    # An ED visit with no departure yet belongs only to a stay that starts this soon after its
    # arrival (boarders wait for a bed for hours, not for weeks).
    ed_open_link: timedelta = timedelta(hours=72)
    # A booked appointment holds a referral or follow-up alert until its start plus this margin.
    appointment_grace: timedelta = timedelta(days=1)
    history_horizon: timedelta = timedelta(days=120)
    max_records: int = 200
    # The territory's zone: a FHIR date without a time is its midnight there.
    timezone: str = "UTC"

    def los_threshold(self, service: str | None, ward: str | None) -> timedelta:
        """The p90 length of stay that applies to a stay of `service` in `ward`."""
        for key in (service, ward):
            if key is not None and key in self.los_p90:
                return self.los_p90[key]
        return self.los_p90_default


DEFAULT_RULES = PathwayRules()

# Discharges after which community follow-up is the territory's job (not another institution's).
FOLLOW_UP_DISPOSITIONS_EXCLUDED = frozenset(
    {"exp", "hosp", "other-hcf", "rehab", "snf", "long", "psy"}
)
IMPLIED_ENDS = frozenset({"death", "next_admission"})
TRANSFER_DISPOSITIONS = frozenset({"hosp", "other-hcf"})
REFERRAL_OPEN_STATUSES = frozenset({"active", "on-hold"})


class Stage(StrEnum):
    """Where the patient is on the city–hospital pathway."""

    COMMUNITY = "community"
    REFERRED = "referred"
    IN_ED = "in_ed"
    ADMITTED = "admitted"
    DISCHARGED = "discharged"  # discharged, awaiting community follow-up
    FOLLOWED_UP = "followed_up"
    HOME_CARE = "home_care"
    DECEASED = "deceased"


class AlertKind(StrEnum):
    """The patient-level alerts (ward capacity is census-level: `streams/core/census.py`)."""

    ED_BOARDING = "ed_boarding"
    REFERRAL_NO_CONTACT = "referral_no_contact"
    NO_FOLLOW_UP = "no_follow_up"
    READMISSION = "readmission"
    LONG_STAY = "long_stay"


# --- Records (the facts) -------------------------------------------------------------------------


@dataclass
class LocationSpell:
    """A period of a stay in one place; `location` is the most specific place known."""

    start: datetime
    end: datetime | None = None
    location: str | None = None
    ward: str | None = None
    bed: str | None = None
    # The end the source gave for this entry, kept apart from `end`, which the next move sets.
    until: datetime | None = None


@dataclass
class Stay:
    """An inpatient stay (an IMP Encounter). `ward`/`bed` are where the patient is *now*: both
    are None once the stay is closed; the places it went through are in `locations`."""

    stay_id: str
    admitted_at: datetime
    hospital: str | None = None
    service: str | None = None
    admit_source: str | None = None
    # The Encounter its `partOf` names: one of the patient's ED visits, which it then followed;
    # another stay, of which it is then a movement (`_merge_movements`); or none known yet.
    from_ed_encounter: str | None = None
    based_on: str | None = None
    discharged_at: datetime | None = None
    disposition: str | None = None
    # "discharge", "death" (a death ended it before its own discharge arrived), or
    # "next_admission" (a later stay began while this one was still open).
    ended_by: str | None = None
    ward: str | None = None
    bed: str | None = None
    locations: list[LocationSpell] = field(default_factory=list)
    readmission_of: str | None = None
    followed_up_at: datetime | None = None

    @property
    def is_open(self) -> bool:
        """True while the patient is in this stay."""
        return self.discharged_at is None

    def los(self, now: datetime) -> timedelta:
        """Length of stay so far (open) or in all (closed)."""
        return (self.discharged_at or now) - self.admitted_at

    @property
    def los_hours(self) -> float | None:
        """Length of a closed stay in hours; None while open."""
        if self.discharged_at is None:
            return None
        return (self.discharged_at - self.admitted_at).total_seconds() / 3600


@dataclass
class EdVisit:
    """An emergency department visit (an EMER Encounter)."""

    encounter_id: str
    arrived_at: datetime
    hospital: str | None = None
    ward: str | None = None
    based_on: str | None = None
    departed_at: datetime | None = None
    admitted: bool = False
    stay_id: str | None = None
    disposition: str | None = None
    # What the ED said (EdDeparted.admitted); `admitted` also counts a stay that followed.
    reported_admitted: bool = False
    # The departure is the patient's death, not an EdDeparted.
    departure_implied: bool = False

    @property
    def is_open(self) -> bool:
        """True while the patient is in the ED."""
        return self.departed_at is None


@dataclass
class CommunityVisit:
    """A community contact (AMB, HH or VR Encounter)."""

    encounter_id: str
    start: datetime
    class_code: str
    end: datetime | None = None
    provider: str | None = None
    based_on: str | None = None


@dataclass
class Referral:
    """A community referral to a hospital; `contact_at` is the first hospital contact after it."""

    referral_id: str
    sent_at: datetime
    status: str = "active"
    requester: str | None = None
    performer: str | None = None
    contact_at: datetime | None = None
    contact_id: str | None = None

    @property
    def is_open(self) -> bool:
        """True while the referral waits for a hospital contact."""
        return self.status in REFERRAL_OPEN_STATUSES and self.contact_at is None


@dataclass
class Appointment:
    """A booked appointment (`booked_at` is when it was booked, `start` when it takes place)."""

    appointment_id: str
    booked_at: datetime
    start: datetime | None = None
    status: str = "booked"
    based_on: str | None = None
    service: str | None = None
    location: str | None = None


@dataclass
class HomeCare:
    """A home care episode (EpisodeOfCare)."""

    episode_id: str
    started_at: datetime
    ended_at: datetime | None = None
    care_type: str | None = None
    # The end is the patient's death, not a HomeCareEnded.
    end_implied: bool = False

    @property
    def is_open(self) -> bool:
        """True while home care goes on."""
        return self.ended_at is None


@dataclass
class Facts:
    """What the patient's events say, folded in event-time order. Lists are in time order."""

    stays: list[Stay] = field(default_factory=list)
    ed_visits: list[EdVisit] = field(default_factory=list)
    community_visits: list[CommunityVisit] = field(default_factory=list)
    referrals: list[Referral] = field(default_factory=list)
    appointments: list[Appointment] = field(default_factory=list)
    home_care: list[HomeCare] = field(default_factory=list)
    died_at: datetime | None = None
    # Set when the record was merged into another Patient: its records are that one's now.
    replaced_by: str | None = None

    def open_stays(self) -> list[Stay]:
        """Stays the patient is in (at most one once the fold has run)."""
        return [s for s in self.stays if s.is_open]

    def last_stay(self) -> Stay | None:
        """The most recent stay by admission time."""
        return max(self.stays, key=lambda s: s.admitted_at, default=None)


Record = Stay | EdVisit | CommunityVisit | Referral | Appointment | HomeCare

RECORD_LISTS: dict[str, tuple[str, str]] = {
    # record kind → (Facts attribute, id attribute)
    "stay": ("stays", "stay_id"),
    "ed_visit": ("ed_visits", "encounter_id"),
    "community_visit": ("community_visits", "encounter_id"),
    "referral": ("referrals", "referral_id"),
    "appointment": ("appointments", "appointment_id"),
    "home_care": ("home_care", "episode_id"),
}
RETRACTABLE: dict[str, tuple[str, ...]] = {
    # resource type → the record kinds its id names
    "Encounter": ("stay", "ed_visit", "community_visit"),
    "ServiceRequest": ("referral",),
    "Appointment": ("appointment",),
    "EpisodeOfCare": ("home_care",),
}


@dataclass(frozen=True)
class Alert:
    """An active alert; `since` is when its condition became true (event time)."""

    alert_id: str
    kind: str
    subject_id: str
    since: datetime
    details: dict[str, Any] = field(default_factory=dict, compare=False)


# --- Outputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertRaised:
    """An alert's condition became true. Upsert by `alert_id`."""

    alert_id: str
    kind: str
    patient_id: str
    at: datetime
    subject_id: str
    details: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class AlertResolved:
    """An alert's condition cleared (`at` is the patient's clock when that was seen)."""

    alert_id: str
    kind: str
    patient_id: str
    at: datetime
    subject_id: str


@dataclass(frozen=True)
class StageChanged:
    """The patient moved to another pathway stage."""

    patient_id: str
    at: datetime | None
    previous: str | None
    stage: str


@dataclass(frozen=True)
class OccupancyChanged:
    """The ward/bed the patient holds changed (census input). None means no place held."""

    patient_id: str
    at: datetime | None
    stay_id: str | None
    previous_ward: str | None
    previous_bed: str | None
    ward: str | None
    bed: str | None


@dataclass(frozen=True)
class RecordChanged:
    """A stay, ED visit, community visit, referral, appointment or home care record is new or
    changed; `record` is its whole new value (upsert it)."""

    patient_id: str
    record_kind: str
    record_id: str
    record: Record


@dataclass(frozen=True)
class RecordRemoved:
    """A record was withdrawn (its resource was cancelled or entered in error): delete it."""

    patient_id: str
    record_kind: str
    record_id: str


@dataclass(frozen=True)
class EventIgnored:
    """An event that changed nothing for a reason worth counting (an older version…)."""

    patient_id: str
    source: SourceRef
    reason: str


Output = (
    AlertRaised
    | AlertResolved
    | StageChanged
    | OccupancyChanged
    | RecordChanged
    | RecordRemoved
    | EventIgnored
)


# --- JSON codec for the records ------------------------------------------------------------------

T = TypeVar("T")


_FIELD_NAMES: dict[type, tuple[str, ...] | None] = {}


def _field_names(cls: type) -> tuple[str, ...] | None:
    """The field names of a dataclass type (None for other types), cached: this runs for every
    record of every state the worker reads or writes."""
    try:
        return _FIELD_NAMES[cls]
    except KeyError:
        names = (
            tuple(f.name for f in dataclasses.fields(cls))
            if dataclasses.is_dataclass(cls)
            else None
        )
        _FIELD_NAMES[cls] = names
        return names


def to_jsonable(value: Any) -> Any:
    """Dataclasses, datetimes, lists and dicts as JSON-able data (times as ISO 8601)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, timedelta):
        return value.total_seconds()
    names = _field_names(type(value))
    if names is not None:
        return {name: to_jsonable(getattr(value, name)) for name in names}
    return value


Decoder = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


def _decoder(tp: Any) -> Decoder:
    """A function that turns the JSON of a value of type `tp` back into that value."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _decoder(args[0]) if len(args) == 1 else _identity
        return lambda v: None if v is None else inner(v)
    if tp is datetime:
        return datetime.fromisoformat
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        item = _decoder(item_tp)
        if item is _identity:
            return list
        return lambda v: [item(x) for x in v]
    if origin is dict:
        _, value_tp = typing.get_args(tp)
        value = _decoder(value_tp)
        return lambda v: {k: value(x) for k, x in v.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return lambda v: from_jsonable(tp, v)
    return _identity


@functools.cache
def _codec(cls: type) -> tuple[tuple[str, Decoder], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, _decoder(hints[f.name])) for f in dataclasses.fields(cls))


def _decode(tp: Any, value: Any) -> Any:
    return _decoder(tp)(value)


def from_jsonable(cls: type[T], data: Mapping[str, Any]) -> T:
    """The dataclass `cls` that `to_jsonable` wrote."""
    return cls(
        **{name: dec(data[name]) for name, dec in _codec(typing.cast(type, cls)) if name in data}
    )


def _plain(value: Any) -> Any:
    """How `PatientState.to_json` writes the dataclasses of a state: their fields as an object
    (orjson writes the datetimes, enums, lists and dicts inside it by itself); an event also
    gets its `kind`, which `patient_event_from_json` reads back."""
    if isinstance(value, PatientEvent):
        return patient_event_fields(value)
    if dataclasses.is_dataclass(value):
        return value.__dict__
    raise TypeError(f"{type(value).__name__} is not part of a pathway state")


# --- State ---------------------------------------------------------------------------------------


@dataclass
class PatientState:
    """The pathway state of one patient, as the Faust table stores it (`to_dict`/`from_dict`).

    The view (`stage`, `ward`, `bed`, `stay_id`, `facts`, `alerts`) is derived; `base`, `log`,
    `versions` and `pending` are what it is derived from. Treat it as immutable: `transition`
    and `check_timers` return a new state and never change the one they get.
    """

    patient_id: str
    stage: Stage = Stage.COMMUNITY
    stage_since: datetime | None = None
    stay_id: str | None = None
    ward: str | None = None
    bed: str | None = None
    clock: datetime | None = None
    facts: Facts = field(default_factory=Facts)
    alerts: dict[str, Alert] = field(default_factory=dict)
    base: Facts = field(default_factory=Facts)
    base_until: datetime | None = None
    log: list[PatientEvent] = field(default_factory=list)
    # "Type/id" → the version of that resource the log holds (or retracted).
    versions: dict[str, str] = field(default_factory=dict)
    # "Type/id@version" → the parts of that version received so far.
    pending: dict[str, list[PatientEvent]] = field(default_factory=dict)

    @property
    def stays(self) -> list[Stay]:
        """The stay history (bounded by `rules.max_records`), oldest first."""
        return self.facts.stays

    def view(self) -> dict[str, Any]:
        """What readers need of the state (the `pathway_states` row): where the patient is on the
        pathway and since when. The log, base and facts stay in the Faust table."""
        return {
            "patient_id": self.patient_id,
            "stage": self.stage.value,
            "stage_since": to_jsonable(self.stage_since),
            "stay_id": self.stay_id,
            "ward": self.ward,
            "bed": self.bed,
            "clock": to_jsonable(self.clock),
            "alerts": sorted(self.alerts),
        }

    def to_json(self) -> str:
        """The JSON text of the whole state (the Faust table value): what `from_json` reads."""
        return orjson.dumps(self, default=_plain, option=orjson.OPT_PASSTHROUGH_DATACLASS).decode()

    def to_dict(self) -> dict[str, Any]:
        """The state as JSON-able data (`to_json`, parsed)."""
        data: dict[str, Any] = orjson.loads(self.to_json())
        return data

    @classmethod
    def from_json(cls, data: str | bytes) -> PatientState:
        """The state `to_json` wrote."""
        return cls.from_dict(orjson.loads(data))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PatientState:
        """The state `to_dict` wrote."""
        return cls(
            patient_id=data["patient_id"],
            stage=Stage(data["stage"]),
            stage_since=_decode(datetime | None, data.get("stage_since")),
            stay_id=data.get("stay_id"),
            ward=data.get("ward"),
            bed=data.get("bed"),
            clock=_decode(datetime | None, data.get("clock")),
            facts=from_jsonable(Facts, data.get("facts") or {}),
            alerts={k: from_jsonable(Alert, v) for k, v in (data.get("alerts") or {}).items()},
            base=from_jsonable(Facts, data.get("base") or {}),
            base_until=_decode(datetime | None, data.get("base_until")),
            log=[patient_event_from_json(ev) for ev in data.get("log") or []],
            versions=dict(data.get("versions") or {}),
            pending={
                k: [patient_event_from_json(ev) for ev in evs]
                for k, evs in (data.get("pending") or {}).items()
            },
        )


# --- Event order ---------------------------------------------------------------------------------

# At the same instant: arrivals before admissions (Synthea starts both together), moves before
# departures, discharges before deaths.
_RANK = {
    "ResourceRetracted": 0,
    "ReferralSent": 1,
    "AppointmentBooked": 2,
    "CommunityVisited": 3,
    "HomeCareStarted": 4,
    "EdArrived": 5,
    "PatientAdmitted": 6,
    "PatientTransferred": 7,
    "EdDeparted": 8,
    "HomeCareEnded": 9,
    "PatientDischarged": 10,
    "PatientDied": 11,
}


def event_order(ev: PatientEvent) -> tuple[datetime, int, str, str, int]:
    """The sort key of the log: event time, then a clinical order for ties, then the source."""
    return (ev.at, _RANK.get(ev.kind, 99), ev.source.resource_type, ev.source.resource_id, ev.part)


def _resource_key(src: SourceRef) -> str:
    return f"{src.resource_type}/{src.resource_id}"


def _version_rank(version: str) -> tuple[int, Any] | None:
    """A comparable form of a version: a number (versionId) or a time (meta.lastUpdated)."""
    if version.isdigit():
        return (0, int(version))
    try:
        parsed = parse_fhir(version)
    except TimeFormatError:
        return None
    return None if parsed is None else (1, parsed)


def is_older_version(candidate: str, current: str) -> bool:
    """True when `candidate` is known to be older than `current` (comparable forms only)."""
    a, b = _version_rank(candidate), _version_rank(current)
    if a is None or b is None or a[0] != b[0]:
        return False
    return bool(a[1] < b[1])


# --- Fold: one event into the facts --------------------------------------------------------------


def _find(items: list[Any], attr: str, key: str) -> Any:
    for item in items:
        if getattr(item, attr) == key:
            return item
    return None


class _Records:
    """Finds the record of an id in the lists of the facts a replay folds, with one dict per
    list: a long log (thousands of stays) is folded in linear time, not quadratic. A list that
    was replaced, or grew other than through `added`, is read again."""

    def __init__(self) -> None:
        self._maps: dict[int, tuple[list[Any], dict[str, Any], int]] = {}

    def find(self, items: list[Any], attr: str, key: str) -> Any:
        entry = self._maps.get(id(items))
        if entry is None or entry[0] is not items or entry[2] != len(items):
            found: dict[str, Any] = {}
            for item in items:
                found.setdefault(getattr(item, attr), item)
            entry = (items, found, len(items))
            self._maps[id(items)] = entry
        return entry[1].get(key)

    def added(self, items: list[Any], attr: str, item: Any) -> None:
        entry = self._maps.get(id(items))
        if entry is not None and entry[0] is items and entry[2] == len(items) - 1:
            entry[1].setdefault(getattr(item, attr), item)
            self._maps[id(items)] = (items, entry[1], len(items))


class _Scan:
    """`_Records` without the dicts, for the few events folded outside a replay."""

    @staticmethod
    def find(items: list[Any], attr: str, key: str) -> Any:
        return _find(items, attr, key)

    @staticmethod
    def added(items: list[Any], attr: str, item: Any) -> None:
        return None


_SCAN = _Scan()


def _normalise_spells(stay: Stay) -> None:
    """Sort the spells; each ends where the next begins, the last at the discharge."""
    stay.locations.sort(key=lambda s: s.start)
    for current, following in zip(stay.locations, stay.locations[1:], strict=False):
        current.end = following.start
    if stay.locations:
        last = stay.locations[-1]
        last.end = last.until
        if stay.discharged_at is not None and (last.end is None or last.end > stay.discharged_at):
            last.end = stay.discharged_at
        if stay.is_open:
            stay.ward, stay.bed = last.ward, last.bed
        else:
            stay.ward = stay.bed = None


def _close_stay(stay: Stay, at: datetime, ended_by: str, disposition: str | None) -> None:
    stay.discharged_at = at
    stay.ended_by = ended_by
    if disposition is not None:
        stay.disposition = disposition
    # A move recorded after the end of the stay cannot have happened inside it.
    stay.locations = [s for s in stay.locations if s.start <= at] or stay.locations[:1]
    _normalise_spells(stay)


def _admit(facts: Facts, ev: PatientAdmitted, records: _Records | _Scan) -> None:
    stay = records.find(facts.stays, "stay_id", ev.stay_id)
    if stay is None:
        stay = Stay(stay_id=ev.stay_id, admitted_at=ev.at)
        later = bool(facts.stays) and facts.stays[-1].admitted_at > ev.at
        facts.stays.append(stay)
        records.added(facts.stays, "stay_id", stay)
        if later:
            facts.stays.sort(key=_admitted_at)
    else:
        # An admission event comes with the whole new version of its stay, which says again how
        # the stay went on: start over (the base may hold what an older version said).
        stay.discharged_at = stay.disposition = stay.ended_by = None
        stay.locations = []
        stay.admitted_at = ev.at
        facts.stays.sort(key=_admitted_at)
    stay.hospital = ev.hospital
    stay.service = ev.service
    stay.admit_source = ev.admit_source
    stay.from_ed_encounter = ev.from_ed_encounter
    stay.based_on = ev.based_on
    stay.locations.append(
        LocationSpell(start=ev.at, location=ev.bed or ev.ward, ward=ev.ward, bed=ev.bed)
    )
    _normalise_spells(stay)


def _admitted_at(stay: Stay) -> datetime:
    return stay.admitted_at


def _transfer(facts: Facts, ev: PatientTransferred, records: _Records | _Scan) -> bool:
    stay: Stay | None = records.find(facts.stays, "stay_id", ev.stay_id)
    if stay is None or ev.at < stay.admitted_at:
        return False
    if stay.discharged_at is not None and ev.at >= stay.discharged_at:
        return False
    stay.locations = [s for s in stay.locations if s.start != ev.at]
    stay.locations.append(
        LocationSpell(start=ev.at, location=ev.location, ward=ev.ward, bed=ev.bed, until=ev.until)
    )
    if ev.service is not None:
        stay.service = ev.service
    _normalise_spells(stay)
    return True


def _discharge(facts: Facts, ev: PatientDischarged, records: _Records | _Scan) -> bool:
    stay: Stay | None = records.find(facts.stays, "stay_id", ev.stay_id)
    if stay is None or ev.at < stay.admitted_at:
        return False
    # The stay's own discharge wins over an end a death or the next admission implied.
    _close_stay(stay, ev.at, "discharge", ev.disposition)
    stay.disposition = ev.disposition
    return True


def _retract(facts: Facts, ev: ResourceRetracted) -> None:
    rid = ev.source.resource_id
    for kind in RETRACTABLE.get(ev.source.resource_type, ()):
        attr, id_attr = RECORD_LISTS[kind]
        items = getattr(facts, attr)
        setattr(facts, attr, [r for r in items if getattr(r, id_attr) != rid])


def fold(facts: Facts, ev: PatientEvent, records: _Records | _Scan = _SCAN) -> bool:
    """Apply one event to the records of `facts`, in place. False when the event could not
    apply (a transfer after the discharge of its stay, a discharge of an unknown stay…).

    Links between records (ED visit → stay, referral → contact, stay → follow-up, readmission)
    are not made here but by `settle`, from all the records, so they do not depend on the
    order the records were folded in."""
    if isinstance(ev, ReferralSent):
        ref = records.find(facts.referrals, "referral_id", ev.referral_id)
        if ref is None:
            ref = Referral(referral_id=ev.referral_id, sent_at=ev.at)
            facts.referrals.append(ref)
            records.added(facts.referrals, "referral_id", ref)
        ref.sent_at, ref.status = ev.at, ev.status
        ref.requester, ref.performer = ev.requester, ev.performer
    elif isinstance(ev, AppointmentBooked):
        appt = records.find(facts.appointments, "appointment_id", ev.appointment_id)
        if appt is None:
            appt = Appointment(appointment_id=ev.appointment_id, booked_at=ev.at)
            facts.appointments.append(appt)
            records.added(facts.appointments, "appointment_id", appt)
        appt.booked_at, appt.start, appt.status = ev.at, ev.start, ev.status
        appt.based_on, appt.service, appt.location = ev.based_on, ev.service, ev.location
    elif isinstance(ev, CommunityVisited):
        visit = records.find(facts.community_visits, "encounter_id", ev.encounter_id)
        if visit is None:
            visit = CommunityVisit(encounter_id=ev.encounter_id, start=ev.at, class_code="")
            facts.community_visits.append(visit)
            records.added(facts.community_visits, "encounter_id", visit)
        visit.start, visit.class_code, visit.end = ev.at, ev.class_code, ev.end
        visit.provider, visit.based_on = ev.provider, ev.based_on
    elif isinstance(ev, HomeCareStarted):
        episode = records.find(facts.home_care, "episode_id", ev.episode_id)
        if episode is None:
            episode = HomeCare(episode_id=ev.episode_id, started_at=ev.at)
            facts.home_care.append(episode)
            records.added(facts.home_care, "episode_id", episode)
        episode.started_at, episode.care_type = ev.at, ev.care_type
    elif isinstance(ev, HomeCareEnded):
        episode = records.find(facts.home_care, "episode_id", ev.episode_id)
        if episode is None:
            return False
        episode.ended_at, episode.end_implied = ev.at, False
    elif isinstance(ev, EdArrived):
        visit = records.find(facts.ed_visits, "encounter_id", ev.encounter_id)
        if visit is None:
            visit = EdVisit(encounter_id=ev.encounter_id, arrived_at=ev.at)
            facts.ed_visits.append(visit)
            records.added(facts.ed_visits, "encounter_id", visit)
        visit.arrived_at, visit.hospital, visit.ward = ev.at, ev.hospital, ev.ward
        visit.based_on = ev.based_on
    elif isinstance(ev, EdDeparted):
        visit = records.find(facts.ed_visits, "encounter_id", ev.encounter_id)
        if visit is None or ev.at < visit.arrived_at:
            return False
        visit.departed_at, visit.departure_implied = ev.at, False
        visit.reported_admitted = ev.admitted
        visit.disposition = ev.disposition
    elif isinstance(ev, PatientAdmitted):
        _admit(facts, ev, records)
    elif isinstance(ev, PatientTransferred):
        return _transfer(facts, ev, records)
    elif isinstance(ev, PatientDischarged):
        return _discharge(facts, ev, records)
    elif isinstance(ev, PatientDied):
        facts.died_at = ev.at if facts.died_at is None else min(facts.died_at, ev.at)
    elif isinstance(ev, PatientReplaced):
        facts.replaced_by = ev.replaced_by
    elif isinstance(ev, ResourceRetracted):
        _retract(facts, ev)
    else:
        return False
    return True


def settle(facts: Facts, rules: PathwayRules = DEFAULT_RULES) -> None:
    """Derive, in place, what follows from the records as a whole: what a death ended, which
    stay each ED visit led to, each referral's first hospital contact, each discharge's first
    community contact, and which stays are readmissions."""
    # Ends that other records imply are recomputed from scratch each time, so that they do not
    # depend on what was known when they were first made.
    for stay in facts.stays:
        if stay.ended_by in IMPLIED_ENDS:
            stay.discharged_at = stay.disposition = stay.ended_by = None
            _normalise_spells(stay)
    for visit in facts.ed_visits:
        if visit.departure_implied:
            visit.departed_at, visit.departure_implied = None, False
    for episode in facts.home_care:
        if episode.end_implied:
            episode.ended_at, episode.end_implied = None, False

    _merge_movements(facts)
    died = facts.died_at
    stays = sorted(facts.stays, key=lambda s: (s.admitted_at, s.stay_id))
    # A patient is in one stay at a time: the next admission, or death, ends a stay still open.
    for i, stay in enumerate(stays):
        if not stay.is_open:
            continue
        nxt = stays[i + 1].admitted_at if i + 1 < len(stays) else None
        if died is not None and stay.admitted_at <= died and (nxt is None or died <= nxt):
            _close_stay(stay, died, "death", "exp")
        elif nxt is not None:
            _close_stay(stay, nxt, "next_admission", None)
    if died is not None:
        for visit in facts.ed_visits:
            if visit.is_open and visit.arrived_at <= died:
                visit.departed_at, visit.departure_implied = died, True
        for episode in facts.home_care:
            if episode.is_open and episode.started_at <= died:
                episode.ended_at, episode.end_implied = died, True

    # A stay's partOf that names one of the patient's ED visits links the two; a stay that is
    # part of no other encounter (or of itself) is linked to the ED visit of its hospital that it
    # starts during, or soon after.
    named = {s.from_ed_encounter: s for s in stays if s.from_ed_encounter}
    unlinked = [s for s in stays if s.from_ed_encounter in (None, s.stay_id)]
    claimed: set[str] = set()
    for visit in sorted(facts.ed_visits, key=lambda v: (v.arrived_at, v.encounter_id)):
        led_to: Stay | None = named.get(visit.encounter_id)
        if led_to is None:
            limit = (
                visit.arrived_at + rules.ed_open_link
                if visit.departed_at is None
                else visit.departed_at + rules.ed_admission_link
            )
            led_to = next(
                (
                    s
                    for s in unlinked
                    if visit.arrived_at <= s.admitted_at <= limit
                    and s.stay_id not in claimed
                    and (visit.hospital is None or s.hospital in (None, visit.hospital))
                ),
                None,
            )
        visit.stay_id = led_to.stay_id if led_to is not None else None
        visit.admitted = visit.reported_admitted or led_to is not None
        if led_to is not None:
            claimed.add(led_to.stay_id)

    # A hospital contact: an ED arrival, an admission, or anything that answers a referral.
    hospital: list[tuple[datetime, str, str | None]] = sorted(
        [(v.arrived_at, v.encounter_id, v.based_on) for v in facts.ed_visits]
        + [(s.admitted_at, s.stay_id, s.based_on) for s in facts.stays]
        + [(v.start, v.encounter_id, v.based_on) for v in facts.community_visits if v.based_on]
        + [
            (a.start, a.appointment_id, a.based_on)
            for a in facts.appointments
            if a.based_on and a.status == "fulfilled" and a.start is not None
        ]
    )
    for ref in facts.referrals:
        answer = next((c for c in hospital if c[2] == ref.referral_id or c[0] >= ref.sent_at), None)
        ref.contact_at, ref.contact_id = (answer[0], answer[1]) if answer else (None, None)

    # A community contact: a visit, a referral written (the GP saw the patient), home care
    # starting, an appointment kept.
    community = sorted(
        [v.start for v in facts.community_visits]
        + [r.sent_at for r in facts.referrals]
        + [e.started_at for e in facts.home_care]
        + [a.start for a in facts.appointments if a.status == "fulfilled" and a.start is not None]
    )
    for stay in stays:
        stay.followed_up_at = None
        end = stay.discharged_at
        if end is None or stay.ended_by != "discharge":
            continue
        if any(
            e.started_at <= end and (e.ended_at is None or e.ended_at > end)
            for e in facts.home_care
        ):
            # Home care that goes on after the discharge is the follow-up.
            stay.followed_up_at = end
            continue
        i = bisect.bisect_left(community, end)
        stay.followed_up_at = community[i] if i < len(community) else None

    discharges = sorted(
        (s.discharged_at, s.stay_id, s)
        for s in stays
        if s.discharged_at is not None and s.ended_by == "discharge" and s.disposition != "exp"
    )
    ends = [d[0] for d in discharges]
    for stay in stays:
        stay.readmission_of = None
        i = bisect.bisect_right(ends, stay.admitted_at) - 1
        while i >= 0 and discharges[i][2] is stay:
            i -= 1
        if i < 0:
            continue
        previous = discharges[i][2]
        if (
            previous.discharged_at is not None
            # A discharge to another hospital followed by an admission is a transfer.
            and previous.disposition not in TRANSFER_DISPOSITIONS
            and stay.admitted_at - previous.discharged_at <= rules.readmission
        ):
            stay.readmission_of = previous.stay_id


def _merge_movements(facts: Facts) -> None:
    """Make each stay that is part of another of the patient's stays a movement of it: its
    places become spells of that stay, and it is no stay of its own.

    FR Core (and other national profiles) send a venue as one inpatient Encounter and each
    movement inside it (a ward, then another) as an Encounter whose `partOf` names the venue's.
    A movement of a movement belongs to the venue at the top; a cycle of partOf is left as it
    is. A movement whose venue has not arrived yet is a stay until it does."""
    by_id = {s.stay_id: s for s in facts.stays}
    venue_of = {s.stay_id: v for s in facts.stays if (v := _venue(s, by_id)) is not None}
    if not venue_of:
        return
    for stay in sorted((by_id[sid] for sid in venue_of), key=lambda s: (s.admitted_at, s.stay_id)):
        venue = venue_of[stay.stay_id]
        end = venue.discharged_at
        spells = [
            LocationSpell(
                start=max(spell.start, venue.admitted_at),
                location=spell.location,
                ward=spell.ward,
                bed=spell.bed,
                until=spell.end,
            )
            for spell in stay.locations
            if (end is None or spell.start < end) and (spell.location or spell.ward or spell.bed)
        ]
        starts = {spell.start for spell in spells}
        venue.locations = [s for s in venue.locations if s.start not in starts] + spells
        _normalise_spells(venue)
    facts.stays = [s for s in facts.stays if s.stay_id not in venue_of]


def _parent(stay: Stay, by_id: Mapping[str, Stay]) -> Stay | None:
    ref = stay.from_ed_encounter
    return None if ref is None or ref == stay.stay_id else by_id.get(ref)


def _venue(stay: Stay, by_id: Mapping[str, Stay]) -> Stay | None:
    """The stay at the top of `stay`'s chain of partOf (None: no parent stay, or a cycle)."""
    seen = {stay.stay_id}
    top = _parent(stay, by_id)
    while top is not None:
        if top.stay_id in seen:
            return None
        seen.add(top.stay_id)
        parent = _parent(top, by_id)
        if parent is None:
            return top
        top = parent
    return None


RECORD_TIMES: dict[str, str] = {
    "stays": "admitted_at",
    "ed_visits": "arrived_at",
    "community_visits": "start",
    "referrals": "sent_at",
    "appointments": "booked_at",
    "home_care": "started_at",
}


def _trim(facts: Facts, rules: PathwayRules) -> None:
    """Put each list in (time, id) order, whatever order the records came in, and keep at most
    `max_records` of each, dropping the oldest closed ones."""
    for attr, id_attr in RECORD_LISTS.values():
        time_attr = RECORD_TIMES[attr]
        items = sorted(
            getattr(facts, attr), key=lambda r: (getattr(r, time_attr), getattr(r, id_attr))
        )
        setattr(facts, attr, items)
        if len(items) > rules.max_records:
            closed = [r for r in items if not getattr(r, "is_open", False)]
            drop = {id(r) for r in closed[: len(items) - rules.max_records]}
            setattr(facts, attr, [r for r in items if id(r) not in drop])


def copy_facts(facts: Facts) -> Facts:
    """A copy of `facts` that folding can change without touching the original."""
    stays = []
    for stay in facts.stays:
        clone = shallow_copy(stay)
        clone.locations = [shallow_copy(spell) for spell in stay.locations]
        stays.append(clone)
    return Facts(
        stays=stays,
        ed_visits=[shallow_copy(v) for v in facts.ed_visits],
        community_visits=[shallow_copy(v) for v in facts.community_visits],
        referrals=[shallow_copy(r) for r in facts.referrals],
        appointments=[shallow_copy(a) for a in facts.appointments],
        home_care=[shallow_copy(e) for e in facts.home_care],
        died_at=facts.died_at,
        replaced_by=facts.replaced_by,
    )


def replay(
    base: Facts, log: Iterable[PatientEvent], rules: PathwayRules = DEFAULT_RULES
) -> tuple[Facts, list[PatientEvent]]:
    """The facts that `log` (sorted) folds to over a copy of `base`, and the events that did
    not apply."""
    facts = copy_facts(base)
    records = _Records()
    rejected = [ev for ev in log if not fold(facts, ev, records)]
    _trim(facts, rules)
    settle(facts, rules)
    return facts, rejected


# --- Alerts --------------------------------------------------------------------------------------


def alert_id(kind: str, patient_id: str, subject_id: str) -> str:
    """Deterministic alert id: a replay raises the same id, the sink upserts one row."""
    return f"{kind}:{patient_id}:{subject_id}"


def _hours(delta: timedelta) -> float:
    return round(delta.total_seconds() / 3600, 2)


def evaluate_alerts(
    patient_id: str, facts: Facts, now: datetime, rules: PathwayRules = DEFAULT_RULES
) -> dict[str, Alert]:
    """The alerts whose condition holds at `now`, by id. A deceased patient has none."""
    if facts.died_at is not None and facts.died_at <= now:
        return {}
    found: list[Alert] = []

    def add(kind: AlertKind, subject: str, since: datetime, **details: Any) -> None:
        found.append(
            Alert(alert_id(kind, patient_id, subject), kind.value, subject, since, details)
        )

    for visit in facts.ed_visits:
        if visit.is_open and now - visit.arrived_at >= rules.ed_boarding:
            add(
                AlertKind.ED_BOARDING,
                visit.encounter_id,
                visit.arrived_at + rules.ed_boarding,
                arrived_at=visit.arrived_at.isoformat(),
                hours_in_ed=_hours(now - visit.arrived_at),
                admission_decided=visit.admitted,
                hospital=visit.hospital,
            )

    for ref in facts.referrals:
        if not ref.is_open:
            continue
        deadline = ref.sent_at + rules.referral_contact
        for appt in facts.appointments:
            if appt.based_on == ref.referral_id and appt.start is not None:
                deadline = max(deadline, appt.start + rules.appointment_grace)
        if now >= deadline:
            add(
                AlertKind.REFERRAL_NO_CONTACT,
                ref.referral_id,
                deadline,
                sent_at=ref.sent_at.isoformat(),
                days_waiting=round((now - ref.sent_at).total_seconds() / 86400, 1),
                requester=ref.requester,
                performer=ref.performer,
            )

    last = facts.last_stay()
    if (
        last is not None
        and last.discharged_at is not None
        and last.ended_by == "discharge"
        and last.disposition not in FOLLOW_UP_DISPOSITIONS_EXCLUDED
        and last.followed_up_at is None
    ):
        deadline = last.discharged_at + rules.follow_up
        for appt in facts.appointments:
            # A follow-up booked for after the discharge (often booked during the stay).
            if appt.start is not None and appt.start >= last.discharged_at:
                deadline = max(deadline, appt.start + rules.appointment_grace)
        if now >= deadline:
            add(
                AlertKind.NO_FOLLOW_UP,
                last.stay_id,
                deadline,
                discharged_at=last.discharged_at.isoformat(),
                days_since_discharge=round((now - last.discharged_at).total_seconds() / 86400, 1),
                disposition=last.disposition,
                hospital=last.hospital,
            )

    if (
        last is not None
        and last.readmission_of is not None
        and (
            last.is_open
            or (
                # The patient bounced back: keep it on the worklist until the community has seen
                # them after this stay too, for at most the readmission window.
                last.ended_by == "discharge"
                and last.discharged_at is not None
                and last.followed_up_at is None
                and now < last.discharged_at + rules.readmission
            )
        )
    ):
        previous = _find(facts.stays, "stay_id", last.readmission_of)
        add(
            AlertKind.READMISSION,
            last.stay_id,
            last.admitted_at,
            previous_stay=last.readmission_of,
            days_since_discharge=round(
                (last.admitted_at - previous.discharged_at).total_seconds() / 86400, 1
            )
            if previous is not None and previous.discharged_at is not None
            else None,
            hospital=last.hospital,
        )

    for stay in facts.stays:
        if not stay.is_open:
            continue
        threshold = rules.los_threshold(stay.service, stay.ward)
        if stay.los(now) > threshold:
            add(
                AlertKind.LONG_STAY,
                stay.stay_id,
                stay.admitted_at + threshold,
                los_hours=_hours(stay.los(now)),
                p90_hours=_hours(threshold),
                service=stay.service,
                ward=stay.ward,
                hospital=stay.hospital,
            )
    return {a.alert_id: a for a in found}


# --- The view: stage and place -------------------------------------------------------------------


def derive_stage(facts: Facts) -> tuple[Stage, datetime | None]:
    """The pathway stage the facts put the patient in, and since when."""
    if facts.died_at is not None:
        return Stage.DECEASED, facts.died_at
    open_ed = [v for v in facts.ed_visits if v.is_open]
    if open_ed:
        return Stage.IN_ED, min(v.arrived_at for v in open_ed)
    open_stays = facts.open_stays()
    if open_stays:
        return Stage.ADMITTED, max(s.admitted_at for s in open_stays)
    # Outside the hospital, the latest step wins; at the same instant, the one listed first.
    steps: list[tuple[datetime, int, Stage]] = []
    open_refs = [r.sent_at for r in facts.referrals if r.is_open]
    if open_refs:
        steps.append((max(open_refs), 0, Stage.REFERRED))
    open_care = [e.started_at for e in facts.home_care if e.is_open]
    last = facts.last_stay()
    if open_care:
        # Home care that went on through a stay resumes at its discharge.
        resumed = max(open_care)
        if last is not None and last.discharged_at is not None:
            resumed = max(resumed, last.discharged_at)
        steps.append((resumed, 1, Stage.HOME_CARE))
    if last is not None and last.discharged_at is not None:
        if last.followed_up_at is not None:
            steps.append((last.followed_up_at, 2, Stage.FOLLOWED_UP))
        elif last.ended_by == "discharge":
            steps.append((last.discharged_at, 3, Stage.DISCHARGED))
    if not steps:
        return Stage.COMMUNITY, None
    at, _, stage = max(steps, key=lambda s: (s[0], -s[1]))
    if stage is Stage.HOME_CARE:
        at = min(open_care)
    elif stage is Stage.REFERRED:
        at = min(open_refs)
    return stage, at


def _place(facts: Facts) -> tuple[str | None, str | None, str | None]:
    """(stay id, ward, bed) the patient holds: those of the latest open stay, if any."""
    open_stays = facts.open_stays()
    if not open_stays or facts.died_at is not None:
        return None, None, None
    stay = max(open_stays, key=lambda s: s.admitted_at)
    return stay.stay_id, stay.ward, stay.bed


# --- Transition ----------------------------------------------------------------------------------


def _records(facts: Facts) -> dict[tuple[str, str], Record]:
    out: dict[tuple[str, str], Record] = {}
    for kind, (attr, id_attr) in RECORD_LISTS.items():
        for record in getattr(facts, attr):
            out[(kind, getattr(record, id_attr))] = record
    return out


def _diff(old: PatientState, new: PatientState, removable: set[tuple[str, str]]) -> list[Output]:
    """Outputs that take the world from `old` to `new`."""
    pid = new.patient_id
    outputs: list[Output] = []
    before, after = _records(old.facts), _records(new.facts)
    for key, record in after.items():
        if key not in before or before[key] != record:
            outputs.append(RecordChanged(pid, key[0], key[1], record))
    for key in before:
        if key not in after and key in removable:
            outputs.append(RecordRemoved(pid, key[0], key[1]))
    if (old.ward, old.bed, old.stay_id) != (new.ward, new.bed, new.stay_id):
        at: datetime | None = new.clock
        if new.stay_id is not None:
            stay = _find(new.facts.stays, "stay_id", new.stay_id)
            if stay is not None and stay.locations:
                at = stay.locations[-1].start
        elif old.stay_id is not None:
            ended = _find(new.facts.stays, "stay_id", old.stay_id)
            if ended is not None and ended.discharged_at is not None:
                at = ended.discharged_at
        outputs.append(OccupancyChanged(pid, at, new.stay_id, old.ward, old.bed, new.ward, new.bed))
    if old.stage != new.stage:
        outputs.append(StageChanged(pid, new.stage_since, old.stage.value, new.stage.value))
    outputs.extend(_alert_diff(old, new))
    return outputs


def _alert_diff(old: PatientState, new: PatientState) -> list[Output]:
    outputs: list[Output] = []
    clock = new.clock or datetime.min.replace(tzinfo=UTC)
    for aid, alert in old.alerts.items():
        if aid not in new.alerts:
            outputs.append(AlertResolved(aid, alert.kind, new.patient_id, clock, alert.subject_id))
    for aid, alert in new.alerts.items():
        if aid not in old.alerts:
            outputs.append(
                AlertRaised(
                    aid, alert.kind, new.patient_id, alert.since, alert.subject_id, alert.details
                )
            )
    return outputs


def _derive(state: PatientState, facts: Facts, rules: PathwayRules) -> None:
    """Set, in place, the view of a state `transition` is making from its new facts."""
    state.stage, state.stage_since = derive_stage(facts)
    state.stay_id, state.ward, state.bed = _place(facts)
    state.facts = facts
    state.alerts = (
        evaluate_alerts(state.patient_id, facts, state.clock, rules) if state.clock else {}
    )


def _compact(state: PatientState, rules: PathwayRules) -> PatientState:
    """Fold into the base the resources whose events are all older than the horizon and that
    hold nothing open, so the log stays short."""
    if state.clock is None:
        return state
    cut = state.clock - rules.history_horizon
    facts = state.facts
    for stay in facts.open_stays():
        cut = min(cut, stay.admitted_at)
    for visit in facts.ed_visits:
        if visit.is_open:
            cut = min(cut, visit.arrived_at)
    for ref in facts.referrals:
        if ref.is_open:
            cut = min(cut, ref.sent_at)
    for episode in facts.home_care:
        if episode.is_open:
            cut = min(cut, episode.started_at)
    if all(ev.at >= cut for ev in state.log):
        # The usual case, and a cheap test: no event, so no resource, is older than the cut.
        return state
    latest: dict[str, datetime] = {}
    for ev in state.log:
        key = _resource_key(ev.source)
        if key not in latest or ev.at > latest[key]:
            latest[key] = ev.at
    old_keys = {key for key, at in latest.items() if at < cut}
    if not old_keys:
        return state
    old = [ev for ev in state.log if _resource_key(ev.source) in old_keys]
    retracted = {_resource_key(ev.source) for ev in old if isinstance(ev, ResourceRetracted)}
    compacted = shallow_copy(state)
    compacted.base, _ = replay(state.base, old, rules)
    compacted.base_until = max(cut, state.base_until) if state.base_until else cut
    compacted.log = [ev for ev in state.log if _resource_key(ev.source) not in old_keys]
    # A retraction's version stays known, so a repeat of the withdrawn version is ignored.
    compacted.versions = {
        k: v for k, v in state.versions.items() if k not in old_keys or k in retracted
    }
    return compacted


def _has_implied_ends(facts: Facts) -> bool:
    return (
        any(s.ended_by in IMPLIED_ENDS for s in facts.stays)
        or any(v.departure_implied for v in facts.ed_visits)
        or any(e.end_implied for e in facts.home_care)
    )


def transition(
    state: PatientState | None, event: PatientEvent, rules: PathwayRules = DEFAULT_RULES
) -> tuple[PatientState, list[Output]]:
    """Apply one canonical event to a patient's pathway state.

    Pure and total: it never raises on odd sequences (they come out as `EventIgnored`), never
    changes `state`, and reads no clock; time-based alerts are evaluated at the patient's clock,
    the latest event time seen (`check_timers` moves it on between events).
    """
    return _transition(state, event, rules, every_output=True)


def advance(
    state: PatientState | None, event: PatientEvent, rules: PathwayRules = DEFAULT_RULES
) -> tuple[PatientState, list[AlertRaised | AlertResolved]]:
    """`transition`'s state, with only its alert outputs (what the stream worker keeps): the
    records changed, the stage and the place are not compared, which is most of the cost of the
    outputs."""
    new, outputs = _transition(state, event, rules, every_output=False)
    return new, [o for o in outputs if isinstance(o, AlertRaised | AlertResolved)]


# A log at least this long is replayed once for all the late events of a batch (`advance_all`):
# replaying it at each of them made a patient with thousands of resources sent out of order
# stall the worker (every replay folds the whole log).
LATE_BATCH_LOG = 64


def advance_all(
    state: PatientState | None,
    events: Iterable[PatientEvent],
    rules: PathwayRules = DEFAULT_RULES,
    late_batch_log: int = LATE_BATCH_LOG,
) -> tuple[PatientState | None, list[AlertRaised | AlertResolved]]:
    """`advance` over `events` in turn, except that when a new resource comes out of order onto
    a log of at least `late_batch_log` events, it and the new resources after it are folded in
    together, with one replay. The state is the one `advance` one event at a time would give;
    the alerts raised and resolved in between are not reported (only the change over the lot)."""
    alerts: list[AlertRaised | AlertResolved] = []
    late: dict[str, list[PatientEvent]] = {}
    for event in events:
        if state is not None and (late or _late(state, event, late_batch_log)):
            if _joins(state, event, late):
                late.setdefault(_resource_key(event.source), []).append(event)
                continue
            state, more = _fold_late(state, late, rules)
            alerts.extend(more)
            late = {}
        state, more = advance(state, event, rules)
        alerts.extend(more)
    if late:
        assert state is not None
        state, more = _fold_late(state, late, rules)
        alerts.extend(more)
    return state, alerts


def _late(state: PatientState, event: PatientEvent, long_log: int) -> bool:
    """Whether `event` is a new resource that `advance` would fold by replaying a long log."""
    return (
        len(state.log) >= long_log
        and _joins(state, event, {})
        and (
            (bool(state.log) and event_order(event) <= event_order(state.log[-1]))
            or _has_implied_ends(state.facts)
        )
    )


def _joins(
    state: PatientState, event: PatientEvent, late: Mapping[str, list[PatientEvent]]
) -> bool:
    """Whether `event` can be folded with the `late` ones: a part of a resource the state has no
    version or pending part of, and the same version as the late parts of it if any."""
    if event.patient_id != state.patient_id or isinstance(event, ResourceRetracted):
        return False
    key = _resource_key(event.source)
    if key in state.versions or any(k.startswith(f"{key}@") for k in state.pending):
        return False
    parts = late.get(key)
    return parts is None or (
        parts[0].source.version == event.source.version and all(p.part != event.part for p in parts)
    )


def _fold_late(
    state: PatientState, late: Mapping[str, list[PatientEvent]], rules: PathwayRules
) -> tuple[PatientState, list[AlertRaised | AlertResolved]]:
    """Fold the complete versions of `late` into `state` with one replay; the parts of versions
    still incomplete go through `advance` (they wait in `pending`)."""
    complete = [parts for parts in late.values() if len(parts) >= max(parts[0].parts, 1)]
    alerts: list[AlertRaised | AlertResolved] = []
    if complete:
        new_events = [ev for parts in complete for ev in parts]
        log = sorted([*state.log, *new_events], key=event_order)
        facts, _ = replay(state.base, log, rules)
        new = shallow_copy(state)
        new.log = log
        new.versions = {
            **state.versions,
            **{_resource_key(p[0].source): p[0].source.version for p in complete},
        }
        new.clock = max([ev.at for ev in new_events] + ([state.clock] if state.clock else []))
        _derive(new, facts, rules)
        alerts = [o for o in _alert_diff(state, new) if isinstance(o, AlertRaised | AlertResolved)]
        state = _compact(new, rules)
    for parts in late.values():
        if len(parts) < max(parts[0].parts, 1):
            for ev in parts:
                state, more = advance(state, ev, rules)
                alerts.extend(more)
    return state, alerts


def _transition(
    state: PatientState | None, event: PatientEvent, rules: PathwayRules, every_output: bool
) -> tuple[PatientState, list[Output]]:
    if state is None:
        state = PatientState(patient_id=event.patient_id)
    if event.patient_id != state.patient_id:
        return state, [EventIgnored(state.patient_id, event.source, "event of another patient")]
    key = _resource_key(event.source)
    version = event.source.version
    current = state.versions.get(key)
    if current == version:
        return state, []
    if current is not None and is_older_version(version, current):
        return state, [
            EventIgnored(state.patient_id, event.source, f"older than version {current}")
        ]
    pending_key = f"{key}@{version}"
    parts = [*state.pending.get(pending_key, [])]
    if any(p.part == event.part for p in parts):
        return state, []
    parts.append(event)
    if len(parts) < max(event.parts, 1):
        pending = {**state.pending, pending_key: parts}
        if len(pending) > rules.max_records:
            # Halves of versions that never complete must not grow the state without end.
            pending = dict(list(pending.items())[-rules.max_records :])
        waiting = shallow_copy(state)
        waiting.pending = pending
        return waiting, []
    # Parts of this version, or of older ones, will never be needed; newer ones still will.
    pending = {
        k: v
        for k, v in state.pending.items()
        if not k.startswith(f"{key}@")
        or not (v[0].source.version == version or is_older_version(v[0].source.version, version))
    }

    new_events = [ev for ev in parts if not isinstance(ev, ResourceRetracted)]
    retracted = len(new_events) < len(parts)
    new_events.sort(key=event_order)
    appends = (
        not retracted
        and current is None
        and (not state.log or event_order(new_events[0]) > event_order(state.log[-1]))
        # An end that a death or the next admission implied has dropped the moves after it,
        # which the explicit end folded next may bring back: only a replay gives that.
        and not _has_implied_ends(state.facts)
    )
    times = [ev.at for ev in new_events]
    clock = max([*times, *([state.clock] if state.clock else [])], default=None)
    if appends:
        # In order and new: folding onto the current facts is what a replay would give.
        log = [*state.log, *new_events]
        facts = copy_facts(state.facts)
        rejected = [ev for ev in new_events if not fold(facts, ev)]
        _trim(facts, rules)
        settle(facts, rules)
    else:
        log = sorted(
            [ev for ev in state.log if _resource_key(ev.source) != key]
            + (parts if retracted else new_events),
            key=event_order,
        )
        facts, rejected = replay(state.base, log, rules)
    new = shallow_copy(state)
    new.log = log
    new.versions = {**state.versions, key: version}
    new.pending = pending
    new.clock = clock
    _derive(new, facts, rules)
    if not every_output:
        return _compact(new, rules), _alert_diff(state, new)
    removable = (
        {
            (kind, event.source.resource_id)
            for kind in RETRACTABLE.get(event.source.resource_type, ())
        }
        if retracted or current is not None
        else set()
    )
    outputs = _diff(state, new, removable)
    outputs.extend(
        EventIgnored(state.patient_id, ev.source, f"{ev.kind} does not apply here")
        for ev in rejected
        if _resource_key(ev.source) == key
    )
    return _compact(new, rules), outputs


def check_timers(
    state: PatientState, now: datetime, rules: PathwayRules = DEFAULT_RULES
) -> tuple[PatientState, list[Output]]:
    """Move the patient's clock to `now` (never back) and raise or resolve the time-based
    alerts (ED boarding, referral without contact, no follow-up, long stay).

    The agent calls it from a Faust timer with the stream time or the wall time.
    """
    if now.tzinfo is None:
        raise ValueError("check_timers needs a timezone-aware time")
    clock = max(now, state.clock) if state.clock else now
    if clock == state.clock:
        return state, []
    new = shallow_copy(state)
    new.clock = clock
    new.alerts = evaluate_alerts(state.patient_id, state.facts, clock, rules)
    if new.alerts.keys() == state.alerts.keys():
        return new, []
    return _compact(new, rules), _alert_diff(state, new)


def invariant_violations(state: PatientState) -> list[str]:
    """What is wrong with `state` (empty when the pathway invariants hold). For tests and logs."""
    problems: list[str] = []
    open_stays = state.facts.open_stays()
    holding = [s for s in state.facts.stays if s.bed is not None or s.ward is not None]
    if len(open_stays) > 1:
        problems.append(f"{len(open_stays)} open stays")
    if len([s for s in holding if s.bed is not None]) > 1:
        problems.append("more than one bed held")
    if any(not s.is_open for s in holding):
        problems.append("a closed stay holds a ward or bed")
    if state.bed is not None and state.stay_id is None:
        problems.append("a bed held outside a stay")
    if state.stay_id is None and (state.ward or state.bed):
        problems.append("a place held outside a stay")
    if state.stage is Stage.DECEASED and state.bed is not None:
        problems.append("a deceased patient holds a bed")
    for stay in state.facts.stays:
        if stay.discharged_at is not None and stay.discharged_at < stay.admitted_at:
            problems.append(f"stay {stay.stay_id} ends before it starts")
        for a, b in zip(stay.locations, stay.locations[1:], strict=False):
            if a.start > b.start:
                problems.append(f"stay {stay.stay_id} locations out of order")
    return problems


def output_to_json(output: Output) -> dict[str, Any]:
    """An output as JSON-able data with its `kind` (for the alerts/events topics and logs)."""
    data: dict[str, Any] = {"kind": type(output).__name__, **to_jsonable(output)}
    return data
