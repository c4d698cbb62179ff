"""The "ward above capacity" alerts, recomputed from the periods of a window."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.engine import Connection

from parcours.db.bulk import bulk_delete, bulk_write, chunks, one_of, table_of
from parcours.db.pathway_models import AlertRow, StayLocationRow
from streams.core.census import WARD, Hierarchy, Period, Unit, over_capacity_episodes, ward_periods
from streams.sink.rows import ALERT_COLUMNS, SinkResult, as_utc, period_of

WARD_OVER_CAPACITY = "ward_over_capacity"


def ward_periods_since(conn: Connection, ward: str, since: datetime) -> list[Period]:
    """Every period in `ward` that overlaps `[since, ∞)`."""
    sl = table_of(StayLocationRow)
    return [
        period_of(r)
        for r in conn.execute(
            select(sl).where(
                and_(sl.c.ward_id == ward, or_(sl.c.end_at.is_(None), sl.c.end_at >= since))
            )
        ).all()
    ]


def capacity_alerts(
    conn: Connection,
    hierarchy: Hierarchy,
    periods: Iterable[Period],
    since: datetime,
    result: SinkResult,
) -> int:
    """Raise and resolve "ward above capacity" alerts from the periods, from `since` on."""
    al = table_of(AlertRow)
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
                    ward, ward_periods_since(conn, ward, floor), capacity, floor
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
                "message": (f"Ward {name} above capacity: {e.peak} patients for {e.capacity} beds"),
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
