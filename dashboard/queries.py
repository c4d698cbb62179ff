"""The dashboard's SQL. Parameterised, no Streamlit import, testable on its own.

Each function takes an Engine and returns plain data (DataFrames, dicts). The one write, the
acknowledgement of an alert, records who did it and when in `alert_audit`. A patient's pathway
and the pathway totals come from `streams.read`, which the `parcours pathways` commands print.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy import Engine, Executable, and_, insert, select, update

from parcours.db.forecast_models import (
    ForecastAccuracyRow,
    ForecastRow,
    ForecastSeriesRow,
    ForecastTermRow,
)
from parcours.db.ingest_models import IngestRejectionRow, IntegratorRow
from parcours.db.pathway_models import (
    AlertAuditRow,
    AlertRow,
    CensusHourlyRow,
    LocationOccupancyRow,
    PathwayStateRow,
    StreamProgressRow,
)


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
    """Backtest scores of every model on one unit, best (lowest MASE, then MAE) first."""
    a = ForecastAccuracyRow
    frame = _frame(
        engine,
        select(
            a.model,
            a.horizon,
            a.folds,
            a.mae,
            a.rmse,
            a.mase,
            a.mape,
            a.coverage,
            a.mae_by_lead,
            a.coverage_by_lead,
            a.computed_at,
        ).where(a.unit_id == unit_id, a.metric == metric),
    )
    if frame.empty:
        return frame
    order = frame["mase"].fillna(float("inf"))
    frame = frame.assign(_order=order).sort_values(["horizon", "_order", "mae"])
    return frame.drop(columns="_order").reset_index(drop=True)


def forecast_series(engine: Engine, metric: str = "occupancy") -> pd.DataFrame:
    """Every forecast series of `metric`: its level, the model its backtest selected, and the
    window that backtest covered; with the unit's display name when the census knows it."""
    f = ForecastSeriesRow
    frame = _frame(
        engine,
        select(
            f.unit_id,
            f.unit_type,
            f.freq,
            f.horizon,
            f.selected_model,
            f.capacity,
            f.history_points,
            f.history_end,
            f.folds,
            f.window_start,
            f.window_end,
            f.target_coverage,
            f.computed_at,
        )
        .where(f.metric == metric)
        .order_by(f.unit_type, f.unit_id),
    )
    occ = LocationOccupancyRow
    names = _frame(engine, select(occ.unit_type, occ.unit_id, occ.name))
    if frame.empty:
        return frame.assign(name=pd.Series(dtype=str))
    merged = frame.merge(names, on=["unit_type", "unit_id"], how="left")
    merged["name"] = merged["name"].fillna(merged["unit_id"])
    return merged


def forecast_terms(
    engine: Engine, unit_id: str, metric: str = "occupancy", model: str | None = None
) -> pd.DataFrame:
    """How the stock–flow forecasts of one unit break down (census now, expected discharges,
    expected admissions), per model and target time."""
    t = ForecastTermRow
    query = select(
        t.model, t.ds, t.now, t.expected_discharges, t.expected_admissions, t.run_at
    ).where(t.unit_id == unit_id, t.metric == metric)
    if model is not None:
        query = query.where(t.model == model)
    return _frame(engine, query.order_by(t.model, t.ds))


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
