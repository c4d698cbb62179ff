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

from parcours.db.pathway_models import (
    AppointmentRow,
    LocationOccupancyRow,
    LocationRow,
    StayLocationRow,
)
from streams.core.census import HOSPITAL, LEVELS, SERVICE, WARD, Hierarchy, Place, Unit

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


BOOKED_COLUMNS = ["start", "booked_at", "status"]


def booking_units(
    hierarchy: Hierarchy, hospital_id: str | None, service_code: str | None, location_id: str | None
) -> list[Unit]:
    """The census units an appointment names: its hospital (the referral's performer, else the
    Organization of its Location), the ward and service of its Location, else the service of its
    `serviceType` code in that hospital. Empty without a hospital."""
    place = hierarchy.places.get(location_id) if location_id else None
    hospital = hospital_id or (place.organization if place else None)
    if not hospital:
        return []
    units = hierarchy.units_of(hospital, location_id) if place else {}
    service = units.get(SERVICE)
    if service is None and service_code:
        service = Unit(SERVICE, f"{hospital}/{service_code}", hospital)
    found = [Unit(HOSPITAL, hospital, hospital), service, units.get(WARD)]
    return [u for u in found if u is not None]


def unit_bookings(
    engine: Engine, since: datetime, hierarchy: Hierarchy | None = None
) -> dict[Unit, pd.DataFrame]:
    """Appointments (`start`, `booked_at`, `status`) of every unit they name (`booking_units`),
    for those starting at or after `since`."""
    hierarchy = hierarchy or load_hierarchy(engine)
    a = AppointmentRow
    query = select(
        a.start_at, a.booked_at, a.status, a.hospital_id, a.service_code, a.location_id
    ).where(a.start_at >= since)
    found: dict[Unit, list[tuple[pd.Timestamp, pd.Timestamp, str]]] = defaultdict(list)
    with engine.connect() as conn:
        for row in conn.execute(query):
            units = booking_units(hierarchy, row.hospital_id, row.service_code, row.location_id)
            for unit in units:
                found[unit].append((_naive(row.start_at), _naive(row.booked_at), row.status))
    return {
        unit: pd.DataFrame(rows, columns=BOOKED_COLUMNS).astype(
            {"start": "datetime64[ns]", "booked_at": "datetime64[ns]"}
        )
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
