"""Stays per census unit, read from SQL, for the stay-based stock–flow model.

A stay's periods (`stay_locations`) are merged per unit at each level, as the census merges them:
a patient moved between two beds of a ward stays one episode in that ward, and a transfer to
another ward of the same service stays one episode in the service. Each episode has a start and
an end (NaT while the patient is there). Times are naive UTC, like the series.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

import pandas as pd
from sqlalchemy import Engine, or_, select

from parcours.db.pathway_models import LocationOccupancyRow, LocationRow, StayLocationRow
from streams.core.census import LEVELS, SERVICE, WARD, Hierarchy, Place, Unit

# A service pools its wards' stays for the length-of-stay curve of a ward with fewer stays.
MIN_OWN_STAYS = 50


def _naive(at: datetime | None) -> pd.Timestamp:
    if at is None:
        return pd.NaT
    stamp = pd.Timestamp(at)
    return stamp.tz_convert(UTC).tz_localize(None) if stamp.tzinfo else stamp


def load_hierarchy(engine: Engine) -> Hierarchy:
    """The Location tree from the `locations` table."""
    with engine.connect() as conn:
        rows = conn.execute(select(LocationRow.__table__)).mappings().all()
    return Hierarchy(
        {
            r["location_id"]: Place(
                location_id=r["location_id"],
                physical_type=r["physical_type"],
                part_of=r["part_of"],
                status=r["status"] or "active",
                name=r["name"],
                service_code=r["service_code"],
                service_name=r["service_name"],
                organization=r["organization"],
            )
            for r in rows
        }
    )


def unit_episodes(
    engine: Engine, since: datetime, hierarchy: Hierarchy | None = None
) -> dict[Unit, pd.DataFrame]:
    """Episodes (`start`, `end`) of every ward, service and hospital, for the stays still open
    at or begun after `since`. Rows are streamed, so memory follows the episodes kept."""
    hierarchy = hierarchy or load_hierarchy(engine)
    sl = StayLocationRow
    query = (
        select(
            sl.stay_id,
            sl.seq,
            sl.hospital_id,
            sl.location_id,
            sl.ward_ref,
            sl.start_at,
            sl.end_at,
        )
        .where(or_(sl.end_at.is_(None), sl.end_at >= since))
        .order_by(sl.stay_id, sl.seq)
    )
    found: dict[Unit, list[tuple[pd.Timestamp, pd.Timestamp]]] = defaultdict(list)

    def close(stay: list[tuple[dict[str, Unit | None], pd.Timestamp, pd.Timestamp]]) -> None:
        for level in LEVELS:
            current: Unit | None = None
            start = end = pd.NaT
            for units, p_start, p_end in stay:
                unit = units[level]
                if unit == current and current is not None:
                    end = p_end
                    continue
                if current is not None:
                    found[current].append((start, end))
                current, start, end = unit, p_start, p_end
            if current is not None:
                found[current].append((start, end))

    with engine.connect() as conn:
        result = conn.execution_options(yield_per=5000).execute(query)
        stay_id: str | None = None
        stay: list[tuple[dict[str, Unit | None], pd.Timestamp, pd.Timestamp]] = []
        for row in result:
            if row.stay_id != stay_id:
                close(stay)
                stay_id, stay = row.stay_id, []
            units = hierarchy.units_of(row.hospital_id, row.location_id, row.ward_ref)
            stay.append((units, _naive(row.start_at), _naive(row.end_at)))
        close(stay)
    return {
        unit: pd.DataFrame(rows, columns=["start", "end"]).astype("datetime64[ns]")
        for unit, rows in found.items()
    }


def los_pools(episodes: dict[Unit, pd.DataFrame], hierarchy: Hierarchy) -> dict[Unit, pd.DataFrame]:
    """The stays each unit's length-of-stay curve is learnt from: its own, or for a ward with
    fewer than `MIN_OWN_STAYS` finished stays, those of every ward of its service."""
    by_service: dict[Unit, list[pd.DataFrame]] = defaultdict(list)
    service_of: dict[Unit, Unit] = {}
    for unit, frame in episodes.items():
        if unit.unit_type != WARD:
            continue
        service = hierarchy.units_of(unit.hospital_id, unit.unit_id)[SERVICE]
        if service is not None:
            by_service[service].append(frame)
            service_of[unit] = service
    pools: dict[Unit, pd.DataFrame] = {}
    for unit, frame in episodes.items():
        own = int(frame["end"].notna().sum())
        if unit.unit_type == WARD and own < MIN_OWN_STAYS and unit in service_of:
            pools[unit] = pd.concat(by_service[service_of[unit]], ignore_index=True)
        else:
            pools[unit] = frame
    return pools


def capacities(engine: Engine) -> dict[tuple[str, str], float]:
    """Capacity of every unit known to the live census, by (unit_type, unit_id)."""
    o = LocationOccupancyRow
    with engine.connect() as conn:
        rows = conn.execute(select(o.unit_type, o.unit_id, o.capacity)).all()
    return {(r[0], r[1]): float(r[2]) for r in rows if r[2] is not None}
