"""The dashboard's SQL. Parameterised, no Streamlit import, testable on its own.

Each function takes an Engine and returns plain data (DataFrames, dicts). The one write, the
acknowledgement of an alert, records who did it and when in `alert_audit`. A patient's pathway
and the pathway totals come from `streams.read`, which the `parcours pathways` commands print.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy import Engine, Executable, and_, func, insert, select, update

from parcours.db.forecast_models import ForecastAccuracyRow, ForecastRow
from parcours.db.ingest_models import IngestRejectionRow, IntegratorRow
from parcours.db.pathway_models import (
    AlertAuditRow,
    AlertRow,
    CensusHourlyRow,
    EdVisitRow,
    LocationOccupancyRow,
    LocationRow,
    PathwayStateRow,
    StayLocationRow,
    StreamProgressRow,
)
from parcours.db.reference_models import PendingReferenceRow


def _frame(engine: Engine, query: Executable) -> pd.DataFrame:
    with engine.connect() as conn:
        result = conn.execute(query)
        return pd.DataFrame(result.mappings().all(), columns=list(result.keys()))


# --- Bed board ----------------------------------------------------------------------------------


def bed_board(engine: Engine, unit_type: str = "ward") -> pd.DataFrame:
    """Live occupancy and capacity of every unit of `unit_type`, fullest first."""
    occ = LocationOccupancyRow
    frame = _frame(
        engine,
        select(occ.unit_id, occ.name, occ.hospital_id, occ.occupied, occ.capacity, occ.as_of).where(
            occ.unit_type == unit_type
        ),
    )
    frame["free"] = frame["capacity"] - frame["occupied"]
    frame["occupancy_rate"] = frame["occupied"] / frame["capacity"].where(frame["capacity"] > 0)
    return frame.sort_values(["occupancy_rate", "occupied"], ascending=False, na_position="last")


def census_history(
    engine: Engine, unit_type: str, unit_id: str, since: datetime | None = None
) -> pd.DataFrame:
    """Hourly counts of one unit (hours with no row are absent: read them as zero)."""
    c = CensusHourlyRow
    query = (
        select(
            c.hour,
            c.occupancy,
            c.admissions,
            c.discharges,
            c.transfers_in,
            c.transfers_out,
            c.ed_arrivals,
        )
        .where(c.unit_type == unit_type, c.unit_id == unit_id)
        .order_by(c.hour)
    )
    if since is not None:
        query = query.where(c.hour >= since)
    return _frame(engine, query)


# --- Alerts -------------------------------------------------------------------------------------


def alerts(
    engine: Engine,
    status: str | None = "open",
    alert_type: str | None = None,
    unacknowledged_only: bool = False,
) -> pd.DataFrame:
    """The alert worklist, newest first."""
    a = AlertRow
    query = select(
        a.alert_id,
        a.alert_type,
        a.patient_id,
        a.unit_id,
        a.status,
        a.raised_at,
        a.resolved_at,
        a.message,
        a.acknowledged_by,
        a.acknowledged_at,
    ).order_by(a.raised_at.desc())
    if status:
        query = query.where(a.status == status)
    if alert_type:
        query = query.where(a.alert_type == alert_type)
    if unacknowledged_only:
        query = query.where(a.acknowledged_at.is_(None))
    return _frame(engine, query)


def acknowledge_alert(
    engine: Engine, alert_id: str, actor: str, at: datetime, note: str | None = None
) -> bool:
    """Record that `actor` acknowledged the alert; False if it is unknown or already acknowledged.

    The alert row keeps the first acknowledgement; the audit trail keeps every action.
    """
    if not actor.strip():
        raise ValueError("an acknowledgement needs the name of the person who makes it")
    with engine.begin() as conn:
        changed = conn.execute(
            update(AlertRow)
            .where(AlertRow.alert_id == alert_id, AlertRow.acknowledged_at.is_(None))
            .values(acknowledged_by=actor.strip(), acknowledged_at=at)
        ).rowcount
        if changed:
            conn.execute(
                insert(AlertAuditRow).values(
                    alert_id=alert_id, action="acknowledge", actor=actor.strip(), at=at, note=note
                )
            )
    return bool(changed)


def alert_audit(engine: Engine, alert_id: str) -> pd.DataFrame:
    """Who did what to an alert, oldest first."""
    t = AlertAuditRow
    return _frame(
        engine,
        select(t.at, t.action, t.actor, t.note).where(t.alert_id == alert_id).order_by(t.at),
    )


# --- Pathways -----------------------------------------------------------------------------------


def find_patients(engine: Engine, text: str = "", limit: int = 50) -> list[str]:
    """Patient ids that contain `text`, most recently active first."""
    p = PathwayStateRow
    query = select(p.patient_id).order_by(p.last_event_at.desc().nulls_last()).limit(limit)
    if text:
        query = query.where(p.patient_id.contains(text, autoescape=True))
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(query)]


# --- Forecasts ----------------------------------------------------------------------------------


def forecast_units(engine: Engine, metric: str = "occupancy") -> list[str]:
    """Units that have a forecast for `metric`."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(ForecastRow.unit_id)
            .where(ForecastRow.metric == metric)
            .distinct()
            .order_by(ForecastRow.unit_id)
        )
        return [r[0] for r in rows]


