"""FHIR R4 resource (as JSON) → canonical pathway events. Pure: no I/O, no clock.

FHIR objects stop here. fhir.resources does not enforce code values, so the codes this
module relies on (Encounter.class, Encounter.status, …) are checked here. `docs/FHIR_PROFILE.md`
is the contract.

Every patient event of one resource version carries `part`/`parts`, so the pathway can apply a
new version of a resource as a whole (it replaces what the previous version said). A version that
no longer means anything on the pathway (cancelled, entered-in-error, revoked…) maps to one
`ResourceRetracted`, which withdraws what earlier versions said.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime, tzinfo
from typing import Any

from parcours.fhir_codes import (
    APPOINTMENT_STATUSES,
    ENCOUNTER_LOCATION_STATUSES,
    ENCOUNTER_STATUSES,
    EPISODE_OF_CARE_STATUSES,
    LOCATION_STATUSES,
    RESOURCE_TYPES,
    SERVICE_REQUEST_STATUSES,
    WITHDRAWN_IN_R4B,
    encounter_class,
)
from parcours.fhir_refs import FHIR_ID, pathway_patient, reference_to
from parcours.timeutil import (
    EARLIEST_CARE,
    LATEST_CARE,
    TimeFormatError,
    outside_care_years,
    parse_fhir,
)
from streams import StreamsError
from streams.core.events import (
    AppointmentBooked,
    CanonicalEvent,
    CommunityVisited,
    EdArrived,
    EdDeparted,
    EncounterRecorded,
    HomeCareEnded,
    HomeCareStarted,
    LocationRecorded,
    OrganizationRecorded,
    PatientAdmitted,
    PatientDied,
    PatientDischarged,
    PatientEvent,
    PatientReplaced,
    PatientTransferred,
    ReferralSent,
    ResourceRetracted,
    SourceRef,
    shallow_copy,
)

# FLD (field: a home or street contact by hospital staff) is a community contact too.
COMMUNITY_CLASSES = frozenset({"AMB", "HH", "VR", "FLD"})
# A pre-admission visit (PRENC) prepares a stay but is not one: recorded, nothing on the pathway.
NO_PATHWAY_CLASSES = frozenset({"PRENC"})
ED_CLASSES = frozenset({"EMER"})
# ACUTE/NONAC are inpatient specialisations of IMP; SS (short stay) and OBSENC (observation)
# occupy a bed too, so they count as stays.
INPATIENT_CLASSES = frozenset({"IMP", "ACUTE", "NONAC", "OBSENC", "SS"})
# Statuses of an encounter that took place (or is taking place).
ENCOUNTER_HAPPENED = frozenset({"arrived", "triaged", "in-progress", "onleave", "finished"})
# Only these are moves that happened; planned/reserved beds are not occupied yet.
LOCATION_ENTRY_OCCUPIED = frozenset({"active", "completed"})
SERVICE_REQUEST_SENT = frozenset({"active", "on-hold", "completed"})
APPOINTMENT_BOOKED = frozenset({"booked", "arrived", "fulfilled", "checked-in"})
EPISODE_STARTED = frozenset({"active", "onhold", "finished"})

# NUBC patient discharge status (what Synthea sends) → HL7 discharge-disposition codes, so the
# rules read one vocabulary. Codes not listed keep the form `nubc:<code>`.
NUBC_TO_HL7 = {
    "01": "home",
    "02": "hosp",
    "03": "snf",
    "04": "long",
    "05": "other-hcf",
    "06": "home",
    "07": "aadvice",
    "20": "exp",
    "40": "exp",
    "41": "exp",
    "42": "exp",
    "43": "hosp",
    "50": "hosp",
    "51": "hosp",
    "61": "snf",
    "62": "rehab",
    "63": "long",
    "64": "snf",
    "65": "psy",
    "66": "hosp",
    "70": "other-hcf",
}
HL7_DISCHARGE_SYSTEM = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
NUBC_SYSTEM = "http://www.nubc.org/patient-discharge"
DIED = "exp"

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class MappingError(StreamsError):
    """The resource cannot be turned into canonical events; the reason goes to the dead letters."""


# --- Small readers -------------------------------------------------------------------------------


# The zone in which `map_resource` reads a date without a time (the territory's).
_DATE_ZONE: ContextVar[tzinfo] = ContextVar("date_zone", default=UTC)


def parse_time(value: str | None) -> datetime | None:
    """A FHIR dateTime/instant as an aware datetime (`parcours.timeutil.parse_fhir`); a date-only
    value is its midnight in the zone `map_resource` was given. Raises MappingError on text that
    is not a FHIR date or time."""
    try:
        return parse_fhir(value, _DATE_ZONE.get())
    except TimeFormatError as exc:
        raise MappingError(str(exc)) from exc


def _time(resource: dict[str, Any], *path: str) -> datetime | None:
    """The time at `path` (e.g. "period", "start"), with the element named in errors."""
    node: Any = resource
    for name in path:
        node = node.get(name) if isinstance(node, dict) else None
    try:
        at = parse_time(node)
        # The year as written, as the gateway refuses it (`outside_care_years`); a time of
        # 2099 with an offset west of UTC is an instant of 2100 and stays accepted.
        if at is not None and outside_care_years(node):
            raise MappingError(
                f"{node!r} is outside the years {EARLIEST_CARE.year}–{LATEST_CARE.year - 1}"
            )
    except MappingError as exc:
        raise MappingError(f"{resource.get('resourceType')}.{'.'.join(path)}: {exc}") from exc
    return at


def reference_id(ref: dict[str, Any] | None) -> str | None:
    """The id part of a reference: `Patient/123` → `123`, `urn:uuid:abc` → `abc`."""
    if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
        return None
    text: str = ref["reference"]
    return text.rsplit("/", 1)[-1].removeprefix("urn:uuid:")


def _patient_of(resource: dict[str, Any]) -> str:
    """The patient the resource is folded under (`parcours.fhir_refs.pathway_patient`, the rule
    the gateway refuses by); MappingError naming the element when it names none."""
    found = pathway_patient(resource)
    if found is None or found.patient_id is None:
        raise MappingError(
            found.problem if found else f"{resource.get('resourceType')} has no patient element"
        )
    return found.patient_id


def _first_code(concept: Any) -> str | None:
    """The first coding's code of a CodeableConcept (or of the first of a list of them)."""
    if isinstance(concept, list):
        concept = concept[0] if concept else None
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and coding.get("code"):
            return _code(coding["code"])
    return None


