"""Read the pathway and census tables: plain functions returning JSON-able dicts.

`parcours pathways …` and `parcours census …` print these; scripts and the dashboard can call them.
Times come back as ISO 8601 strings in UTC. Every query is parameterised.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, func, or_, select

from parcours.db.hl7_models import PatientIdentifierRow
from parcours.db.pathway_models import (
    AlertRow,
    CensusPendingRow,
    CommunityVisitRow,
    EdVisitRow,
    LocationOccupancyRow,
    LocationRow,
    PathwayStateRow,
    ReferralRow,
    StayLocationRow,
    StayRow,
)
from parcours.db.reference_models import IdentifierIndexRow
from parcours.timeutil import to_utc
from streams.core.census import BED, HOSPITAL, SERVICE, WARD, Hierarchy, occupancy_at
from streams.sink.rows import as_utc, period_of, place_of

LEVEL_ORDER = {HOSPITAL: 0, SERVICE: 1, WARD: 2, BED: 3}


def iso(value: datetime | None) -> str | None:
    """An aware UTC ISO 8601 string (SQLite gives naive UTC datetimes back)."""
    value = as_utc(value)
    return value.astimezone(UTC).isoformat() if value is not None else None


def _row(row: Any, times: tuple[str, ...]) -> dict[str, Any]:
    out = dict(row._mapping)
    for name in times:
        out[name] = iso(out.get(name))
    return out


def patients_with_identifier(engine: Engine, value: str, limit: int = 20) -> list[str]:
    """The patient ids that carry an identifier of this value (an IPP, an INS…), any system:
    from HL7 v2 feeds (`patient_identifiers`) and FHIR Patients the gateway accepted
    (`identifier_index`)."""
    t = PatientIdentifierRow.__table__
    ix = IdentifierIndexRow.__table__
    with engine.connect() as conn:
        found = {
            r[0]
            for r in conn.execute(
                select(t.c.patient_id).where(t.c.value == value).distinct().limit(limit)
            )
        }
        found.update(
            r[0]
            for r in conn.execute(
                select(ix.c.resource_id)
                .where(ix.c.resource_type == "Patient", ix.c.value == value)
                .distinct()
                .limit(limit)
            )
        )
    return sorted(found)[:limit]


def pathway(engine: Engine, patient_id: str) -> dict[str, Any] | None:
    """A patient's pathway: stays with their places, ED and community visits, referrals, open
    alerts. None when the patient is unknown."""
    st, sl, ed = StayRow.__table__, StayLocationRow.__table__, EdVisitRow.__table__
    cv, rf, al = CommunityVisitRow.__table__, ReferralRow.__table__, AlertRow.__table__
    ps = PathwayStateRow.__table__
    with engine.connect() as conn:
        state = conn.execute(
            select(ps.c.state, ps.c.last_event_at).where(ps.c.patient_id == patient_id)
        ).first()
        if state is None:
            return None
        stays = [
            _row(r, ("admitted_at", "discharged_at"))
            for r in conn.execute(
                select(st).where(st.c.patient_id == patient_id).order_by(st.c.admitted_at)
            )
        ]
        places: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in conn.execute(
            select(sl).where(sl.c.patient_id == patient_id).order_by(sl.c.stay_id, sl.c.seq)
        ):
            row = _row(r, ("start_at", "end_at"))
            places[row["stay_id"]].append(
                {
                    k: row[k]
                    for k in (
                        "hospital_id",
                        "ward_id",
                        "bed_id",
                        "location_id",
                        "start_at",
                        "end_at",
                    )
                }
            )
        named = sorted({p["location_id"] for ps in places.values() for p in ps if p["location_id"]})
        lt = LocationRow.__table__
        known = (
            {
                r[0]
                for r in conn.execute(select(lt.c.location_id).where(lt.c.location_id.in_(named)))
            }
            if named
            else set()
        )
        for stay in stays:
            stay["locations"] = places.get(stay["stay_id"], [])
            for place in stay["locations"]:
                # A Location the feed named but not yet sent: the period is counted at its
                # hospital and placed once the Location arrives.
                place["location_known"] = place["location_id"] is None or (
                    place["location_id"] in known
                )
        ed_visits = [
            _row(r, ("arrived_at", "departed_at"))
            for r in conn.execute(
                select(ed).where(ed.c.patient_id == patient_id).order_by(ed.c.arrived_at)
            )
        ]
        community = [
            _row(r, ("start_at", "end_at"))
            for r in conn.execute(
                select(cv).where(cv.c.patient_id == patient_id).order_by(cv.c.start_at)
            )
        ]
        referrals = [
            _row(r, ("authored_at",))
            for r in conn.execute(
                select(rf).where(rf.c.patient_id == patient_id).order_by(rf.c.authored_at)
            )
        ]
        alerts = [
            _row(r, ("raised_at", "resolved_at", "acknowledged_at"))
            for r in conn.execute(
                select(al)
                .where(and_(al.c.patient_id == patient_id, al.c.status == "open"))
                .order_by(al.c.raised_at)
            )
        ]
    data = state.state or {}
    return {
        "patient_id": patient_id,
        "stage": data.get("stage"),
        "stage_since": data.get("stage_since"),
        "last_event_at": iso(state.last_event_at),
        "stays": stays,
        "ed_visits": ed_visits,
        "community_visits": community,
        "referrals": referrals,
        "open_alerts": alerts,
    }


def census_pending(engine: Engine) -> bool:
    """Whether census hours that a backlog's batches changed are still to be recomputed (the
    worker does it when the backlog ends, every minute meanwhile, or once idle)."""
    with engine.connect() as conn:
        return conn.execute(select(CensusPendingRow.hospital_id).limit(1)).first() is not None


def summary(engine: Engine) -> dict[str, Any]:
    """Totals: patients, stays, ED visits, community visits, LOS, open alerts by type."""
    st, ed, cv = StayRow.__table__, EdVisitRow.__table__, CommunityVisitRow.__table__
    ps, al = PathwayStateRow.__table__, AlertRow.__table__
    with engine.connect() as conn:
        los = [
            float(x)
            for x in conn.scalars(select(st.c.los_hours).where(st.c.los_hours.is_not(None)))
        ]
        open_alerts = {
            kind: n
            for kind, n in conn.execute(
                select(al.c.alert_type, func.count())
                .where(al.c.status == "open")
                .group_by(al.c.alert_type)
                .order_by(al.c.alert_type)
            )
        }
        return {
            "patients": conn.scalar(select(func.count()).select_from(ps)) or 0,
            "stays": conn.scalar(select(func.count()).select_from(st)) or 0,
            "open_stays": conn.scalar(
                select(func.count()).select_from(st).where(st.c.discharged_at.is_(None))
            )
            or 0,
            "ed_visits": conn.scalar(select(func.count()).select_from(ed)) or 0,
            "community_visits": conn.scalar(select(func.count()).select_from(cv)) or 0,
            "los_hours_mean": round(statistics.fmean(los), 2) if los else None,
            "los_hours_median": round(statistics.median(los), 2) if los else None,
            "open_alerts": open_alerts,
        }


def _hierarchy(engine: Engine) -> Hierarchy:
    with engine.connect() as conn:
        rows = conn.execute(select(LocationRow.__table__)).mappings().all()
    return Hierarchy({r["location_id"]: place_of(dict(r)) for r in rows})


def census(
    engine: Engine, at: datetime | None = None, capacity: dict[str, int] | None = None
) -> dict[str, Any]:
    """Occupancy and capacity per hospital, service and ward; now (the live table) or `at`."""
    if at is None:
        occ = LocationOccupancyRow.__table__
        with engine.connect() as conn:
            rows = [
                _row(r, ("as_of",)) for r in conn.execute(select(occ).where(occ.c.unit_type != BED))
            ]
        as_of = max((r["as_of"] for r in rows if r["as_of"]), default=None)
        units = [
            {
                k: r[k]
                for k in ("unit_type", "unit_id", "hospital_id", "name", "occupied", "capacity")
            }
            for r in rows
        ]
    else:
        at = to_utc(at)
        hierarchy = _hierarchy(engine)
        hierarchy.capacity_overrides = capacity or {}
        sl = StayLocationRow.__table__
        with engine.connect() as conn:
            periods = [
                period_of(r)
                for r in conn.execute(
                    select(sl).where(
                        and_(sl.c.start_at <= at, or_(sl.c.end_at.is_(None), sl.c.end_at > at))
                    )
                )
            ]
        units = [
            {
                "unit_type": o.unit.unit_type,
                "unit_id": o.unit.unit_id,
                "hospital_id": o.unit.hospital_id,
                "name": o.name,
                "occupied": o.occupied,
                "capacity": o.capacity,
            }
            for o in occupancy_at(periods, hierarchy, at)
            if o.unit.unit_type != BED
        ]
        as_of = at.astimezone(UTC).isoformat()
    units.sort(key=lambda u: (u["hospital_id"], LEVEL_ORDER.get(u["unit_type"], 9), u["unit_id"]))
    return {"as_of": as_of, "units": units}