def forecast(engine: Engine, unit_id: str, metric: str = "occupancy") -> pd.DataFrame:
    """Every model's latest forecast of one unit, with its interval."""
    f = ForecastRow
    return _frame(
        engine,
        select(
            f.model,
            f.ds,
            f.yhat,
            f.yhat_lower,
            f.yhat_upper,
            f.interval_width,
            f.run_at,
            f.history_end,
        )
        .where(f.unit_id == unit_id, f.metric == metric)
        .order_by(f.model, f.ds),
    )


def forecast_accuracy(engine: Engine, unit_id: str, metric: str = "occupancy") -> pd.DataFrame:
    """Backtest scores of every model on one unit, best (lowest MAE) first."""
    a = ForecastAccuracyRow
    return _frame(
        engine,
        select(a.model, a.horizon, a.folds, a.mae, a.rmse, a.mape, a.coverage, a.computed_at)
        .where(a.unit_id == unit_id, a.metric == metric)
        .order_by(a.horizon, a.mae),
    )


# --- Feed health --------------------------------------------------------------------------------


def feeds(engine: Engine) -> pd.DataFrame:
    """Every integrator with its counters and last contact."""
    i = IntegratorRow
    return _frame(
        engine,
        select(
            i.name,
            i.active,
            i.last_seen_at,
            i.accepted_total,
            i.duplicate_total,
            i.rejected_total,
        ).order_by(i.name),
    )


def recent_rejections(
    engine: Engine, since: datetime | None = None, source: str | None = None, limit: int = 200
) -> pd.DataFrame:
    """The latest refused requests or entries, with the element at fault."""
    r = IngestRejectionRow
    query = (
        select(
            r.received_at,
            r.source,
            r.http_status,
            r.reason,
            r.resource_type,
            r.resource_id,
            r.expression,
            r.diagnostics,
        )
        .order_by(r.received_at.desc())
        .limit(limit)
    )
    conditions = []
    if since is not None:
        conditions.append(r.received_at >= since)
    if source:
        conditions.append(r.source == source)
    if conditions:
        query = query.where(and_(*conditions))
    return _frame(engine, query)


# --- Stream workers -----------------------------------------------------------------------------

# A worker reports every few seconds (PARCOURS_WORKER_PROGRESS_INTERVAL_S, 5 by default).
SILENT_AFTER = timedelta(minutes=2)


def stream_progress(
    engine: Engine, now: datetime, silent_after: timedelta = SILENT_AFTER
) -> pd.DataFrame:
    """Each raw partition as its stream worker last reported it, with a status in words: how
    far the bed board is behind what the gateway accepted, or that its worker went silent."""
    p = StreamProgressRow
    frame = _frame(
        engine,
        select(
            p.topic, p.partition, p.worker, p.lag, p.processed_offset, p.highwater, p.reported_at
        ).order_by(p.topic, p.partition),
    )
    frame["status"] = [
        progress_status(lag, reported_at, now, silent_after)
        for lag, reported_at in zip(frame["lag"], frame["reported_at"], strict=True)
    ]
    return frame


def stream_freshness(progress: pd.DataFrame) -> tuple[int, int]:
    """(partitions whose worker went silent, messages accepted but not yet applied)."""
    if progress.empty:
        return 0, 0
    silent = int(progress["status"].str.startswith("no report").sum())
    return silent, int(progress["lag"].fillna(0).sum())


def progress_status(
    lag: float | None, reported_at: datetime, now: datetime, silent_after: timedelta
) -> str:
    """What one partition's last report means for the people reading the board."""
    reported = pd.Timestamp(reported_at)
    if reported.tzinfo is None:  # SQLite (the demo) hands back naive times; they are UTC
        reported = reported.tz_localize("UTC")
    silent = now - reported.to_pydatetime()
    if silent > silent_after:
        minutes = int(silent.total_seconds() // 60)
        return f"no report for {minutes} min: is its stream worker running?"
    if lag is None or pd.isna(lag):
        return "starting"
    if lag > 0:
        return f"catching up: {int(lag):,} messages to apply"
    return "up to date"


def unresolved_references(engine: Engine, limit: int = 200) -> pd.DataFrame:
    """Conditional references accepted before their target (deferred) and still waiting for it,
    by source and element, most recent first."""
    p = PendingReferenceRow
    return _frame(
        engine,
        select(
            p.source,
            p.element,
            p.resource_type,
            p.system,
            p.value,
            p.occurrences,
            p.first_seen_at,
            p.last_seen_at,
        )
        .where(p.resolved_at.is_(None))
        .order_by(p.last_seen_at.desc())
        .limit(limit),
    )


def places_not_received(engine: Engine) -> pd.DataFrame:
    """Locations that stays and ED visits name but that no feed has sent yet, with how many
    periods or visits wait for each (counted at their hospital meanwhile)."""
    sl, ed, loc = StayLocationRow, EdVisitRow, LocationRow
    periods = (
        select(
            sl.hospital_id.label("hospital_id"),
            sl.location_id.label("location_id"),
        )
        .where(sl.location_id.is_not(None))
        .where(~select(loc.location_id).where(loc.location_id == sl.location_id).exists())
    )
    visits = (
        select(ed.hospital_id.label("hospital_id"), ed.ward_id.label("location_id"))
        .where(ed.ward_id.is_not(None))
        .where(~select(loc.location_id).where(loc.location_id == ed.ward_id).exists())
    )
    both = periods.union_all(visits).subquery()
    return _frame(
        engine,
        select(both.c.hospital_id, both.c.location_id, func.count().label("waiting"))
        .group_by(both.c.hospital_id, both.c.location_id)
        .order_by(func.count().desc())
        .limit(200),
    )