# The longest code kept (the width of the SQL columns that hold codes): a longer one is cut, not
# left to the database to refuse with the rest of its patient's rows.
CODE_MAX = 64


def _code(value: Any) -> str:
    return str(value)[:CODE_MAX]


# The longest name kept (the width of the SQL columns that hold names).
NAME_MAX = 256


def _name(value: Any) -> str | None:
    """A name as people read it, cut to what SQL keeps; None for anything but text."""
    return value.strip()[:NAME_MAX] or None if isinstance(value, str) else None


def _first_display(concept: Any) -> str | None:
    if isinstance(concept, list):
        concept = concept[0] if concept else None
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and coding.get("display"):
            return _name(str(coding["display"]))
    text = concept.get("text")
    return _name(str(text)) if text else None


def _first_reference(refs: Any, *types: str) -> str | None:
    if isinstance(refs, dict):
        refs = [refs]
    for ref in refs or []:
        found = reference_to(ref, *types)
        if found:
            return found
    return None


def _require_id(resource: dict[str, Any]) -> str:
    rid = resource.get("id")
    if not rid:
        raise MappingError(f"{resource.get('resourceType')}.id is missing")
    # The id becomes an SQL key and is shown on the dashboard: what the gateway accepts only.
    if not isinstance(rid, str) or not FHIR_ID.match(rid):
        raise MappingError(
            f"{resource.get('resourceType')}.id {_shown(rid)} is not a FHIR id"
            " (1 to 64 letters, digits, '-' or '.')"
        )
    return rid


