"""Batched, idempotent SQL writes: one transaction per batch, whole derived state, no increments.

What one `SqlSink.write` does, in one transaction:

1. `locations`: upsert the Locations of the batch; the in-memory hierarchy follows them. A change
   of the tree (a bed moved to another ward…) re-resolves the stored periods that point there and
   marks their hours for recomputation.
2. Per patient touched by the batch: make its rows in `stays`, `stay_locations`, `ed_visits`,
   `community_visits`, `referrals` equal the rows derived from its new state (read the stored
   ones, upsert those that differ, delete those no longer derived) and upsert `pathway_states`
   and its alerts (never touching `acknowledged_by/at`).
3. Census: per hospital whose periods or ED visits changed, recompute `census_hourly` for the
   hours from the earliest point where a row changed (or the hospital's old watermark, up to
   which open periods were counted) to its latest known time, from the periods now in SQL, and
   write the hours that differ; recompute `location_occupancy` of the hospital; recompute the
   "ward above capacity" alerts from the same periods.

Every step rewrites rows as a function of the stored state, so a replayed, duplicated or restarted
batch leaves the tables as a clean run does. Offsets are committed by the agent after this returns.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    Engine,
    String,
    Table,
    and_,
    any_,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from parcours.db import upsert
from parcours.db.ingest_models import IngestRejectionRow
from parcours.db.models import EncounterRow
from parcours.db.pathway_models import (
    AlertRow,
    CensusHourlyRow,
    CommunityVisitRow,
    EdVisitRow,
    LocationOccupancyRow,
    LocationRow,
    PathwayStateRow,
    ReferralRow,
    SinkVersionRow,
    StayLocationRow,
    StayRow,
    StreamProgressRow,
)
from streams.core.census import (
    HOSPITAL,
    HOUR,
    UNKNOWN_HOSPITAL,
    WARD,
    EdArrival,
    Hierarchy,
    HourCounts,
    Period,
    Place,
    Unit,
    floor_hour,
    hierarchy_units,
    hourly_census,
    live_occupancy,
    over_capacity_episodes,
    ward_periods,
)
from streams.core.events import CanonicalEvent, EncounterRecorded, LocationRecorded
from streams.core.projection import PatientRows

log = logging.getLogger(__name__)

WARD_OVER_CAPACITY = "ward_over_capacity"
ALERT_MUTABLE = ("alert_type", "patient_id", "unit_id", "status", "raised_at", "resolved_at")
ALERT_COLUMNS = (*ALERT_MUTABLE, "message", "details")
# The PostgreSQL advisory lock that sink transactions take in turn (any fixed 64-bit number).
SINK_LOCK_KEY = 0x70617263  # "parc"
# The `sink_versions` row counting the changes of the Location tree.
TREE = "locations"
# An empty window: only the hospital's live occupancy is rewritten.
NEVER_LO = datetime.max.replace(tzinfo=UTC)
NEVER_HI = datetime.min.replace(tzinfo=UTC)
# Most keys one statement names (`IN`, `= ANY`), and most rows one JSON parameter carries: no
# statement grows with the history (PostgreSQL's default max_stack_depth refuses a row-value
# `IN` of about 10,000 tuples).
KEYS_PER_STATEMENT = 2000
ROWS_PER_STATEMENT = 10_000


def chunks(values: Sequence[Any], size: int = KEYS_PER_STATEMENT) -> Iterator[Sequence[Any]]:
    """`values` in slices of at most `size`."""
    for i in range(0, len(values), size):
        yield values[i : i + size]


def one_of(conn: Connection, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    """`column` is one of `values` (at most `KEYS_PER_STATEMENT` of them): one array parameter
    on PostgreSQL (`= ANY`), an `IN` list elsewhere."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(String)))  # type: ignore[no-any-return]
    return column.in_(list(values))  # type: ignore[no-any-return]


def _t(table: Any) -> Table:
    return table.__table__  # type: ignore[no-any-return]


_VERSION = _t(SinkVersionRow)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass
class SinkBatch:
    """What one batch asks the sink to write."""

    patients: list[PatientRows] = field(default_factory=list)
    locations: list[LocationRecorded] = field(default_factory=list)
    encounters: list[EncounterRecorded] = field(default_factory=list)


@dataclass
class SinkResult:
    """How many rows were written, and the census alerts that changed (for the alerts topic)."""

    rows: int = 0
    alerts: list[dict[str, Any]] = field(default_factory=list)


