"""Pathway state → SQL rows. Pure: it reads a `PatientState` and the alert outputs of a batch.

The rows are the *whole* derived state of the patient (every stay, period, visit, referral,
appointment), so the sink can replace what it held before; a replay that rebuilds the same state
writes the same rows. Alerts are the exception: a resolved alert leaves the state, so resolutions
come from the `AlertResolved` outputs, and alert rows are upserted, never deleted.

`row_changes` compares a patient's rows with those its previous state derived. With the digest
of those (`PatientRows.digest`, which the sink stores beside the rows), the sink knows when the
stored rows are exactly the previous ones, and then writes the changes without reading them back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

import orjson

from streams.core.pathway import AlertRaised, AlertResolved, PatientState, to_jsonable

# The tables of a patient's records, as `PatientRows` attributes, and the columns of their keys.
RECORD_KEYS: dict[str, tuple[str, ...]] = {
    "stays": ("stay_id",),
    "periods": ("stay_id", "seq"),
    "ed_visits": ("encounter_id",),
    "community_visits": ("encounter_id",),
    "referrals": ("referral_id",),
    "appointments": ("appointment_id",),
}
Key = tuple[Any, ...]


@dataclass
class RowChanges:
    """How a patient's records differ from those its previous state derived.

    `base` is the digest of the previous records (None when there was no previous state);
    per `RECORD_KEYS` attribute, `changed` holds the positions (in `PatientRows`) of the
    records that are new or differ, `gone` the keys of the previous records no longer
    derived."""

    base: int | None
    changed: dict[str, list[int]]
    gone: dict[str, list[Key]]


def _key_getter(columns: tuple[str, ...]) -> Callable[[dict[str, Any]], Key]:
    if len(columns) == 1:
        (column,) = columns
        return lambda row: (row[column],)
    return itemgetter(*columns)  # type: ignore[return-value]  # a tuple for several columns


# The key of a record, per `RECORD_KEYS` attribute.
KEY_OF: dict[str, Callable[[dict[str, Any]], Key]] = {
    attr: _key_getter(columns) for attr, columns in RECORD_KEYS.items()
}


@dataclass
class PatientRows:
    """Everything the SQL tables hold about one patient, derived from its pathway state.

    `periods` are `stay_locations` rows without `hospital_id/ward_id/bed_id`, which the sink
    resolves from the Location hierarchy (`hospital_hint` is the Encounter's serviceProvider).
    """

    patient_id: str
    state: dict[str, Any]
    last_event_at: datetime | None = None
    stays: list[dict[str, Any]] = field(default_factory=list)
    periods: list[dict[str, Any]] = field(default_factory=list)
    ed_visits: list[dict[str, Any]] = field(default_factory=list)
    community_visits: list[dict[str, Any]] = field(default_factory=list)
    referrals: list[dict[str, Any]] = field(default_factory=list)
    appointments: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    # Alerts raised in an earlier batch and resolved in this one: alert id → resolution time.
    resolutions: dict[str, datetime] = field(default_factory=dict)
    # `records_digest` of the records above, as derived (before the sink places the periods).
    digest: int | None = None
    # The records' changes since the previous state, when the fold knows it.
    changes: RowChanges | None = None


MESSAGES = {
    "ed_boarding": "In the ED for more than the boarding threshold",
    "referral_no_contact": "Community referral without hospital contact",
    "no_follow_up": "No community follow-up after discharge",
    "readmission": "Readmitted soon after a discharge",
    "long_stay": "Length of stay above the service's 90th percentile",
}


def alert_message(kind: str, details: dict[str, Any]) -> str:
    """A short sentence for people; the numbers stay in `details`."""
    return MESSAGES.get(kind, kind.replace("_", " ").capitalize())


def patient_rows(
    state: PatientState, alert_outputs: Iterable[AlertRaised | AlertResolved] = ()
) -> PatientRows:
    """The SQL rows of one patient, from its state and the alert outputs of this batch."""
    rows = PatientRows(patient_id=state.patient_id, state=state.view(), last_event_at=state.clock)
    if state.facts.replaced_by:
        rows.state = {**rows.state, "replaced_by": state.facts.replaced_by}
    _add_records(rows, state)
    _add_alerts(rows, state, alert_outputs)
    return rows


def records_digest(rows: PatientRows) -> int:
    """A 64-bit digest (signed, as SQL's BIGINT) of the records in `rows`."""
    data = orjson.dumps([getattr(rows, attr) for attr in RECORD_KEYS])
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


def row_changes(before: PatientState | None, after: PatientRows) -> RowChanges:
    """How `after`'s records differ from those the state `before` derived."""
    changed: dict[str, list[int]] = {attr: [] for attr in RECORD_KEYS}
    gone: dict[str, list[Key]] = {attr: [] for attr in RECORD_KEYS}
    if before is None:
        for attr in RECORD_KEYS:
            changed[attr] = list(range(len(getattr(after, attr))))
        return RowChanges(None, changed, gone)
    old = PatientRows(patient_id=before.patient_id, state={})
    _add_records(old, before)
    if old.digest == after.digest:
        return RowChanges(old.digest, changed, gone)
    for attr, key_of in KEY_OF.items():
        previous = {key_of(r): r for r in getattr(old, attr)}
        for i, row in enumerate(getattr(after, attr)):
            if previous.pop(key_of(row), None) != row:
                changed[attr].append(i)
        gone[attr] = list(previous)
    return RowChanges(old.digest, changed, gone)


def _add_records(rows: PatientRows, state: PatientState) -> None:
    """Fill in the records of `state` (none for a Patient merged into another: its stays and
    visits are that Patient's rows now) and their digest."""
    pid = state.patient_id
    facts = state.facts
    if facts.replaced_by:
        rows.digest = records_digest(rows)
        return
    # The ED visit each stay followed (`settle` links them).
    led_by = {v.stay_id: v.encounter_id for v in facts.ed_visits if v.stay_id}
    for stay in facts.stays:
        rows.stays.append(
            {
                "stay_id": stay.stay_id,
                "patient_id": pid,
                "hospital_id": stay.hospital,
                "admitted_at": stay.admitted_at,
                "discharged_at": stay.discharged_at,
                "disposition": stay.disposition,
                "admit_source": stay.admit_source,
                "from_ed_encounter": led_by.get(stay.stay_id),
                "los_hours": stay.los_hours,
            }
        )
        spells = stay.locations
        for seq, spell in enumerate(spells):
            last = seq == len(spells) - 1
            rows.periods.append(
                {
                    "stay_id": stay.stay_id,
                    "seq": seq,
                    "patient_id": pid,
                    # The sink resolves the hospital from the tree when the Encounter names none.
                    "hospital_id": stay.hospital,
                    "location_id": spell.bed or spell.location,
                    "ward_ref": spell.ward,
                    "start_at": spell.start,
                    "end_at": spell.end,
                    "discharged": last and stay.discharged_at is not None,
                }
            )
    for visit in facts.ed_visits:
        rows.ed_visits.append(
            {
                "encounter_id": visit.encounter_id,
                "patient_id": pid,
                "hospital_id": visit.hospital,
                "ward_id": visit.ward,
                "arrived_at": visit.arrived_at,
                "departed_at": visit.departed_at,
                "admitted": visit.admitted,
                "disposition": visit.disposition,
            }
        )
    for cv in facts.community_visits:
        rows.community_visits.append(
            {
                "encounter_id": cv.encounter_id,
                "patient_id": pid,
                "class_code": cv.class_code,
                "provider": cv.provider,
                "start_at": cv.start,
                "end_at": cv.end,
            }
        )
    for ref in facts.referrals:
        rows.referrals.append(
            {
                "referral_id": ref.referral_id,
                "patient_id": pid,
                "requester": ref.requester,
                "performer": ref.performer,
                "authored_at": ref.sent_at,
                "status": ref.status,
            }
        )
    performers = {ref.referral_id: ref.performer for ref in facts.referrals}
    for appt in facts.appointments:
        rows.appointments.append(
            {
                "appointment_id": appt.appointment_id,
                "patient_id": pid,
                "status": appt.status,
                "start_at": appt.start,
                "booked_at": appt.booked_at,
                "based_on": appt.based_on,
                # The hospital is the performer of the referral the appointment answers.
                "hospital_id": performers.get(appt.based_on) if appt.based_on else None,
                "service_code": appt.service,
                "location_id": appt.location,
            }
        )
    rows.digest = records_digest(rows)


def _add_alerts(
    rows: PatientRows, state: PatientState, alert_outputs: Iterable[AlertRaised | AlertResolved]
) -> None:
    pid = state.patient_id
    alerts: dict[str, dict[str, Any]] = {}
    resolved: dict[str, datetime] = {}
    for out in alert_outputs:
        if isinstance(out, AlertRaised):
            resolved.pop(out.alert_id, None)
            alerts[out.alert_id] = _alert_row(
                pid, out.alert_id, out.kind, out.at, out.subject_id, out.details
            )
        else:
            resolved[out.alert_id] = out.at
    for alert in state.alerts.values():
        alerts[alert.alert_id] = _alert_row(
            pid, alert.alert_id, alert.kind, alert.since, alert.subject_id, alert.details
        )
    for aid, at in resolved.items():
        if aid in alerts and aid not in state.alerts:
            alerts[aid].update(status="resolved", resolved_at=at)
    rows.alerts = list(alerts.values())
    # Resolutions of alerts raised in an earlier batch: the sink updates their status only.
    rows.resolutions = {aid: at for aid, at in resolved.items() if aid not in alerts}


def _alert_row(
    pid: str, aid: str, kind: str, since: datetime, subject: str, details: dict[str, Any]
) -> dict[str, Any]:
    return {
        "alert_id": aid,
        "alert_type": kind,
        "patient_id": pid,
        "unit_id": details.get("ward") or details.get("hospital"),
        "status": "open",
        "raised_at": since,
        "resolved_at": None,
        "message": alert_message(kind, details),
        "details": {"subject_id": subject, **to_jsonable(details)},
    }
