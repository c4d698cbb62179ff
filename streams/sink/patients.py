"""A patient's rows: make `stays`, `stay_locations`, `ed_visits`, `community_visits`,
`referrals`, `appointments`, `pathway_states` and its alerts equal what its state derives, and
find the census hours that the change moves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
from parcours.fhir_refs import merge_loops
from streams import StreamsError
from streams.core.census import UNKNOWN_HOSPITAL
from streams.core.projection import KEY_OF, RECORD_KEYS, Key, PatientRows
from streams.sink.census import watermark
from streams.sink.rows import ALERT_COLUMNS, Window, as_utc, widen_window

# The tables that hold a patient's records: model and `PatientRows` attribute (keys:
# `RECORD_KEYS`).
PATIENT_TABLES: tuple[tuple[Any, str], ...] = (
    (StayRow, "stays"),
    (StayLocationRow, "periods"),
    (EdVisitRow, "ed_visits"),
    (CommunityVisitRow, "community_visits"),
    (ReferralRow, "referrals"),
    (AppointmentRow, "appointments"),
)
MODEL_OF = {attr: model for model, attr in PATIENT_TABLES}
# The records whose stored versions the census needs (the hours they leave or take).
PLACED = ("periods", "ed_visits")


@dataclass
class PatientWrite:
    """What a batch changes in the patient tables, per `RECORD_KEYS` attribute: the rows to
    write unless the stored row at their key is equal (`new`), the stored rows that `new`
    replaces or that go (`stored`, as namespaces), and the (key, patient) of the stored rows no
    longer derived (`gone`)."""

    new: dict[str, dict[Key, dict[str, Any]]]
    stored: dict[str, dict[Key, Any]]
    gone: dict[str, list[tuple[Key, str]]]

    def placed(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The new periods and ED visits, which the sink places in the Location tree."""
        return list(self.new["periods"].values()), list(self.new["ed_visits"].values())


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


def plan_write(conn: Connection, patients: list[PatientRows]) -> PatientWrite:
    """What writing `patients` changes in the patient tables.

    A patient whose stored digest is that of the records its previous state derived (the fold's
    `RowChanges.base`) has exactly those records in SQL: its changes are written as they are,
    and only the stored periods and ED visits they replace are read (the census needs them).
    Any other patient (no changes known, a database restored or written by another run, a
    replay after a crash) has its rows read back and compared whole."""
    digests = stored_digests(conn, [p.patient_id for p in patients])
    trusted: list[PatientRows] = []
    whole: list[PatientRows] = []
    for p in patients:
        (trusted if _trusted(p, digests) else whole).append(p)
    stored = _stored_of_patients(conn, sorted(p.patient_id for p in whole))
    new: dict[str, dict[Key, dict[str, Any]]] = {attr: {} for attr in RECORD_KEYS}
    gone: dict[str, list[tuple[Key, str]]] = {attr: [] for attr in RECORD_KEYS}
    for attr, key_of in KEY_OF.items():
        for p in whole:
            for row in getattr(p, attr):
                new[attr][key_of(row)] = row
        for p in trusted:
            assert p.changes is not None
            rows = getattr(p, attr)
            for i in p.changes.changed[attr]:
                new[attr][key_of(rows[i])] = rows[i]
            gone[attr] += [(k, p.patient_id) for k in p.changes.gone[attr]]
        gone[attr] += [(k, old.patient_id) for k, old in stored[attr].items() if k not in new[attr]]
    for attr in PLACED:
        wanted = set(new[attr]) | {k for k, _ in gone[attr]}
        missing = [k for k in wanted if k not in stored[attr]]
        stored[attr].update(_stored_at(conn, attr, missing))
    return PatientWrite(new, stored, gone)


def _trusted(p: PatientRows, digests: Mapping[str, int | None]) -> bool:
    """Whether SQL holds exactly the records `p`'s previous state derived."""
    if p.changes is None:
        return False
    if p.changes.base is None:
        return p.patient_id not in digests
    return digests.get(p.patient_id) == p.changes.base


def stored_digests(conn: Connection, ids: list[str]) -> dict[str, int | None]:
    """`pathway_states.rows_digest` of the patients of `ids` that have a row."""
    table = table_of(PathwayStateRow)
    found: dict[str, int | None] = {}
    for part in chunks(sorted(ids)):
        query = select(table.c.patient_id, table.c.rows_digest)
        for pid, digest in conn.execute(query.where(one_of(conn, table.c.patient_id, part))):
            found[pid] = digest
    return found


def _namespaces(result: Any, key: tuple[str, ...]) -> dict[Key, Any]:
    names = list(result.keys())
    at = [names.index(k) for k in key]
    # Namespaces: the comparisons read every column of each row, and a SQLAlchemy row's
    # attributes cost a microsecond or two each.
    return {
        tuple(r[i] for i in at): SimpleNamespace(**dict(zip(names, r, strict=True))) for r in result
    }