def encounter_rows(events: Sequence[CanonicalEvent]) -> list[dict[str, Any]]:
    """One `encounters` row per encounter; within a batch the last version wins."""
    rows: dict[str, dict[str, Any]] = {}
    for ev in events:
        if isinstance(ev, EncounterRecorded):
            rows[ev.encounter_id] = {
                "encounter_id": ev.encounter_id,
                "patient_id": ev.patient_id,
                "class_code": ev.class_code,
                "status": ev.status,
                "period_start": ev.start,
                "period_end": ev.end,
                "service_provider": ev.service_provider,
                "source_version": ev.source.version,
            }
    return list(rows.values())


def bulk_write(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    key: Sequence[str] | None = None,
    update: Iterable[str] | None = None,
) -> None:
    """Insert `rows` (or upsert them on `key`) in one statement.

    On PostgreSQL the rows travel as one JSON array that the server turns back into rows
    (`json_populate_recordset`): orjson writes it in C, where quoting every value in Python
    (execute_values and its mogrify) cost more than the write itself. Elsewhere
    `parcours.db.upsert`/insert.
    """
    if not rows:
        return
    if len(rows) > ROWS_PER_STATEMENT:
        for part in chunks(rows, ROWS_PER_STATEMENT):
            bulk_write(conn, table, part, key=key, update=update)
        return
    if not _json_rows(conn):
        if key is None:
            conn.execute(table.insert(), list(rows))
        else:
            upsert(conn, table, rows, key=key, update=update)
        return
    cols = [c for c in table.columns if c.name in rows[0]]
    names = ", ".join(f'"{c.name}"' for c in cols)
    # A JSON column's None is the JSON `null` (what psycopg2's Json adapter sent), which
    # json_populate_recordset reads as an SQL NULL.
    values = ", ".join(
        f"""COALESCE("{c.name}", 'null')""" if isinstance(c.type, JSON) else f'"{c.name}"'
        for c in cols
    )
    # Identifiers come from the SQLAlchemy schema and the values are bound: no injection.
    sql = (
        f'INSERT INTO "{table.name}" ({names}) SELECT {values}'  # nosec B608
        f' FROM json_populate_recordset(NULL::"{table.name}", %s)'
    )
    if key is not None:
        keys = list(key)
        sets = list(update) if update is not None else [c.name for c in cols if c.name not in keys]
        conflict = ", ".join(f'"{k}"' for k in keys)
        if sets:
            assignments = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in sets)
            sql += f" ON CONFLICT ({conflict}) DO UPDATE SET {assignments}"  # nosec B608
        else:
            sql += f" ON CONFLICT ({conflict}) DO NOTHING"
    _execute_json(conn, sql, rows)


def bulk_update(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], key: Sequence[str]
) -> None:
    """Set the other columns of `rows` on the rows of `table` they match on `key`, in one
    statement on PostgreSQL (psycopg2 sends an executemany row by row, a round trip each)."""
    if not rows:
        return
    if len(rows) > ROWS_PER_STATEMENT:
        for part in chunks(rows, ROWS_PER_STATEMENT):
            bulk_update(conn, table, part, key)
        return
    sets = [c for c in rows[0] if c not in key]
    if not _json_rows(conn):
        statement = (
            table.update()
            .where(and_(*(table.c[k] == bindparam(f"k_{k}") for k in key)))
            .values({c: bindparam(f"v_{c}") for c in sets})
        )
        params = [{**{f"k_{k}": r[k] for k in key}, **{f"v_{c}": r[c] for c in sets}} for r in rows]
        conn.execute(statement, params)
        return
    assignments = ", ".join(f'"{c}" = v."{c}"' for c in sets)
    matches = " AND ".join(f't."{k}" = v."{k}"' for k in key)
    # Identifiers come from the SQLAlchemy schema and the values are bound: no injection.
    sql = (
        f'UPDATE "{table.name}" AS t SET {assignments}'  # nosec B608
        f' FROM json_populate_recordset(NULL::"{table.name}", %s) AS v WHERE {matches}'
    )
    _execute_json(conn, sql, rows)


