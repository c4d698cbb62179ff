"""`census_hourly` and `location_occupancy` of one hospital, recomputed over a window of hours
from the periods and ED visits in SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.engine import Connection

from parcours.db.bulk import bulk_delete, bulk_write, chunks, one_of, table_of
from parcours.db.pathway_models import (
    CensusHourlyRow,
    CensusPendingRow,
    EdVisitRow,
    LocationOccupancyRow,
    StayLocationRow,
)
from parcours.timeutil import to_utc
from streams.core.census import (
    HOSPITAL,
    HOUR,
    EdArrival,
    Hierarchy,
    HourCounts,
    Period,
    Unit,
    census_slices,
    floor_hour,
    hierarchy_units,
    hourly_census,
    live_occupancy,
)
from streams.sink.capacity_alerts import capacity_alerts
from streams.sink.rows import NEVER_HI, NEVER_LO, SinkResult, Window, as_utc, period_of

# The hours of a window are recomputed a week at a time: a backlog's window spans weeks or
# months, and its counts, its stored rows and the rows to write, held all at once, would be the
# worker's largest use of memory.
SLICE = timedelta(days=7)
# How far past the worker's clock census hours are counted, unless the settings say otherwise
# (`census_horizon_days`; the demo's simulator runs ahead of the clock).
HORIZON = timedelta(days=30)
# How long before the worker's clock a stay or ED visit that began earlier, and is still open or
# ended since, is counted, unless the settings say otherwise (`census_lookback_days`).
LOOKBACK = timedelta(days=730)


def watermark(conn: Connection, hospital: str) -> datetime | None:
    """The hospital's latest known time: the last start or end of its periods and ED visits."""
    sl, ed = table_of(StayLocationRow), table_of(EdVisitRow)
    a, b = conn.execute(
        select(func.max(sl.c.start_at), func.max(sl.c.end_at)).where(sl.c.hospital_id == hospital)
    ).one()
    c, d = conn.execute(
        select(func.max(ed.c.arrived_at), func.max(ed.c.departed_at)).where(
            ed.c.hospital_id == hospital
        )
    ).one()
    known = [as_utc(x) for x in (a, b, c, d) if x is not None]
    return max(known) if known else None  # type: ignore[type-var]


def widen_pending(conn: Connection, windows: dict[str, Window]) -> None:
    """Add `windows` to the hours left pending in `census_pending` (one row per hospital; an
    empty window, for the live occupancy alone, is stored without hours)."""
    pending: dict[str, Window] = {}
    take_pending(conn, pending)
    for hospital, window in windows.items():
        pending.setdefault(hospital, Window(NEVER_LO, NEVER_HI)).widen(window.lo, window.hi)
    rows = [
        {"hospital_id": h, "lo": None if w.empty else w.lo, "hi": None if w.empty else w.hi}
        for h, w in sorted(pending.items())
    ]
    bulk_write(conn, table_of(CensusPendingRow), rows, key=["hospital_id"])


def take_pending(conn: Connection, windows: dict[str, Window]) -> None:
    """Move the hours left pending in `census_pending` into `windows` (the rows are deleted:
    the transaction that recomputes them commits both)."""
    cp = table_of(CensusPendingRow)
    for hospital, lo, hi in conn.execute(select(cp.c.hospital_id, cp.c.lo, cp.c.hi)).all():
        window = windows.setdefault(hospital, Window(NEVER_LO, NEVER_HI))
        if lo is not None and hi is not None:
            window.widen(as_utc(lo), as_utc(hi))
    conn.execute(delete(cp))


def recompute_hospital(
    conn: Connection,
    hierarchy: Hierarchy,
    hospital: str,
    window: Window,
    result: SinkResult,
    horizon: datetime | None = None,
    counted_from: datetime | None = None,
) -> int:
    """Recompute the hospital's census hours in `window` (up to its watermark), its capacity
    alerts from the window's start and its live occupancy; returns the rows written.

    No hour after `horizon` is counted: a time far in the future (a feed's mistake, or an
    attack) would otherwise have every open stay counted up to it, hour by hour. Likewise a
    stay or ED visit that began before `counted_from`, and is still open or ended after it, is
    counted from `counted_from` on (as if admitted then): one open since 1901 would be counted
    for every hour since. One that ended before it is counted whole, however old."""
    sl, ed = table_of(StayLocationRow), table_of(EdVisitRow)
    known = watermark(conn, hospital)
    mark = min(known, horizon) if known is not None and horizon is not None else known
    rows_written = 0
    periods: list[Period] = []
    if window.lo <= window.hi:
        lo = floor_hour(window.lo)
        hi = max(window.hi, mark) if mark else window.hi
        if horizon is not None:
            hi = min(hi, horizon)
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
        if counted_from is not None:
            periods = [
                replace(p, start=counted_from) if p.start < counted_from < (p.end or hi) else p
                for p in periods
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
        if counted_from is not None:
            arrivals = [
                replace(a, at=counted_from) if a.at < counted_from < (a.departed or hi) else a
                for a in arrivals
            ]
        ch = table_of(CensusHourlyRow)
        stored = [
            to_utc(h)
            for (h,) in conn.execute(
                select(ch.c.hour)
                .distinct()
                .where(and_(ch.c.hospital_id == hospital, ch.c.hour >= lo, ch.c.hour <= hi))
            )
        ]
        slices = census_slices(periods, arrivals, lo, hi, SLICE, stored)
        for first, last, in_slice, arrived in slices:
            counts = hourly_census(in_slice, arrived, hierarchy, first, last, mark)
            rows_written += write_hours(conn, hospital, first, last, counts)
        rows_written += capacity_alerts(conn, hierarchy, periods, window.lo, result)
    rows_written += occupancy(conn, hierarchy, hospital, known)
    return rows_written


def write_hours(
    conn: Connection,
    hospital: str,
    lo: datetime,
    hi: datetime,
    counts: Sequence[HourCounts],
) -> int:
    """Make the hospital's `census_hourly` rows in `[lo, hi]` equal `counts`, writing only the
    rows that differ (most hours of a recomputed window do not change)."""
    ch = table_of(CensusHourlyRow)
    fields = (
        "occupancy",
        "admissions",
        "discharges",
        "transfers_in",
        "transfers_out",
        "ed_arrivals",
    )
    columns = [ch.c.unit_type, ch.c.unit_id, ch.c.hour, *(ch.c[f] for f in fields)]
    existing = {
        (unit_type, unit_id, as_utc(hour)): tuple(values)
        for unit_type, unit_id, hour, *values in conn.execute(
            select(*columns).where(
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


def occupancy(
    conn: Connection, hierarchy: Hierarchy, hospital: str, watermark: datetime | None
) -> int:
    sl, occ = table_of(StayLocationRow), table_of(LocationOccupancyRow)
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
    ed = table_of(EdVisitRow)
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