def _stored_of_patients(conn: Connection, ids: list[str]) -> dict[str, dict[Key, Any]]:
    """The rows the patient tables hold for `ids`: table attribute → key → row."""
    stored: dict[str, dict[Key, Any]] = {}
    for model, attr in PATIENT_TABLES:
        table = table_of(model)
        stored[attr] = {}
        for part in chunks(ids):
            result = conn.execute(select(table).where(one_of(conn, table.c.patient_id, part)))
            stored[attr].update(_namespaces(result, RECORD_KEYS[attr]))
    return stored


def _stored_at(conn: Connection, attr: str, keys: list[Key]) -> dict[Key, Any]:
    """The stored rows of the table of `attr` at `keys` (its first key column selects)."""
    table = table_of(MODEL_OF[attr])
    key = RECORD_KEYS[attr]
    first = table.c[key[0]]
    found: dict[Key, Any] = {}
    for part in chunks(sorted({k[0] for k in keys})):
        found.update(_namespaces(conn.execute(select(table).where(one_of(conn, first, part))), key))
    wanted = set(keys)
    return {k: row for k, row in found.items() if k in wanted}


def changed_windows(conn: Connection, plan: PatientWrite, windows: dict[str, Window]) -> None:
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

    old_periods = plan.stored["periods"]
    for k, row in plan.new["periods"].items():
        for hospital, lo, hi in _period_change(old_periods.get(k), row):
            widen(hospital, lo, hi)
    for k, _ in plan.gone["periods"]:
        if (old := old_periods.get(k)) is not None:
            widen(old.hospital_id, old.start_at, old.end_at or old.start_at)
    old_eds = plan.stored["ed_visits"]
    for k, row in plan.new["ed_visits"].items():
        was = old_eds.get(k)
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
    for k, _ in plan.gone["ed_visits"]:
        if (was := old_eds.get(k)) is not None:
            widen(was.hospital_id, was.arrived_at, was.departed_at)
    for hospital in touched:
        mark = watermark(conn, hospital)
        if mark is not None:
            widen_window(windows, hospital, mark, None)


class MergeLoop(StreamsError):
    """Patients whose merges (Patient.link replaced-by) go round in a loop: the writer refuses
    their rows, and their messages go to the dead letters with this reason."""


def refuse_merge_loops(conn: Connection, patients: list[PatientRows]) -> None:
    """Raise MergeLoop when a patient of `patients` is merged into one that, through the merges
    of this batch and those SQL holds, is merged back into it. Each patient of a loop would give
    its pathway to another, and none would be left. The gateway refuses such a merge; one
    written to Kafka past it is refused here."""
    batch = {p.patient_id: p.state.get("replaced_by") for p in patients}
    merges = {pid: into for pid, into in batch.items() if isinstance(into, str)}
    if not merges:
        return
    stored: dict[str, str | None] = {}
    ps = PathwayStateRow.__table__

    def replaced_by(pid: str) -> str | None:
        if pid in batch:
            return batch[pid]
        if pid not in stored:
            state = conn.execute(select(ps.c.state).where(ps.c.patient_id == pid)).scalar()
            into = state.get("replaced_by") if isinstance(state, dict) else None
            stored[pid] = into if isinstance(into, str) else None
        return stored[pid]

    loops = [(pid, into) for pid, into in merges.items() if merge_loops(pid, into, replaced_by)]
    if loops:
        raise MergeLoop(
            "; ".join(
                f"Patient {pid} replaced-by {into}, which is merged back into {pid}: a merge loop"
                for pid, into in loops
            )
        )


def replace_patients(conn: Connection, patients: list[PatientRows], plan: PatientWrite) -> int:
    """Make the patient tables hold `patients`' rows (`plan`): rows that differ from the stored
    ones are upserted, rows no longer derived are deleted, equal rows are left alone (most of a
    patient's rows do not change when one more event arrives)."""
    written = 0
    for model, attr in PATIENT_TABLES:
        table = table_of(model)
        key = RECORD_KEYS[attr]
        old = plan.stored[attr]
        changed = [r for k, r in plan.new[attr].items() if not _same_row(old.get(k), r)]
        # A stored row goes only from the patient it belongs to: a merge may have given its key
        # to another patient since.
        gone = [(*k, pid) for k, pid in plan.gone[attr]]
        bulk_delete(conn, table, gone, (*key, "patient_id"))
        bulk_write(conn, table, changed, key=list(key))
        written += len(changed) + len(gone)
    states = [
        {
            "patient_id": p.patient_id,
            "state": p.state,
            "last_event_at": p.last_event_at,
            "rows_digest": p.digest,
        }
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