def bulk_delete(
    conn: Connection,
    table: Table,
    keys: Sequence[tuple[Any, ...]],
    key: Sequence[str],
) -> None:
    """Delete the rows of `table` whose `key` columns are one of `keys`, in bounded statements:
    on PostgreSQL the keys travel as one JSON array per statement, elsewhere as `IN` lists."""
    if not keys:
        return
    if len(key) == 1 or not _json_rows(conn):
        size = KEYS_PER_STATEMENT if len(key) == 1 else 500
        for part in chunks(keys, size):
            if len(key) == 1:
                clause = one_of(conn, table.c[key[0]], [k[0] for k in part])
            else:
                clause = tuple_(*(table.c[k] for k in key)).in_(list(part))
            conn.execute(delete(table).where(clause))
        return
    # Table and column names come from the models; the rows are one bound JSON parameter.
    matches = " AND ".join(f't."{k}" = v."{k}"' for k in key)
    sql = (
        f'DELETE FROM "{table.name}" AS t'  # nosec B608
        f' USING json_populate_recordset(NULL::"{table.name}", %s) AS v WHERE {matches}'
    )
    for part in chunks(keys, ROWS_PER_STATEMENT):
        _execute_json(conn, sql, [dict(zip(key, k, strict=True)) for k in part])


def _json_rows(conn: Connection) -> bool:
    """Whether rows can travel as one JSON array (`bulk_write`): PostgreSQL through psycopg2."""
    return conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg2"