def _shown(value: Any) -> str:
    """`value` as a reason shows it: repr, control characters escaped, at most 80 characters."""
    text = ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _require_code(resource: dict[str, Any], element: str, allowed: frozenset[str]) -> str:
    value = resource.get(element)
    if value not in allowed:
        raise MappingError(
            f"{resource.get('resourceType')}.{element} {value!r} is not one of {sorted(allowed)}"
        )
    return str(value)


def source_ref(resource: dict[str, Any]) -> SourceRef:
    """(type, id, version): versionId, else meta.lastUpdated, else a content hash."""
    meta = resource.get("meta") or {}
    version = meta.get("versionId") or meta.get("lastUpdated")
    if not version:
        digest = hashlib.sha256(json.dumps(resource, sort_keys=True).encode()).hexdigest()
        version = f"sha256:{digest[:16]}"
    return SourceRef(resource.get("resourceType", "?"), str(resource.get("id", "?")), str(version))


def discharge_disposition(hospitalization: Any) -> str | None:
    """The discharge disposition as an HL7 discharge-disposition code (NUBC codes translated)."""
    if not isinstance(hospitalization, dict):
        return None
    concept = hospitalization.get("dischargeDisposition")
    if not isinstance(concept, dict):
        return None
    codings = [c for c in concept.get("coding") or [] if isinstance(c, dict) and c.get("code")]
    for coding in codings:
        if coding.get("system") == HL7_DISCHARGE_SYSTEM:
            return _code(coding["code"])
    for coding in codings:
        if coding.get("system") == NUBC_SYSTEM:
            code = str(coding["code"])
            return NUBC_TO_HL7.get(code) or _code(f"nubc:{code}")
    return _code(codings[0]["code"]) if codings else None


def _numbered(events: list[PatientEvent]) -> list[CanonicalEvent]:
    """Stamp `part`/`parts` so the pathway applies one resource version as a whole."""
    n = len(events)
    stamped: list[CanonicalEvent] = []
    for i, ev in enumerate(events, start=1):
        # `dataclasses.replace` here cost more than mapping the resource did.
        stamped.append(ev if ev.part == i and ev.parts == n else shallow_copy(ev, part=i, parts=n))
    return stamped


def _retracted(patient: str, at: datetime | None, src: SourceRef, reason: str) -> PatientEvent:
    return ResourceRetracted(patient_id=patient, at=at or EPOCH, source=src, reason=reason)


# --- Encounter -----------------------------------------------------------------------------------


# The most moves one Encounter may give. The pathway places each move among the stay's others
# (a stay of n moves costs about n² steps, every version of it), and no stay moves that often:
# one with more is a feed's mistake, and would hold the worker for minutes.
MAX_MOVES = 1000


@dataclasses.dataclass(frozen=True)
class _Move:
    at: datetime
    location: str
    ward: str | None
    bed: str | None
    until: datetime | None


def _moves(resource: dict[str, Any], start: datetime) -> list[_Move]:
    """Occupied `Encounter.location[]` entries as moves, in time order.

    Entries that start at the same time are one move (a ward entry and a bed entry side by side);
    an entry without a period starts with the encounter.
    """
    grouped: dict[datetime, dict[str, Any]] = {}
    for i, entry in enumerate(resource.get("location") or []):
        if not isinstance(entry, dict):
            raise MappingError(f"Encounter.location[{i}] is not an object")
        status = entry.get("status", "active")
        if status not in ENCOUNTER_LOCATION_STATUSES:
            raise MappingError(f"Encounter.location[{i}].status {status!r} is not an R4 code")
        if status not in LOCATION_ENTRY_OCCUPIED:
            continue
        loc = reference_to(entry.get("location"), "Location")
        if not loc:
            # A place not known yet (a reference by identifier, or one the gateway could not
            # resolve) must not drop the visit or the stay: it is counted where the hospital is
            # known, and its place reads "not yet known".
            continue
        at = _time(entry, "period", "start") or start
        until = _time(entry, "period", "end")
        kind = _first_code(entry.get("physicalType"))
        slot = grouped.setdefault(at, {"ward": None, "bed": None, "other": None, "until": until})
        if kind == "bd":
            slot["bed"] = loc
        elif kind == "wa":
            slot["ward"] = loc
        else:
            slot["other"] = slot["other"] or loc
        if until is not None and (slot["until"] is None or until > slot["until"]):
            slot["until"] = until
    if len(grouped) > MAX_MOVES:
        raise MappingError(
            f"Encounter.location holds {len(grouped)} moves (entries active or completed, by"
            f" start); a stay is read with at most {MAX_MOVES}"
        )
    moves = []
    for at in sorted(grouped):
        slot = grouped[at]
        location = slot["bed"] or slot["other"] or slot["ward"]
        moves.append(_Move(at, location, slot["ward"], slot["bed"], slot["until"]))
    return moves


