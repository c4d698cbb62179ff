"""A patient's rows: make `stays`, `stay_locations`, `ed_visits`, `community_visits`,
`referrals`, `appointments`, `pathway_states` and its alerts equal what its state derives, and
find the census hours that the change moves."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from parcours.db.bulk import bulk_delete, bulk_update, bulk_write, chunks, one_of, table_of
from parcours.db.pathway_models import (
    AlertRow,
    AppointmentRow,
    CommunityVisitRow,
    EdVisitRow,
    PathwayStateRow,
    ReferralRow,
    StayLocationRow,
    StayRow,
)
from streams.core.census import UNKNOWN_HOSPITAL
from streams.core.projection import PatientRows
from streams.sink.census import watermark
from streams.sink.rows import ALERT_COLUMNS, Window, as_utc, widen_window

# The tables that hold a patient's records: (model, `PatientRows` attribute, key columns).
PATIENT_TABLES: tuple[tuple[Any, str, tuple[str, ...]], ...] = (
    (StayRow, "stays", ("stay_id",)),
    (StayLocationRow, "periods", ("stay_id", "seq")),
    (EdVisitRow, "ed_visits", ("encounter_id",)),
    (CommunityVisitRow, "community_visits", ("encounter_id",)),
    (ReferralRow, "referrals", ("referral_id",)),
    (AppointmentRow, "appointments", ("appointment_id",)),
)


def _same_row(old: Any, new: Mapping[str, Any]) -> bool:
    """True when the stored row `old` already holds every value of `new`."""
    if old is None:
        return False
    for column, value in new.items():
        stored = getattr(old, column)
        if isinstance(stored, datetime):
            stored = as_utc(stored)
        if stored != value:
            return False
    return True


PLACE_FIELDS = ("hospital_id", "location_id", "ward_ref", "ward_id", "bed_id")


def _period_change(
    old: Any, new: Mapping[str, Any]
) -> list[tuple[str | None, datetime | None, datetime | None]]:
    """The spans (hospital, from, to) of the census that replacing the stored period `old` (None
    if there was none) by the row `new` changes; empty when nothing the census reads differs."""
    new_span = (new["hospital_id"], new["start_at"], new["end_at"] or new["start_at"])
    if old is None:
        return [new_span]
    same_place = all(getattr(old, f) == new[f] for f in PLACE_FIELDS)
    if not same_place or as_utc(old.start_at) != new["start_at"]:
        return [(old.hospital_id, old.start_at, old.end_at or old.start_at), new_span]
    ends = (as_utc(old.end_at), new["end_at"])
    if ends[0] == ends[1] and old.discharged == new["discharged"]:
        return []
    # Only the end moved (a discharge, the next move): the hours before it stay as they were.
    known = [e for e in ends if e is not None]
    return [(new["hospital_id"], min(known), max(known))]


def stored_rows(conn: Connection, ids: list[str]) -> dict[str, dict[tuple[Any, ...], Any]]:
    """The rows the patient tables hold for `ids`: table attribute → key → row (its columns as
    attributes)."""
    stored: dict[str, dict[tuple[Any, ...], Any]] = {}
    for model, attr, key in PATIENT_TABLES:
        table = table_of(model)
        found: dict[tuple[Any, ...], Any] = {}
        for part in chunks(ids):
            result = conn.execute(select(table).where(one_of(conn, table.c.patient_id, part)))
            names = list(result.keys())
            at = [names.index(k) for k in key]
            for r in result:
                # A namespace: the comparisons read every column of each row, and a SQLAlchemy
                # row's attributes cost a microsecond or two each.
                found[tuple(r[i] for i in at)] = SimpleNamespace(**dict(zip(names, r, strict=True)))
        stored[attr] = found
    return stored


def changed_windows(
    conn: Connection,
    patients: list[PatientRows],
    stored: Mapping[str, Mapping[tuple[Any, ...], Any]],
    windows: dict[str, Window],
) -> None:
    """Widen the windows by the hours that the patients' new rows change.

    Only the periods and ED visits that differ from the stored ones count, from the point
    where they differ: most of a batch adds a step at the end of a pathway (a discharge
    changes the hours from the discharge on, not the whole stay). A hospital whose rows
    change is also recomputed from its old watermark, up to which open periods were counted.
    """
    touched: set[str] = set()

    def widen(hospital: str | None, lo: datetime | None, hi: datetime | None) -> None:
        hospital = hospital or UNKNOWN_HOSPITAL
        touched.add(hospital)
        widen_window(windows, hospital, lo, hi)

    old_periods = dict(stored["periods"])
    for p in patients:
        for row in p.periods:
            old = old_periods.pop((row["stay_id"], row["seq"]), None)
            for hospital, lo, hi in _period_change(old, row):
                widen(hospital, lo, hi)
    for old in old_periods.values():
        widen(old.hospital_id, old.start_at, old.end_at or old.start_at)
    old_eds = dict(stored["ed_visits"])
    for p in patients:
        for row in p.ed_visits:
            was = old_eds.pop((row["encounter_id"],), None)
            now = (row["hospital_id"], row["ward_id"], row["arrived_at"], row["departed_at"])
            if was is not None and now == (
                was.hospital_id,
                was.ward_id,
                as_utc(was.arrived_at),
                as_utc(was.departed_at),
            ):
                continue
            # The visit occupies the ED from its arrival to its departure.
            widen(row["hospital_id"], row["arrived_at"], row["departed_at"])
            if was is not None:
                widen(was.hospital_id, was.arrived_at, was.departed_at)
    for was in old_eds.values():
        widen(was.hospital_id, was.arrived_at, was.departed_at)
    for hospital in touched:
        mark = watermark(conn, hospital)
        if mark is not None:
            widen_window(windows, hospital, mark, None)


def replace_patients(
    conn: Connection,
    patients: list[PatientRows],
    stored: Mapping[str, Mapping[tuple[Any, ...], Any]],
) -> int:
    """Make the patient tables hold `patients`' rows: rows that differ from the stored ones
    are upserted, rows no longer derived are deleted, equal rows are left alone (most of a
    patient's rows do not change when one more event arrives)."""
    written = 0
    for model, attr, key in PATIENT_TABLES:
        table = table_of(model)
        old = stored[attr]
        new = {tuple(r[k] for k in key): r for p in patients for r in getattr(p, attr)}
        changed = [r for k, r in new.items() if not _same_row(old.get(k), r)]
        gone = [k for k in old if k not in new]
        bulk_delete(conn, table, gone, key)
        bulk_write(conn, table, changed, key=list(key))
        written += len(changed) + len(gone)
    states = [
        {"patient_id": p.patient_id, "state": p.state, "last_event_at": p.last_event_at}
        for p in patients
    ]
    bulk_write(conn, table_of(PathwayStateRow), states, key=["patient_id"])
    alerts = [a for p in patients for a in p.alerts]
    bulk_write(conn, table_of(AlertRow), alerts, key=["alert_id"], update=ALERT_COLUMNS)
    resolutions = [
        {"alert_id": k, "status": "resolved", "resolved_at": v}
        for p in patients
        for k, v in p.resolutions.items()
    ]
    bulk_update(conn, table_of(AlertRow), resolutions, key=["alert_id"])
    return written + len(states) + len(alerts)