def _execute_json(conn: Connection, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Run `sql`, whose one parameter is `rows` as a JSON array, on the raw psycopg2 cursor."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, (orjson.dumps(list(rows)).decode(),))
    finally:
        cursor.close()


def place_of(row: Mapping[str, Any]) -> Place:
    """A `locations` row (or LocationRecorded fields) as a census Place."""
    return Place(
        location_id=row["location_id"],
        physical_type=row.get("physical_type"),
        part_of=row.get("part_of"),
        status=row.get("status") or "active",
        name=row.get("name"),
        service_code=row.get("service_code"),
        service_name=row.get("service_name"),
        organization=row.get("organization"),
    )


def period_of(row: Any) -> Period:
    """A `stay_locations` row as a census Period (SQLite gives naive UTC times back)."""
    return Period(
        row.stay_id,
        row.seq,
        row.hospital_id,
        row.location_id,
        as_utc(row.start_at) or row.start_at,
        as_utc(row.end_at),
        row.discharged,
        row.ward_ref,
    )


def location_row(ev: LocationRecorded) -> dict[str, Any]:
    """The `locations` row of a LocationRecorded event."""
    return {
        "location_id": ev.location_id,
        "name": ev.name,
        "physical_type": ev.physical_type,
        "part_of": ev.part_of,
        "status": ev.status,
        "service_code": ev.service_code,
        "service_name": ev.service_name,
        "organization": ev.organization,
        "source_version": ev.source.version,
    }


@dataclass
class _Window:
    """Hours of one hospital a batch may have changed."""

    lo: datetime
    hi: datetime

    def widen(self, lo: datetime | None, hi: datetime | None = None) -> None:
        if lo is not None and lo < self.lo:
            self.lo = lo
        if hi is not None and hi > self.hi:
            self.hi = hi


def _widen(
    windows: dict[str, _Window], hospital: str, lo: datetime | None, hi: datetime | None
) -> None:
    lo, hi = as_utc(lo), as_utc(hi)
    if lo is None:
        return
    hi = hi or lo
    if hospital in windows:
        windows[hospital].widen(lo, hi)
    else:
        windows[hospital] = _Window(lo, max(lo, hi))


# The tables that hold a patient's records: (model, `PatientRows` attribute, key columns).
PATIENT_TABLES: tuple[tuple[Any, str, tuple[str, ...]], ...] = (
    (StayRow, "stays", ("stay_id",)),
    (StayLocationRow, "periods", ("stay_id", "seq")),
    (EdVisitRow, "ed_visits", ("encounter_id",)),
    (CommunityVisitRow, "community_visits", ("encounter_id",)),
    (ReferralRow, "referrals", ("referral_id",)),
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


class SqlSink:
    """Writes batches in one transaction each; replaying a batch changes nothing."""

    def __init__(self, engine: Engine, capacity: Mapping[str, int] | None = None) -> None:
        self.engine = engine
        self.capacity = dict(capacity or {})
        self.hierarchy = Hierarchy({}, self.capacity)
        self._loaded = False
        # `sink_versions` of the Location tree when it was last read or written here.
        self._tree_version: int | None = None
        # The DBAPI connection of the transaction under way (`cancel` interrupts it).
        self._active: Any = None

    # --- Location hierarchy -------------------------------------------------------------------

    def load_hierarchy(self, conn: Connection | None = None) -> Hierarchy:
        """(Re)read the Location tree from SQL."""
        if conn is None:
            with self.engine.connect() as own:
                return self.load_hierarchy(own)
        rows = conn.execute(select(_t(LocationRow))).mappings().all()
        self.hierarchy = Hierarchy(
            {r["location_id"]: place_of(dict(r)) for r in rows}, self.capacity
        )
        self._tree_version = conn.scalar(select(_VERSION.c.version).where(_VERSION.c.name == TREE))
        self._loaded = True
        return self.hierarchy

    def _fresh_hierarchy(self, conn: Connection) -> None:
        """Read the tree again if another worker's sink changed it since this one last did."""
        version = conn.scalar(select(_VERSION.c.version).where(_VERSION.c.name == TREE))
        if not self._loaded or version != self._tree_version:
            self.load_hierarchy(conn)

    def _tree_changed(self, conn: Connection) -> None:
        # Called in the sink's turn (the advisory lock), right after `_fresh_hierarchy`: no other
        # writer can bump the version in between.
        self._tree_version = (self._tree_version or 0) + 1
        upsert(conn, _VERSION, [{"name": TREE, "version": self._tree_version}], key=["name"])

    def _resolve(
        self, hierarchy: Hierarchy, hint: str | None, location: str | None, ward_ref: str | None
    ) -> tuple[str, str | None, str | None]:
        """(hospital, ward, bed) of a period: the Encounter's hospital first, else the tree's."""
        hospital = hint or hierarchy.hospital_of(location or ward_ref) or UNKNOWN_HOSPITAL
        ward = hierarchy.units_of(hospital, location, ward_ref)[WARD]
        return hospital, ward.unit_id if ward else None, hierarchy.bed_of(location)

    # --- Progress -----------------------------------------------------------------------------

    def write_progress(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Record how far this worker is on its partitions (`StreamProgressRow` fields)."""
        if rows:
            with self.engine.begin() as conn:
                upsert(conn, StreamProgressRow, rows, key=["topic", "partition"])

    def write_rejections(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Record messages the worker dead-lettered (`IngestRejectionRow` fields) for the Feed
        health page."""
        if rows:
            with self.engine.begin() as conn:
                conn.execute(_t(IngestRejectionRow).insert(), list(rows))

    # --- The batch ----------------------------------------------------------------------------

    def write(self, batch: SinkBatch | Sequence[CanonicalEvent]) -> SinkResult:
        """Write one batch in one transaction; returns rows written and changed census alerts."""
        if not isinstance(batch, SinkBatch):
            events = list(batch)
            batch = SinkBatch(
                locations=[e for e in events if isinstance(e, LocationRecorded)],
                encounters=[e for e in events if isinstance(e, EncounterRecorded)],
            )
        try:
            with self.engine.begin() as conn:
                self._active = conn.connection.dbapi_connection
                if conn.dialect.name == "postgresql":
                    # Workers that share the partitions write at once, but the census of a
                    # hospital counts every worker's patients: a batch that recomputed hours
                    # without seeing another's uncommitted rows would overwrite them. Writers
                    # take turns (the lock ends with the transaction); the rules of the next
                    # batch run meanwhile.
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SINK_LOCK_KEY})
                self._fresh_hierarchy(conn)
                return self._write(conn, batch)
        except Exception:
            # The in-memory tree may be ahead of what was rolled back: read it again next time.
            self._loaded = False
            raise
        finally:
            self._active = None

    def cancel(self) -> None:
        """Interrupt the statement under way, if any (from another thread): its transaction
        rolls back and `write` raises. A stopping worker leaves the batch to its next start."""
        active = self._active
        if active is None:
            return
        try:
            if hasattr(active, "cancel"):  # psycopg2
                active.cancel()
            elif hasattr(active, "interrupt"):  # sqlite3
                active.interrupt()
        except Exception as exc:
            log.debug("could not cancel the statement under way: %s", type(exc).__name__)

    def _write(self, conn: Connection, batch: SinkBatch) -> SinkResult:
        result = SinkResult()
        windows: dict[str, _Window] = {}
        hierarchy = self._apply_locations(conn, batch.locations, windows, result)

        enc = encounter_rows(batch.encounters)
        if enc:
            bulk_write(conn, _t(EncounterRow), enc, key=["encounter_id"])
            result.rows += len(enc)

        patients = {p.patient_id: p for p in batch.patients}
        if patients:
            ids = sorted(patients)
            rows = list(patients.values())
            self._resolve_places(hierarchy, rows)
            stored = self._stored_rows(conn, ids)
            self._changed_windows(conn, rows, stored, windows)
            result.rows += self._replace_patients(conn, rows, stored)
        for hospital in sorted(windows):
            result.rows += self._recompute_hospital(
                conn, hierarchy, hospital, windows[hospital], result
            )
        return result

    def _apply_locations(
        self,
        conn: Connection,
        locations: Sequence[LocationRecorded],
        windows: dict[str, _Window],
        result: SinkResult,
    ) -> Hierarchy:
        if not locations:
            return self.hierarchy
        rows = {ev.location_id: location_row(ev) for ev in locations}
        old = self.hierarchy
        changed = [lid for lid, row in rows.items() if old.places.get(lid) != place_of(row)]
        bulk_write(conn, _t(LocationRow), list(rows.values()), key=["location_id"])
        result.rows += len(rows)
        if not changed:
            return old
        places = dict(old.places)
        places.update({lid: place_of(rows[lid]) for lid in changed})
        new = Hierarchy(places, self.capacity)
        self.hierarchy = new
        self._tree_changed(conn)
        # Periods pointing at a changed place (or at a bed of a changed ward) resolve anew.
        touched = set(changed) | {p.location_id for p in places.values() if p.part_of in changed}
        # While the tree is incomplete a site's Location id stands for its hospital; once the
        # site (and its Organization) is known, what was filed under that stand-in goes.
        occ, ch = _t(LocationOccupancyRow), _t(CensusHourlyRow)
        stand_ins = sorted(touched)
        sl = _t(StayLocationRow)
        found: list[Any] = []
        for part in chunks(stand_ins):
            conn.execute(
                delete(occ).where(
                    or_(one_of(conn, occ.c.hospital_id, part), one_of(conn, occ.c.unit_id, part))
                )
            )
            conn.execute(delete(ch).where(one_of(conn, ch.c.hospital_id, part)))
            found += conn.execute(
                select(
                    sl.c.stay_id,
                    sl.c.seq,
                    sl.c.hospital_id,
                    sl.c.location_id,
                    sl.c.ward_ref,
                    sl.c.ward_id,
                    sl.c.bed_id,
                    sl.c.start_at,
                    sl.c.end_at,
                ).where(
                    or_(one_of(conn, sl.c.location_id, part), one_of(conn, sl.c.ward_ref, part))
                )
            ).all()
        stays = {r.stay_id for r in found}
        moved = []
        for r in found:
            # A period filed under no known hospital (no serviceProvider, Location not yet
            # received) takes the hospital of its Location once the Location arrives.
            hint = None if r.hospital_id == UNKNOWN_HOSPITAL else r.hospital_id
            home, ward, bed = self._resolve(new, hint, r.location_id, r.ward_ref)
            if (home, ward, bed) != (r.hospital_id, r.ward_id, r.bed_id):
                moved.append(
                    {
                        "stay_id": r.stay_id,
                        "seq": r.seq,
                        "hospital_id": home,
                        "ward_id": ward,
                        "bed_id": bed,
                    }
                )
                if home != r.hospital_id:
                    _widen(windows, r.hospital_id, r.start_at, r.end_at or r.start_at)
        bulk_update(conn, sl, moved, key=["stay_id", "seq"])
        for part in chunks(sorted(stays)):
            spans = conn.execute(
                select(sl.c.hospital_id, func.min(sl.c.start_at), func.max(sl.c.start_at))
                .where(one_of(conn, sl.c.stay_id, part))
                .group_by(sl.c.hospital_id)
            ).all()
            for hospital, lo, hi in spans:
                _widen(windows, hospital, lo, hi)
        # ED visits count in the ED ward and its service too.
        ed = _t(EdVisitRow)
        placed = []
        for part in chunks(stand_ins):
            for visit in conn.execute(
                select(ed.c.encounter_id, ed.c.ward_id, ed.c.arrived_at, ed.c.departed_at).where(
                    and_(
                        one_of(conn, ed.c.ward_id, part),
                        or_(ed.c.hospital_id.is_(None), ed.c.hospital_id == UNKNOWN_HOSPITAL),
                    )
                )
            ).all():
                found_hospital = new.hospital_of(visit.ward_id)
                if found_hospital:
                    placed.append(
                        {"encounter_id": visit.encounter_id, "hospital_id": found_hospital}
                    )
                    end = visit.departed_at or visit.arrived_at
                    _widen(windows, UNKNOWN_HOSPITAL, visit.arrived_at, end)
        bulk_update(conn, ed, placed, key=["encounter_id"])
        for part in chunks(stand_ins):
            for hospital, lo, hi in conn.execute(
                select(
                    ed.c.hospital_id,
                    func.min(ed.c.arrived_at),
                    func.max(func.coalesce(ed.c.departed_at, ed.c.arrived_at)),
                )
                .where(one_of(conn, ed.c.ward_id, part))
                .group_by(ed.c.hospital_id)
            ).all():
                _widen(windows, hospital or UNKNOWN_HOSPITAL, lo, hi)
        for place in places.values():
            if place.location_id in touched:
                hospital = new.hospital_of(place.location_id)
                if hospital:
                    # Occupancy rows of a hospital list its wards even when they are empty.
                    windows.setdefault(hospital, _Window(NEVER_LO, NEVER_HI))
        return new

    def _resolve_places(self, hierarchy: Hierarchy, patients: list[PatientRows]) -> None:
        """Fill in the hospital, ward and bed of the new periods and ED visits from the tree."""
        for p in patients:
            for row in p.periods:
                hospital, ward, bed = self._resolve(
                    hierarchy, row.get("hospital_id"), row.get("location_id"), row.get("ward_ref")
                )
                row.update(hospital_id=hospital, ward_id=ward, bed_id=bed)
            for row in p.ed_visits:
                row["hospital_id"] = row.get("hospital_id") or hierarchy.hospital_of(
                    row.get("ward_id")
                )

    def _stored_rows(
        self, conn: Connection, ids: list[str]
    ) -> dict[str, dict[tuple[Any, ...], Any]]:
        """The rows the patient tables hold for `ids`: table attribute → key → row."""
        stored = {}
        for model, attr, key in PATIENT_TABLES:
            table = _t(model)
            stored[attr] = {
                tuple(getattr(r, k) for k in key): r
                for part in chunks(ids)
                for r in conn.execute(select(table).where(one_of(conn, table.c.patient_id, part)))
            }
        return stored

    def _changed_windows(
        self,
        conn: Connection,
        patients: list[PatientRows],
        stored: Mapping[str, Mapping[tuple[Any, ...], Any]],
        windows: dict[str, _Window],
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
            _widen(windows, hospital, lo, hi)

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
            watermark = self._watermark(conn, hospital)
            if watermark is not None:
                _widen(windows, hospital, watermark, None)

    def _replace_patients(
        self,
        conn: Connection,
        patients: list[PatientRows],
        stored: Mapping[str, Mapping[tuple[Any, ...], Any]],
    ) -> int:
        """Make the patient tables hold `patients`' rows: rows that differ from the stored ones
        are upserted, rows no longer derived are deleted, equal rows are left alone (most of a
        patient's rows do not change when one more event arrives)."""
        written = 0
        for model, attr, key in PATIENT_TABLES:
            table = _t(model)
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
        bulk_write(conn, _t(PathwayStateRow), states, key=["patient_id"])
        alerts = [a for p in patients for a in p.alerts]
        bulk_write(conn, _t(AlertRow), alerts, key=["alert_id"], update=ALERT_COLUMNS)
        resolutions = [
            {"alert_id": k, "status": "resolved", "resolved_at": v}
            for p in patients
            for k, v in p.resolutions.items()
        ]
        bulk_update(conn, _t(AlertRow), resolutions, key=["alert_id"])
        return written + len(states) + len(alerts)

    # --- Census of one hospital ---------------------------------------------------------------

    def _watermark(self, conn: Connection, hospital: str) -> datetime | None:
        sl, ed = _t(StayLocationRow), _t(EdVisitRow)
        a, b = conn.execute(
            select(func.max(sl.c.start_at), func.max(sl.c.end_at)).where(
                sl.c.hospital_id == hospital
            )
        ).one()
        c, d = conn.execute(
            select(func.max(ed.c.arrived_at), func.max(ed.c.departed_at)).where(
                ed.c.hospital_id == hospital
            )
        ).one()
        known = [as_utc(x) for x in (a, b, c, d) if x is not None]
        return max(known) if known else None  # type: ignore[type-var]

    def _recompute_hospital(
        self,
        conn: Connection,
        hierarchy: Hierarchy,
        hospital: str,
        window: _Window,
        result: SinkResult,
    ) -> int:
        sl, ed = _t(StayLocationRow), _t(EdVisitRow)
        watermark = self._watermark(conn, hospital)
        rows_written = 0
        periods: list[Period] = []
        if window.lo <= window.hi:
            lo = floor_hour(window.lo)
            hi = max(window.hi, watermark) if watermark else window.hi
            overlapping = (
                select(sl.c.stay_id)
                .where(sl.c.hospital_id == hospital)
                .where(sl.c.start_at <= hi)
                .where(or_(sl.c.end_at.is_(None), sl.c.end_at >= lo))
            )
            periods = [
                period_of(r)
                for r in conn.execute(select(sl).where(sl.c.stay_id.in_(overlapping))).all()
            ]
            # ED visits that overlap the window: arrivals in it are counted, and every visit
            # occupies the ED while it lasts.
            arrivals = [
                EdArrival(
                    hospital,
                    r.ward_id,
                    as_utc(r.arrived_at),  # type: ignore[arg-type]
                    as_utc(r.departed_at),
                )
                for r in conn.execute(
                    select(ed.c.ward_id, ed.c.arrived_at, ed.c.departed_at).where(
                        and_(
                            ed.c.hospital_id == hospital,
                            ed.c.arrived_at < floor_hour(hi) + HOUR,
                            or_(ed.c.departed_at.is_(None), ed.c.departed_at >= lo),
                        )
                    )
                ).all()
                if r.arrived_at is not None
            ]
            counts = hourly_census(periods, arrivals, hierarchy, lo, hi, watermark)
            rows_written += self._write_hours(conn, hospital, lo, floor_hour(hi), counts)
            rows_written += self._capacity_alerts(conn, hierarchy, periods, window.lo, result)
        rows_written += self._occupancy(conn, hierarchy, hospital, watermark)
        return rows_written

    def _write_hours(
        self,
        conn: Connection,
        hospital: str,
        lo: datetime,
        hi: datetime,
        counts: Sequence[HourCounts],
    ) -> int:
        """Make the hospital's `census_hourly` rows in `[lo, hi]` equal `counts`, writing only the
        rows that differ (most hours of a recomputed window do not change)."""
        ch = _t(CensusHourlyRow)
        fields = (
            "occupancy",
            "admissions",
            "discharges",
            "transfers_in",
            "transfers_out",
            "ed_arrivals",
        )
        existing = {
            (r.unit_type, r.unit_id, as_utc(r.hour)): tuple(getattr(r, f) for f in fields)
            for r in conn.execute(
                select(ch).where(
                    and_(ch.c.hospital_id == hospital, ch.c.hour >= lo, ch.c.hour <= hi)
                )
            )
        }
        wanted = {
            (c.unit.unit_type, c.unit.unit_id, c.hour): tuple(getattr(c, f) for f in fields)
            for c in counts
        }
        gone = [key for key in existing if key not in wanted]
        bulk_delete(conn, ch, gone, ("unit_type", "unit_id", "hour"))
        rows = [
            {
                "unit_type": key[0],
                "unit_id": key[1],
                "hour": key[2],
                "hospital_id": hospital,
                **dict(zip(fields, values, strict=True)),
            }
            for key, values in wanted.items()
            if existing.get(key) != values
        ]
        bulk_write(conn, ch, rows, key=["unit_type", "unit_id", "hour"])
        return len(rows) + len(gone)

    def _occupancy(
        self, conn: Connection, hierarchy: Hierarchy, hospital: str, watermark: datetime | None
    ) -> int:
        sl, occ = _t(StayLocationRow), _t(LocationOccupancyRow)
        open_periods = [
            Period(
                r.stay_id,
                r.seq,
                r.hospital_id,
                r.location_id,
                as_utc(r.start_at) or r.start_at,
                None,
                ward_hint=r.ward_ref,
            )
            for r in conn.execute(
                select(
                    sl.c.stay_id,
                    sl.c.seq,
                    sl.c.hospital_id,
                    sl.c.location_id,
                    sl.c.start_at,
                    sl.c.ward_ref,
                ).where(and_(sl.c.hospital_id == hospital, sl.c.end_at.is_(None)))
            ).all()
        ]
        ed = _t(EdVisitRow)
        ed_open = [
            EdArrival(hospital, r.ward_id, as_utc(r.arrived_at))  # type: ignore[arg-type]
            for r in conn.execute(
                select(ed.c.ward_id, ed.c.arrived_at).where(
                    and_(
                        ed.c.hospital_id == hospital,
                        ed.c.departed_at.is_(None),
                        ed.c.arrived_at.is_not(None),
                    )
                )
            ).all()
        ]
        units = [u for u in hierarchy_units(hierarchy) if u.hospital_id == hospital]
        units.append(Unit(HOSPITAL, hospital, hospital))
        rows = [
            {
                "unit_type": o.unit.unit_type,
                "unit_id": o.unit.unit_id,
                "hospital_id": hospital,
                "name": o.name,
                "occupied": o.occupied,
                "capacity": o.capacity,
                "as_of": watermark,
            }
            for o in live_occupancy(open_periods, hierarchy, units, ed_open)
        ]
        # A unit may have been filed under another hospital id while its tree was incomplete.
        ids = sorted({str(r["unit_id"]) for r in rows})
        conn.execute(delete(occ).where(occ.c.hospital_id == hospital))
        for part in chunks(ids):
            conn.execute(delete(occ).where(one_of(conn, occ.c.unit_id, part)))
        if rows:
            bulk_write(conn, occ, rows)
        return len(rows)

    def _ward_periods(self, conn: Connection, ward: str, since: datetime) -> list[Period]:
        """Every period in `ward` that overlaps `[since, ∞)`."""
        sl = _t(StayLocationRow)
        return [
            period_of(r)
            for r in conn.execute(
                select(sl).where(
                    and_(sl.c.ward_id == ward, or_(sl.c.end_at.is_(None), sl.c.end_at >= since))
                )
            ).all()
        ]

    def _capacity_alerts(
        self,
        conn: Connection,
        hierarchy: Hierarchy,
        periods: Iterable[Period],
        since: datetime,
        result: SinkResult,
    ) -> int:
        """Raise and resolve "ward above capacity" alerts from the periods, from `since` on."""
        al = _t(AlertRow)
        written = 0
        by_ward = sorted(ward_periods(periods, hierarchy).items())
        # The alerts raised since `since`, for every ward at once; a ward already above capacity
        # before `since` reads its own from further back.
        recent: dict[str, dict[str, Any]] = defaultdict(dict)
        for part in chunks([ward for ward, _ in by_ward]):
            for r in conn.execute(
                select(al).where(
                    and_(
                        al.c.alert_type == WARD_OVER_CAPACITY,
                        one_of(conn, al.c.unit_id, part),
                        al.c.raised_at >= since,
                    )
                )
            ).all():
                recent[r.unit_id][r.alert_id] = r
        for ward, in_ward in by_ward:
            hospital = in_ward[0].hospital_id
            capacity = hierarchy.capacity(Unit(WARD, ward, hospital))
            if capacity is None:
                continue
            episodes, carried = over_capacity_episodes(ward, in_ward, capacity, since)
            floor = since
            if carried:
                # Already above capacity before the window: the episode began at the last alert
                # raised before it. Recompute from there (its peak may lie before `since`).
                before = conn.execute(
                    select(al.c.raised_at)
                    .where(
                        and_(
                            al.c.alert_type == WARD_OVER_CAPACITY,
                            al.c.unit_id == ward,
                            al.c.raised_at < since,
                        )
                    )
                    .order_by(al.c.raised_at.desc())
                    .limit(1)
                ).scalar()
                if before is not None:
                    floor = as_utc(before) or since
                    episodes, _ = over_capacity_episodes(
                        ward, self._ward_periods(conn, ward, floor), capacity, floor
                    )
            existing = recent[ward]
            if floor < since:
                existing = {
                    r.alert_id: r
                    for r in conn.execute(
                        select(al).where(
                            and_(
                                al.c.alert_type == WARD_OVER_CAPACITY,
                                al.c.unit_id == ward,
                                al.c.raised_at >= floor,
                            )
                        )
                    ).all()
                }
            rows = []
            for e in episodes:
                alert_id = f"{WARD_OVER_CAPACITY}:{ward}:{e.start.astimezone(UTC).isoformat()}"
                status = "open" if e.end is None else "resolved"
                name = hierarchy.name_of(Unit(WARD, ward, hospital)) or ward
                row = {
                    "alert_id": alert_id,
                    "alert_type": WARD_OVER_CAPACITY,
                    "patient_id": None,
                    "unit_id": ward,
                    "status": status,
                    "raised_at": e.start,
                    "resolved_at": e.end,
                    "message": (
                        f"Ward {name} above capacity: {e.peak} patients for {e.capacity} beds"
                    ),
                    "details": {"hospital_id": hospital, "peak": e.peak, "capacity": e.capacity},
                }
                rows.append(row)
                old = existing.pop(alert_id, None)
                if old is None or old.status != status or as_utc(old.resolved_at) != e.end:
                    result.alerts.append(row)
            bulk_delete(conn, al, [(k,) for k in sorted(existing)], ("alert_id",))
            if rows:
                bulk_write(conn, al, rows, key=["alert_id"], update=ALERT_COLUMNS)
            written += len(rows)
        return written