def map_encounter(resource: dict[str, Any]) -> list[CanonicalEvent]:
    """An Encounter → EncounterRecorded, plus the pathway events its class and status say.

    - AMB/HH/VR: CommunityVisited at the start.
    - EMER: EdArrived at the start; EdDeparted at the end once finished. One EMER resource cannot
      tell whether a stay followed, so `admitted` is True only when the disposition says the
      patient went to a ward of this stay's hospital; the pathway links an ED visit to the stay
      that starts during it or shortly after (`PathwayRules.ed_admission_link`).
    - IMP (and other inpatient classes): PatientAdmitted at the start (the place entered last by
      then), one PatientTransferred per later move, PatientDischarged at the end once finished.
      When `classHistory` shows an EMER period first, that part also gives EdArrived and
      EdDeparted(admitted=True) with the same id, and the stay starts where the EMER period ends.
    - Moves: `location[]` entries with status active or completed; entries that start together
      (a ward and a bed) are one move; `physicalType` `bd`/`wa` says which is the bed and the ward,
      an entry without it is taken as the bed.
    - Disposition `exp` (died): PatientDied at the end.
    - cancelled, entered-in-error, planned, unknown: ResourceRetracted (it did not happen).
    """
    enc_id = _require_id(resource)
    patient = _patient_of(resource)
    class_code = encounter_class(resource.get("class"))
    if class_code is None:
        raise MappingError(
            f"Encounter.class.code {(resource.get('class') or {}).get('code')!r} is not an "
            "R4 ActEncounterCode (nor an HL7 v2 patient class)"
        )
    status = resource.get("status")
    if status not in ENCOUNTER_STATUSES:
        raise MappingError(f"Encounter.status {status!r} is not an R4 encounter status")
    src = source_ref(resource)
    start = _time(resource, "period", "start")
    end = _time(resource, "period", "end")
    provider = reference_to(resource.get("serviceProvider"), "Organization")
    recorded = EncounterRecorded(
        patient_id=patient,
        encounter_id=enc_id,
        class_code=class_code,
        status=status,
        start=start,
        end=end,
        service_provider=provider,
        source=src,
    )
    if status not in ENCOUNTER_HAPPENED:
        at = start or _time(resource, "meta", "lastUpdated")
        return [recorded, *_numbered([_retracted(patient, at, src, f"Encounter.status {status}")])]
    history = _status_history(resource)
    if start is None:
        # An ADT feed may give the arrival only in statusHistory (arrived, triaged…).
        start = min((b for st, b, _ in history if st in ENCOUNTER_HAPPENED), default=None)
    if start is None:
        raise MappingError(f"Encounter.period.start is missing on a {status} encounter")
    finished = status == "finished"
    if finished and end is None:
        # Else when the encounter became finished, or the end of its last period before that.
        end = next((b for st, b, _ in history if st == "finished"), None) or max(
            (e for _, _, e in history if e is not None), default=None
        )
    if finished and end is None:
        # Some ADT feeds send the discharge without its time; the version's meta.lastUpdated is
        # when the source recorded it, the best time there is. Without it the end is unknown.
        end = _time(resource, "meta", "lastUpdated")
        if end is None:
            raise MappingError(
                "Encounter.period.end is missing on a finished encounter (and no meta.lastUpdated)"
            )
    if end is not None and end < start:
        raise MappingError("Encounter.period.end is before period.start")
    disposition = discharge_disposition(resource.get("hospitalization"))
    based_on = _first_reference(resource.get("basedOn"), "ServiceRequest")
    events: list[PatientEvent] = []
    if class_code in NO_PATHWAY_CLASSES:
        return [
            recorded,
            *_numbered([_retracted(patient, start, src, f"Encounter.class {class_code}")]),
        ]
    if class_code in COMMUNITY_CLASSES:
        events.append(
            CommunityVisited(
                patient_id=patient,
                at=start,
                source=src,
                encounter_id=enc_id,
                class_code=class_code,
                end=end if finished else None,
                provider=provider,
                based_on=based_on,
            )
        )
    elif class_code in ED_CLASSES:
        moves = _moves(resource, start)
        events.append(
            EdArrived(
                patient_id=patient,
                at=start,
                source=src,
                encounter_id=enc_id,
                hospital=provider,
                ward=(moves[0].ward or moves[0].location) if moves else None,
                based_on=based_on,
            )
        )
        if finished and end is not None:
            events.append(
                EdDeparted(
                    patient_id=patient,
                    at=end,
                    source=src,
                    encounter_id=enc_id,
                    admitted=False,
                    disposition=disposition,
                )
            )
    else:
        ed_part = _ed_class_history(resource, start, end)
        if ed_part is not None:
            # One Encounter that began as EMER and became IMP (classHistory): its ED part is an
            # ED visit of the same id, which ends where the stay begins.
            ed_start, start = ed_part
            events.append(
                EdArrived(
                    patient_id=patient,
                    at=ed_start,
                    source=src,
                    encounter_id=enc_id,
                    hospital=provider,
                    based_on=based_on,
                )
            )
            events.append(
                EdDeparted(
                    patient_id=patient, at=start, source=src, encounter_id=enc_id, admitted=True
                )
            )
        events.extend(_inpatient_events(resource, patient, src, enc_id, start, provider))
        if finished and end is not None:
            events.append(
                PatientDischarged(
                    patient_id=patient, at=end, source=src, stay_id=enc_id, disposition=disposition
                )
            )
    if disposition == DIED and finished and end is not None:
        events.append(PatientDied(patient_id=patient, at=end, source=src))
    return [recorded, *_numbered(events)]


def _status_history(
    resource: dict[str, Any],
) -> list[tuple[str, datetime, datetime | None]]:
    """(status, start, end) of each `statusHistory` entry with a start, in time order."""
    out = []
    for i, entry in enumerate(resource.get("statusHistory") or []):
        if not isinstance(entry, dict):
            raise MappingError(f"Encounter.statusHistory[{i}] is not an object")
        begun = _time(entry, "period", "start")
        if begun is not None and isinstance(entry.get("status"), str):
            out.append((entry["status"], begun, _time(entry, "period", "end")))
    return sorted(out, key=lambda h: h[1])


def _ed_class_history(
    resource: dict[str, Any], start: datetime, end: datetime | None
) -> tuple[datetime, datetime] | None:
    """(ED arrival, admission) when `classHistory` shows the encounter was EMER before it became
    inpatient; None otherwise. The admission is the end of the EMER period, else the start of the
    first inpatient period after it."""
    ed_start: datetime | None = None
    ed_end: datetime | None = None
    inpatient_starts: list[datetime] = []
    for i, entry in enumerate(resource.get("classHistory") or []):
        if not isinstance(entry, dict):
            raise MappingError(f"Encounter.classHistory[{i}] is not an object")
        code = encounter_class(entry.get("class"))
        period_start = _time(entry, "period", "start")
        if code in ED_CLASSES and period_start is not None:
            ed_start = period_start if ed_start is None else min(ed_start, period_start)
            period_end = _time(entry, "period", "end")
            if period_end is not None:
                ed_end = period_end if ed_end is None else max(ed_end, period_end)
        elif code in INPATIENT_CLASSES and period_start is not None:
            inpatient_starts.append(period_start)
    if ed_start is None:
        return None
    admitted = ed_end or min((t for t in inpatient_starts if t >= ed_start), default=None)
    if admitted is None or admitted < ed_start or (end is not None and admitted > end):
        return None
    return ed_start, admitted


def _inpatient_events(
    resource: dict[str, Any],
    patient: str,
    src: SourceRef,
    enc_id: str,
    start: datetime,
    provider: str | None,
) -> list[PatientEvent]:
    moves = _moves(resource, start)
    hospitalization = resource.get("hospitalization")
    admit_source = (
        _first_code(hospitalization.get("admitSource"))
        if isinstance(hospitalization, dict)
        else None
    )
    service = _first_code(resource.get("serviceType"))
    # The place at admission is the last one entered by then (earlier ones belong to the ED).
    before = [m for m in moves if m.at <= start]
    first = before[-1] if before else None
    events: list[PatientEvent] = [
        PatientAdmitted(
            patient_id=patient,
            at=start,
            source=src,
            stay_id=enc_id,
            hospital=provider,
            ward=first.ward if first else None,
            bed=(first.bed or (first.location if first.ward is None else None)) if first else None,
            admit_source=admit_source,
            from_ed_encounter=reference_to(resource.get("partOf"), "Encounter"),
            service=service,
            based_on=_first_reference(resource.get("basedOn"), "ServiceRequest"),
        )
    ]
    for move in moves:
        if move.at <= start:
            continue
        events.append(
            PatientTransferred(
                patient_id=patient,
                at=move.at,
                source=src,
                stay_id=enc_id,
                location=move.location,
                ward=move.ward,
                bed=move.bed or (move.location if move.ward is None else None),
                until=move.until,
                service=service,
            )
        )
    return events


# --- Community resources -------------------------------------------------------------------------


def map_service_request(resource: dict[str, Any]) -> list[CanonicalEvent]:
    """A ServiceRequest from a community practitioner → ReferralSent (authoredOn).

    A request without a Practitioner/PractitionerRole requester is not a community referral and
    maps to nothing. draft, revoked, entered-in-error, unknown → ResourceRetracted.
    """
    sr_id = _require_id(resource)
    patient = _patient_of(resource)
    status = _require_code(resource, "status", SERVICE_REQUEST_STATUSES)
    requester = reference_to(resource.get("requester"), "Practitioner", "PractitionerRole")
    if requester is None:
        return []
    src = source_ref(resource)
    at = (
        _time(resource, "authoredOn")
        or _time(resource, "occurrenceDateTime")
        or _time(resource, "meta", "lastUpdated")
    )
    if status not in SERVICE_REQUEST_SENT:
        return _numbered([_retracted(patient, at, src, f"ServiceRequest.status {status}")])
    if at is None:
        raise MappingError("ServiceRequest.authoredOn is missing (and no meta.lastUpdated)")
    return _numbered(
        [
            ReferralSent(
                patient_id=patient,
                at=at,
                source=src,
                referral_id=sr_id,
                requester=requester,
                performer=_first_reference(
                    resource.get("performer"),
                    "Organization",
                    "Practitioner",
                    "PractitionerRole",
                    "HealthcareService",
                ),
                status=status,
            )
        ]
    )


def map_appointment(resource: dict[str, Any]) -> list[CanonicalEvent]:
    """A booked Appointment → AppointmentBooked; `at` is when it was booked (created). Its
    service is the first `serviceType` code, its place the first Location participant.

    proposed, pending, waitlist, cancelled, noshow, entered-in-error → ResourceRetracted.
    """
    appt_id = _require_id(resource)
    status = _require_code(resource, "status", APPOINTMENT_STATUSES)
    patient = _patient_of(resource)
    location = None
    for participant in resource.get("participant") or []:
        if isinstance(participant, dict):
            location = location or reference_to(participant.get("actor"), "Location")
    src = source_ref(resource)
    start = _time(resource, "start")
    at = _time(resource, "created") or _time(resource, "meta", "lastUpdated") or start
    if status not in APPOINTMENT_BOOKED:
        return _numbered([_retracted(patient, at, src, f"Appointment.status {status}")])
    if at is None:
        raise MappingError("Appointment has no created, meta.lastUpdated or start time")
    return _numbered(
        [
            AppointmentBooked(
                patient_id=patient,
                at=at,
                source=src,
                appointment_id=appt_id,
                start=start,
                status=status,
                based_on=_first_reference(resource.get("basedOn"), "ServiceRequest"),
                service=_first_code(resource.get("serviceType")),
                location=location,
            )
        ]
    )


def map_episode_of_care(resource: dict[str, Any]) -> list[CanonicalEvent]:
    """An EpisodeOfCare (home care) → HomeCareStarted, and HomeCareEnded once finished."""
    episode_id = _require_id(resource)
    patient = _patient_of(resource)
    status = _require_code(resource, "status", EPISODE_OF_CARE_STATUSES)
    src = source_ref(resource)
    start = _time(resource, "period", "start")
    end = _time(resource, "period", "end")
    if status not in EPISODE_STARTED:
        at = start or _time(resource, "meta", "lastUpdated")
        return _numbered([_retracted(patient, at, src, f"EpisodeOfCare.status {status}")])
    if start is None:
        raise MappingError(f"EpisodeOfCare.period.start is missing on a {status} episode")
    events: list[PatientEvent] = [
        HomeCareStarted(
            patient_id=patient,
            at=start,
            source=src,
            episode_id=episode_id,
            care_type=_first_code(resource.get("type")),
        )
    ]
    if status == "finished":
        if end is None:
            raise MappingError("EpisodeOfCare.period.end is missing on a finished episode")
        if end < start:
            raise MappingError("EpisodeOfCare.period.end is before period.start")
        events.append(HomeCareEnded(patient_id=patient, at=end, source=src, episode_id=episode_id))
    return _numbered(events)


def map_patient(resource: dict[str, Any]) -> list[CanonicalEvent]:
    """A Patient → PatientDied when deceased; PatientReplaced when its `link` says another Patient
    replaced it (a merge); nothing otherwise.

    `deceasedBoolean: true` carries no time: meta.lastUpdated stands for it. Without one, a
    record another replaced still gives its merge (its pathway moves to the survivor, whose own
    record says the death); any other is dead-lettered.
    """
    patient = _require_id(resource)
    src = source_ref(resource)
    replaced_by = next(
        (
            reference_to(link.get("other"), "Patient")
            for link in resource.get("link") or []
            if isinstance(link, dict) and link.get("type") == "replaced-by"
        ),
        None,
    )
    merged = bool(replaced_by) and replaced_by != patient
    died_at = _time(resource, "deceasedDateTime")
    if died_at is None and resource.get("deceasedBoolean") is True:
        died_at = _time(resource, "meta", "lastUpdated")
        if died_at is None and not merged:
            raise MappingError(
                "Patient.deceasedBoolean is true but no time is known (meta.lastUpdated)"
            )
    events: list[PatientEvent] = []
    if died_at is not None:
        events.append(PatientDied(patient_id=patient, at=died_at, source=src))
    if merged and replaced_by:
        # A merge: this record's pathway moves to the Patient that replaced it.
        at = _time(resource, "meta", "lastUpdated") or EPOCH
        events.append(
            PatientReplaced(patient_id=patient, at=at, source=src, replaced_by=replaced_by)
        )
    return _numbered(events)


def map_location(resource: dict[str, Any]) -> list[CanonicalEvent]:
    """A Location (hospital, ward, bed) → LocationRecorded, keyed by `Location/<id>`."""
    loc_id = _require_id(resource)
    status = resource.get("status", "active")
    if status not in LOCATION_STATUSES:
        raise MappingError(f"Location.status {status!r} is not one of {sorted(LOCATION_STATUSES)}")
    service = resource.get("type")
    return [
        LocationRecorded(
            location_id=loc_id,
            name=_name(resource.get("name")),
            # Location types are codes of two or three letters (si, wa, ro, bd…).
            physical_type=(_first_code(resource.get("physicalType")) or "")[:16] or None,
            part_of=reference_to(resource.get("partOf"), "Location"),
            status=status,
            service_code=_first_code(service),
            service_name=_first_display(service),
            organization=reference_to(resource.get("managingOrganization"), "Organization"),
            source=source_ref(resource),
            extra={"operational_status": (resource.get("operationalStatus") or {}).get("code")}
            if resource.get("operationalStatus")
            else {},
        )
    ]


def map_organization(resource: dict[str, Any]) -> list[CanonicalEvent]:
    """An Organization → OrganizationRecorded (its id and name), keyed by `Organization/<id>`."""
    return [
        OrganizationRecorded(
            organization_id=_require_id(resource),
            name=_name(resource.get("name")),
            source=source_ref(resource),
        )
    ]


MAPPERS: dict[str, Callable[[dict[str, Any]], list[CanonicalEvent]]] = {
    "Encounter": map_encounter,
    "Location": map_location,
    "Organization": map_organization,
    "ServiceRequest": map_service_request,
    "Appointment": map_appointment,
    "EpisodeOfCare": map_episode_of_care,
    "Patient": map_patient,
}


def map_resource(resource: dict[str, Any], date_zone: tzinfo = UTC) -> list[CanonicalEvent]:
    """Any FHIR resource → canonical events (an empty list for R4 types with no pathway meaning).
    A date without a time (FHIR allows one in a dateTime) is its midnight in `date_zone`.

    Raises MappingError with a reason a person can act on when the resource cannot be mapped.
    """
    if not isinstance(resource, dict) or "resourceType" not in resource:
        raise MappingError("not a FHIR resource: resourceType is missing")
    rtype = resource["resourceType"]
    if not isinstance(rtype, str):
        raise MappingError(f"not a FHIR resource: resourceType {_shown(rtype)} is not a string")
    mapper = MAPPERS.get(rtype)
    if mapper is None:
        if rtype not in RESOURCE_TYPES and rtype not in WITHDRAWN_IN_R4B:
            raise MappingError(f"resourceType {_shown(rtype)} is not an R4 resource type")
        return []
    token = _DATE_ZONE.set(date_zone)
    try:
        events = mapper(resource)
        _check_storable(events, rtype)
        return events
    except (AttributeError, TypeError) as exc:
        # A malformed element (a string where FHIR has an object…) must dead-letter, not crash.
        raise MappingError(f"malformed {rtype}: {exc}") from exc
    finally:
        _DATE_ZONE.reset(token)


# The width of the SQL columns that hold ids and references. Codes and names are cut to their
# columns' widths on the way (`CODE_MAX`, `NAME_MAX`); the names are wider than an id.
STORED_ID_MAX = 128
_NAME_FIELDS = frozenset({"name", "service_name"})


def _check_storable(events: list[CanonicalEvent], rtype: str) -> None:
    """MappingError when an event holds text SQL cannot store: a NUL character (PostgreSQL's
    text refuses it) or an id wider than its column. Found here, the resource alone goes to
    the dead letters; found by the database, every message of its patient in the batch would."""
    for ev in events:
        for name, value in ev.__dict__.items():
            kind = value.__class__
            if kind is str:
                if len(value) > STORED_ID_MAX or "\x00" in value:
                    _check_text(rtype, name, value)
            elif kind is SourceRef:
                _check_text(rtype, "id", value.resource_id)
                _check_text(rtype, "version", value.version)
            elif kind is dict:
                for key, text in value.items():
                    if isinstance(text, str):
                        _check_text(rtype, key, text)


def _check_text(rtype: str, name: str, text: str) -> None:
    if "\x00" in text:
        raise MappingError(f"{rtype}: the {name} {_shown(text)} holds a NUL character (U+0000)")
    limit = NAME_MAX if name in _NAME_FIELDS else STORED_ID_MAX
    if len(text) > limit:
        raise MappingError(f"{rtype}: the {name} {_shown(text)} is longer than {limit} characters")


def patient_events(events: list[CanonicalEvent]) -> list[PatientEvent]:
    """The events of `events` that feed the pathway state machine."""
    return [ev for ev in events if isinstance(ev, PatientEvent)]
