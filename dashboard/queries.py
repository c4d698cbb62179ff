"""The dashboard's SQL. Parameterised, no Streamlit import, testable on its own.

Each function takes an Engine and returns plain data (DataFrames, dicts). The one write, the
acknowledgement of an alert, records who did it and when in `alert_audit`. A patient's pathway
and the pathway totals come from `streams.read`, which the `parcours pathways` commands print.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Engine, Executable, and_, func, insert, or_, select, update

from dashboard import i18n
from dashboard.forecast_text import STITCHED
from parcours.db.forecast_models import (
    ForecastAccuracyRow,
    ForecastRow,
    ForecastSeriesRow,
    ForecastTermRow,
)
from parcours.db.hl7_models import Hl7MessageCountRow
from parcours.db.ingest_models import IngestRejectionRow, IntegratorRow
from parcours.db.pathway_models import (
    AlertAuditRow,
    AlertRow,
    CensusHourlyRow,
    CommunityVisitRow,
    EdVisitRow,
    LocationOccupancyRow,
    LocationRow,
    PathwayStateRow,
    StayLocationRow,
    StayRow,
    StreamProgressRow,
)
from parcours.db.reference_models import PendingReferenceRow
from parcours.timeutil import to_utc


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


def census_at_midnight(
    engine: Engine, unit_type: str, unit_id: str, since: datetime, until: datetime
) -> pd.DataFrame:
    """The patients present in one unit at each 00:00 UTC from `since` to `until` (both
    included), as the daily forecasts count them: columns `ds` (aware UTC) and `y`.

    The census writes no row for an hour with nothing to count, so a midnight without a row,
    after the unit's first row, counts zero; midnights before that first row are left out."""
    c = CensusHourlyRow
    start, end = (pd.Timestamp(i18n.as_local(t, "UTC")) for t in (since, until))
    rows = _frame(
        engine,
        select(c.hour, c.occupancy)
        .where(
            c.unit_type == unit_type,
            c.unit_id == unit_id,
            c.hour >= start.to_pydatetime(),
            c.hour <= end.to_pydatetime(),
        )
        .order_by(c.hour),
    )
    if rows.empty:
        return pd.DataFrame({"ds": pd.DatetimeIndex([], tz="UTC"), "y": pd.Series(dtype=float)})
    hours = pd.to_datetime(rows["hour"], utc=True)
    midnights = pd.date_range(hours.min().ceil("D"), end.floor("D"), freq="D")
    counts = pd.Series(rows["occupancy"].astype(float).to_numpy(), index=hours)
    return pd.DataFrame(
        {"ds": midnights, "y": counts.reindex(midnights, fill_value=0.0).to_numpy()}
    )


# --- Alerts -------------------------------------------------------------------------------------


def _alert_filters(
    status: str | None, alert_type: str | None, unacknowledged_only: bool, unit_ids: Sequence[str]
) -> list[Any]:
    a = AlertRow
    conditions: list[Any] = []
    if status:
        conditions.append(a.status == status)
    if alert_type:
        conditions.append(a.alert_type == alert_type)
    if unacknowledged_only:
        conditions.append(a.acknowledged_at.is_(None))
    if unit_ids:
        conditions.append(or_(a.unit_id.in_(list(unit_ids)), a.unit_id.is_(None)))
    return conditions


def alerts(
    engine: Engine,
    status: str | None = "open",
    alert_type: str | None = None,
    unacknowledged_only: bool = False,
    unit_ids: Sequence[str] = (),
    limit: int = 500,
) -> pd.DataFrame:
    """The alert worklist, newest first (at most `limit`); with `unit_ids`, only the alerts of
    those hospitals and wards, and those tied to no unit (a community referral)."""
    a = AlertRow
    query = (
        select(
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
        )
        .where(*_alert_filters(status, alert_type, unacknowledged_only, unit_ids))
        .order_by(a.raised_at.desc())
        .limit(limit)
    )
    return _frame(engine, query)


def count_alerts(
    engine: Engine,
    status: str | None = "open",
    alert_type: str | None = None,
    unacknowledged_only: bool = False,
    unit_ids: Sequence[str] = (),
) -> int:
    """How many alerts the same filters as `alerts` match, without a limit."""
    query = (
        select(func.count())
        .select_from(AlertRow)
        .where(*_alert_filters(status, alert_type, unacknowledged_only, unit_ids))
    )
    with engine.connect() as conn:
        return int(conn.scalar(query) or 0)


def acknowledge_alert(
    engine: Engine,
    alert_id: str,
    actor: str,
    at: datetime,
    note: str | None = None,
    role: str | None = None,
) -> bool:
    """Record that `actor` (the signed-in user, with their `role`) acknowledged the alert; False
    if it is unknown or already acknowledged.

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
                    alert_id=alert_id,
                    action="acknowledge",
                    actor=actor.strip(),
                    at=at,
                    note=note,
                    role=role,
                )
            )
    return bool(changed)


def alert_audit(engine: Engine, alert_id: str) -> pd.DataFrame:
    """Who did what to an alert, oldest first."""
    t = AlertAuditRow
    return _frame(
        engine,
        select(t.at, t.action, t.actor, t.role, t.note)
        .where(t.alert_id == alert_id)
        .order_by(t.at),
    )


def acknowledgements(engine: Engine, actor: str = "", limit: int = 500) -> pd.DataFrame:
    """The latest acknowledgements, newest first, with the alert's patient and type."""
    t, a = AlertAuditRow, AlertRow
    query = (
        select(t.at, t.actor, t.role, t.action, a.patient_id, a.alert_type, t.note, t.alert_id)
        .join(a, a.alert_id == t.alert_id, isouter=True)
        .order_by(t.at.desc(), t.audit_id.desc())
        .limit(limit)
    )
    if actor:
        query = query.where(t.actor == actor)
    return _frame(engine, query)


# --- Pathways -----------------------------------------------------------------------------------


def find_patients(
    engine: Engine, text: str = "", limit: int = 50, hospital_ids: Sequence[str] = ()
) -> list[str]:
    """Patient ids that contain `text`, most recently active first; with `hospital_ids`, only
    patients with a stay or an ED visit there."""
    p = PathwayStateRow
    query = select(p.patient_id).order_by(p.last_event_at.desc().nulls_last()).limit(limit)
    if text:
        query = query.where(p.patient_id.contains(text, autoescape=True))
    if hospital_ids:
        known = list(hospital_ids)
        query = query.where(
            or_(
                p.patient_id.in_(select(StayRow.patient_id).where(StayRow.hospital_id.in_(known))),
                p.patient_id.in_(
                    select(EdVisitRow.patient_id).where(EdVisitRow.hospital_id.in_(known))
                ),
            )
        )
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
    """Backtest scores of every model on one unit, best (lowest MASE, then MAE) first: those of
    the latest backtest's horizon (rows of another horizon, from runs before the horizon was
    changed, would give a model twice)."""
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
    latest = frame.loc[pd.to_datetime(frame["computed_at"], utc=True).idxmax(), "horizon"]
    frame = frame[frame["horizon"] == latest]
    order = frame["mase"].fillna(float("inf"))
    frame = frame.assign(_order=order).sort_values(["_order", "mae"])
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


# --- A unit's outlook on the bed board ----------------------------------------------------------

# The stock–flow models, whose forecasts break down into terms; the first one is the default.
STOCK_FLOW_MODELS = ("stock_flow", "stock_flow_flat", "stock_flow_trend")


@dataclass(frozen=True)
class UnitForecast:
    """The latest forecast of one unit by the model its backtest selected.

    `points`: ds, yhat, yhat_lower, yhat_upper (UTC, oldest first). `terms`: ds, now,
    expected_discharges, expected_admissions of `terms_model` (the selected model when it is a
    stock–flow one, else the plain stock–flow model), empty when none was stored; the departures
    and admissions are counted from `history_end` to `ds`.
    """

    unit_id: str
    unit_type: str | None
    model: str
    terms_model: str | None
    freq: str
    horizon: int
    coverage: float
    capacity: float | None
    history_end: datetime
    run_at: datetime | None
    points: pd.DataFrame
    terms: pd.DataFrame


def _terms_model(selected: str, models: Sequence[str]) -> str | None:
    if selected in models:
        return selected
    for model in STOCK_FLOW_MODELS:
        if model in models:
            return model
    return sorted(models)[0] if models else None


def unit_forecast(engine: Engine, unit_id: str, metric: str = "occupancy") -> UnitForecast | None:
    """The selected forecast of `unit_id` with its interval and its breakdown; None when the
    forecaster has not written one yet."""
    s, f, t = ForecastSeriesRow, ForecastRow, ForecastTermRow
    with engine.connect() as conn:
        series = conn.execute(
            select(
                s.unit_type,
                s.freq,
                s.horizon,
                s.selected_model,
                s.capacity,
                s.history_end,
                s.target_coverage,
            ).where(s.unit_id == unit_id, s.metric == metric)
        ).first()
        if series is None:
            return None
        models = list(
            conn.scalars(select(t.model).where(t.unit_id == unit_id, t.metric == metric).distinct())
        )
    selected = str(series.selected_model)
    # The stitched forecast (one model per band of leads), where the forecaster wrote one, else
    # the selected model's.
    found = _frame(
        engine,
        select(f.model, f.ds, f.yhat, f.yhat_lower, f.yhat_upper, f.run_at, f.history_end)
        .where(
            f.unit_id == unit_id,
            f.metric == metric,
            (f.model == selected) | f.model.startswith(STITCHED, autoescape=True),
        )
        .order_by(f.ds),
    )
    stitched = found["model"].astype(str).str.startswith(STITCHED)
    points = (found[stitched] if stitched.any() else found).drop(columns="model")
    points = points.reset_index(drop=True)
    if points.empty:
        return None
    terms_model = _terms_model(selected, models)
    terms = pd.DataFrame(columns=["ds", "now", "expected_discharges", "expected_admissions"])
    if terms_model is not None:
        terms = _frame(
            engine,
            select(t.ds, t.now, t.expected_discharges, t.expected_admissions)
            .where(t.unit_id == unit_id, t.metric == metric, t.model == terms_model)
            .order_by(t.ds),
        )
    return UnitForecast(
        unit_id=unit_id,
        unit_type=series.unit_type,
        model=selected,
        terms_model=terms_model if not terms.empty else None,
        freq=str(series.freq),
        horizon=int(series.horizon),
        coverage=float(series.target_coverage),
        capacity=None if series.capacity is None else float(series.capacity),
        history_end=points["history_end"].iloc[-1],
        run_at=points["run_at"].iloc[-1],
        points=points.drop(columns=["run_at", "history_end"]),
        terms=terms,
    )


def departures_between(terms: pd.DataFrame, start: datetime, end: datetime) -> float | None:
    """Expected departures of the patients counted at the forecast's origin, from `start` to
    `end`, read off its cumulative terms (each the count from the origin to `ds`); None when the
    terms do not reach `start`."""
    if terms.empty:
        return None
    ds = pd.to_datetime(terms["ds"], utc=True)
    cumulative = terms["expected_discharges"].astype(float)
    start_at, end_at = pd.Timestamp(start), pd.Timestamp(end)
    if ds.iloc[-1] < start_at:
        return None
    before_start = cumulative[ds <= start_at]
    before_end = cumulative[ds <= end_at]
    done = float(before_start.iloc[-1]) if not before_start.empty else 0.0
    by_end = float(before_end.iloc[-1]) if not before_end.empty else 0.0
    return max(0.0, by_end - done)


def expected_departures(
    engine: Engine, unit_ids: Sequence[str], start: datetime, end: datetime
) -> tuple[float, list[str]]:
    """Departures expected from `start` to `end`, summed over the units of `unit_ids` whose
    forecast covers `start`; with the list of those units. Two queries, whatever the count."""
    s, t = ForecastSeriesRow, ForecastTermRow
    ids = list(unit_ids)
    if not ids:
        return 0.0, []
    with engine.connect() as conn:
        selected = dict(
            conn.execute(
                select(s.unit_id, s.selected_model).where(
                    s.unit_id.in_(ids), s.metric == "occupancy"
                )
            ).all()
        )
    if not selected:
        return 0.0, []
    terms = _frame(
        engine,
        select(t.unit_id, t.model, t.ds, t.expected_discharges)
        .where(t.unit_id.in_(list(selected)), t.metric == "occupancy")
        .order_by(t.unit_id, t.model, t.ds),
    )
    total, covered = 0.0, []
    for unit_id in ids:
        if unit_id not in selected:
            continue
        mine = terms[terms["unit_id"] == unit_id]
        model = _terms_model(str(selected[unit_id]), sorted(set(mine["model"])))
        if model is None:
            continue
        gone = departures_between(mine[mine["model"] == model], start, end)
        if gone is not None:
            total += gone
            covered.append(unit_id)
    return total, covered


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


def hl7_messages(engine: Engine) -> pd.DataFrame:
    """HL7 v2 messages per integrator, sending facility (MSH-4) and trigger: how many, how many
    acknowledged (AA), refused (AE, AR), and the refusal reasons."""
    h = Hl7MessageCountRow
    counts = _frame(
        engine,
        select(
            h.integrator, h.sending_facility, h.trigger, h.ack_code, h.reason, h.count, h.last_at
        ),
    )
    columns = [
        "integrator",
        "sending_facility",
        "trigger",
        "messages",
        "AA",
        "AE",
        "AR",
        "reasons",
        "last_at",
    ]
    if counts.empty:
        return pd.DataFrame(columns=columns)
    out = []
    for (integrator, facility, trigger), group in counts.groupby(
        ["integrator", "sending_facility", "trigger"], sort=True
    ):
        by_code = group.groupby("ack_code")["count"].sum()
        nacks = group[group["ack_code"] != "AA"]
        reasons = ", ".join(
            f"{r} ({int(n)})"
            for r, n in nacks.groupby("reason")["count"].sum().sort_values(ascending=False).items()
        )
        out.append(
            {
                "integrator": integrator,
                "sending_facility": facility,
                "trigger": trigger,
                "messages": int(group["count"].sum()),
                "AA": int(by_code.get("AA", 0)),
                "AE": int(by_code.get("AE", 0)),
                "AR": int(by_code.get("AR", 0)),
                "reasons": reasons,
                "last_at": group["last_at"].max(),
            }
        )
    return pd.DataFrame(out, columns=columns)


# --- Stream workers -----------------------------------------------------------------------------

# A worker reports every few seconds (PARCOURS_WORKER_PROGRESS_INTERVAL_S, 5 by default).
SILENT_AFTER = timedelta(minutes=2)


def stream_progress(
    engine: Engine, now: datetime, silent_after: timedelta = SILENT_AFTER, lang: str = "fr"
) -> pd.DataFrame:
    """Each raw partition as its stream worker last reported it, with a status in words (in
    `lang`): how far the bed board is behind what the gateway accepted, or that its worker went
    silent (`silent`)."""
    p = StreamProgressRow
    frame = _frame(
        engine,
        select(
            p.topic, p.partition, p.worker, p.lag, p.processed_offset, p.highwater, p.reported_at
        ).order_by(p.topic, p.partition),
    )
    frame["silent"] = [
        is_silent(reported_at, now, silent_after) for reported_at in frame["reported_at"]
    ]
    frame["status"] = [
        progress_status(lag, reported_at, now, silent_after, lang)
        for lag, reported_at in zip(frame["lag"], frame["reported_at"], strict=True)
    ]
    return frame


def stream_freshness(progress: pd.DataFrame) -> tuple[int, int]:
    """(partitions whose worker went silent, messages accepted but not yet applied)."""
    if progress.empty:
        return 0, 0
    return int(progress["silent"].sum()), int(progress["lag"].fillna(0).sum())


def _silence(reported_at: datetime, now: datetime) -> timedelta:
    return now - to_utc(reported_at)


def is_silent(reported_at: datetime, now: datetime, silent_after: timedelta) -> bool:
    """Whether a partition's worker has not reported for longer than `silent_after`."""
    return _silence(reported_at, now) > silent_after


def progress_status(
    lag: float | None,
    reported_at: datetime,
    now: datetime,
    silent_after: timedelta,
    lang: str = "fr",
) -> str:
    """What one partition's last report means for the people reading the board, in `lang`."""
    silent = _silence(reported_at, now)
    if silent > silent_after:
        minutes = int(silent.total_seconds() // 60)
        # The warning above the table says what to check.
        return i18n.translate(lang, "aucun rapport depuis {minutes} min", minutes=minutes)
    if lag is None or pd.isna(lag):
        return i18n.translate(lang, "démarrage")
    if lag > 0:
        return i18n.translate_plural(
            lang,
            "rattrapage : {count} message à appliquer",
            "rattrapage : {count} messages à appliquer",
            int(lag),
            count=i18n.number(lang, int(lag)),
        )
    return i18n.translate(lang, "à jour")


# --- Places -------------------------------------------------------------------------------------


def places(engine: Engine) -> pd.DataFrame:
    """Every ward with its service and hospital, by name: what worklists filter on.

    Columns: ward_id, ward, service_id, service, hospital_id, hospital.
    """
    occ, loc = LocationOccupancyRow, LocationRow
    units = _frame(
        engine,
        select(occ.unit_type, occ.unit_id, occ.name, occ.hospital_id).where(
            occ.unit_type.in_(("ward", "service", "hospital"))
        ),
    )
    services = _frame(
        engine,
        select(loc.location_id, loc.service_code, loc.service_name).where(
            loc.physical_type == "wa"
        ),
    )
    names = dict(zip(units["unit_id"], units["name"].fillna(units["unit_id"]), strict=True))
    wards = units[units["unit_type"] == "ward"][["unit_id", "hospital_id"]].rename(
        columns={"unit_id": "ward_id"}
    )
    wards = wards.merge(services, left_on="ward_id", right_on="location_id", how="left")
    wards["service_id"] = [
        f"{h}/{code}" if isinstance(code, str) and code else None
        for h, code in zip(wards["hospital_id"], wards["service_code"], strict=True)
    ]
    wards["ward"] = wards["ward_id"].map(names)
    wards["service"] = [
        names.get(sid) or name or code
        for sid, name, code in zip(
            wards["service_id"], wards["service_name"], wards["service_code"], strict=True
        )
    ]
    wards["hospital"] = wards["hospital_id"].map(lambda h: names.get(h, h))
    return wards[["ward_id", "ward", "service_id", "service", "hospital_id", "hospital"]]


def hospitals(engine: Engine) -> dict[str, str]:
    """Hospital id → name, for filters."""
    occ = LocationOccupancyRow
    with engine.connect() as conn:
        rows = conn.execute(
            select(occ.unit_id, occ.name).where(occ.unit_type == "hospital").order_by(occ.name)
        ).all()
    return {uid: name or uid for uid, name in rows}


# --- Bed board for managers ---------------------------------------------------------------------

# A board whose newest occupancy change is older than this is called out as possibly out of date:
# on a territory's hospitals, hours go by without any admission, transfer or discharge only
# when the feeds stop.
STALE_AFTER = timedelta(hours=6)


def data_age(engine: Engine, now: datetime, hospital_ids: Sequence[str] = ()) -> timedelta | None:
    """How old the newest occupancy is, of every hospital or of `hospital_ids` (None when there
    is none)."""
    query = select(func.max(LocationOccupancyRow.as_of))
    if hospital_ids:
        query = query.where(LocationOccupancyRow.hospital_id.in_(list(hospital_ids)))
    with engine.connect() as conn:
        newest = conn.scalar(query)
    if newest is None:
        return None
    return now - to_utc(newest)


def occupancy_heatmap(engine: Engine, since: datetime, hospital_id: str = "") -> pd.DataFrame:
    """Hourly occupancy of every ward since `since`, with its capacity and rate.

    Columns: unit_id, hospital_id, name, hour, occupancy, capacity, rate (hours with no row are
    absent).
    """
    c, occ = CensusHourlyRow, LocationOccupancyRow
    query = (
        select(c.unit_id, occ.hospital_id, occ.name, c.hour, c.occupancy, occ.capacity)
        .join(occ, and_(occ.unit_type == c.unit_type, occ.unit_id == c.unit_id))
        .where(c.unit_type == "ward", c.hour >= since)
        .order_by(c.unit_id, c.hour)
    )
    if hospital_id:
        query = query.where(c.hospital_id == hospital_id)
    frame = _frame(engine, query)
    frame["rate"] = frame["occupancy"] / frame["capacity"].where(frame["capacity"] > 0)
    return frame


def ward_labels(frame: pd.DataFrame, hospital_names: Mapping[str, str]) -> pd.Series:
    """One label per ward of `frame` (columns unit_id, hospital_id, name): its name, followed by
    its hospital's when wards of several hospitals share that name (« Cardiologie · Clinique
    Drevon »), and by its id when that is not enough; its id when it has no name. A chart with
    one row per label then never draws two wards on one row."""

    def distinct(labels: pd.Series, more: pd.Series) -> pd.Series:
        wards = pd.DataFrame({"unit_id": frame["unit_id"], "label": labels}).drop_duplicates()
        shared = set(wards["label"][wards["label"].duplicated(keep=False)])
        return pd.Series(
            [f"{lab} · {m}" if lab in shared else lab for lab, m in zip(labels, more, strict=True)],
            index=frame.index,
        )

    names = frame["name"].where(frame["name"].notna(), frame["unit_id"]).astype(str)
    hospitals = frame["hospital_id"].map(lambda h: hospital_names.get(h, h)).astype(str)
    return distinct(distinct(names, hospitals), frame["unit_id"].astype(str))


# --- Worklists for coordinators -----------------------------------------------------------------

WORKLIST_LIMIT = 500


def _where_hospitals(column: Any, hospital_ids: Sequence[str]) -> Any:
    return column.in_(list(hospital_ids)) if hospital_ids else None


def ed_now(
    engine: Engine,
    now: datetime,
    boarding: timedelta,
    hospital_ids: Sequence[str] = (),
    within: timedelta = timedelta(days=3),
) -> pd.DataFrame:
    """Patients in the ED now (arrived in the last `within`, not departed), longest wait first.

    Columns: patient_id, encounter_id, hospital_id, ward_id, arrived_at, waiting_hours, boarding.
    """
    e = EdVisitRow
    query = (
        select(e.patient_id, e.encounter_id, e.hospital_id, e.ward_id, e.arrived_at, e.admitted)
        .where(e.departed_at.is_(None), e.arrived_at.is_not(None), e.arrived_at >= now - within)
        .order_by(e.arrived_at)
        .limit(WORKLIST_LIMIT)
    )
    cond = _where_hospitals(e.hospital_id, hospital_ids)
    if cond is not None:
        query = query.where(cond)
    frame = _frame(engine, query)
    arrived = pd.to_datetime(frame["arrived_at"], utc=True)
    frame["waiting_hours"] = (pd.Timestamp(now) - arrived).dt.total_seconds() / 3600
    frame["boarding"] = frame["waiting_hours"] >= boarding.total_seconds() / 3600
    return frame


def discharged_without_follow_up(
    engine: Engine,
    now: datetime,
    within: timedelta = timedelta(days=30),
    hospital_ids: Sequence[str] = (),
) -> pd.DataFrame:
    """Stays discharged home in the last `within` with no community contact since, oldest first.

    Columns: patient_id, stay_id, hospital_id, discharged_at, disposition, days_since.
    """
    s, c = StayRow, CommunityVisitRow
    seen_since = (
        select(c.encounter_id)
        .where(c.patient_id == s.patient_id, c.start_at >= s.discharged_at)
        .exists()
    )
    query = (
        select(s.patient_id, s.stay_id, s.hospital_id, s.discharged_at, s.disposition)
        .where(
            s.discharged_at.is_not(None),
            s.discharged_at >= now - within,
            s.discharged_at <= now,
            or_(s.disposition.is_(None), s.disposition.not_in(("exp", "died", "deceased"))),
            ~seen_since,
        )
        .order_by(s.discharged_at)
        .limit(WORKLIST_LIMIT)
    )
    cond = _where_hospitals(s.hospital_id, hospital_ids)
    if cond is not None:
        query = query.where(cond)
    frame = _frame(engine, query)
    since = pd.Timestamp(now) - pd.to_datetime(frame["discharged_at"], utc=True)
    frame["days_since"] = since.dt.total_seconds() / 86400
    return frame


def readmissions(
    engine: Engine,
    now: datetime,
    within: timedelta = timedelta(days=30),
    hospital_ids: Sequence[str] = (),
    unit_ids: Sequence[str] = (),
) -> pd.DataFrame:
    """Patients readmitted soon after a discharge (the pathway rules' readmission alerts) in the
    last `within`, newest first; `unit_ids` (hospitals and their wards) narrows them in SQL.

    Columns: patient_id, stay_id, hospital_id, admitted_at, status, message.
    """
    a = AlertRow
    query = (
        select(a.patient_id, a.alert_id, a.unit_id, a.raised_at, a.status, a.message, a.details)
        .where(a.alert_type == "readmission", a.raised_at >= now - within)
        .order_by(a.raised_at.desc())
        .limit(WORKLIST_LIMIT)
    )
    if unit_ids:
        query = query.where(a.unit_id.in_(list(unit_ids)))
    frame = _frame(engine, query)
    frame["stay_id"] = pd.Series(
        [d.get("subject_id") if isinstance(d, dict) else None for d in frame["details"]],
        index=frame.index,
        dtype=object,
    )
    stays = _stays(engine, [x for x in frame["stay_id"] if x])
    frame = frame.merge(stays, on="stay_id", how="left")
    if hospital_ids:
        frame = frame[frame["hospital_id"].isin(list(hospital_ids))]
    return frame.drop(columns=["details", "patient_id_y"], errors="ignore").rename(
        columns={"patient_id_x": "patient_id"}
    )


def long_stays(
    engine: Engine, now: datetime, longer_than: timedelta, hospital_ids: Sequence[str] = ()
) -> pd.DataFrame:
    """Open stays longer than `longer_than`, longest first.

    Columns: patient_id, stay_id, hospital_id, admitted_at, los_hours.
    """
    s = StayRow
    query = (
        select(s.patient_id, s.stay_id, s.hospital_id, s.admitted_at)
        .where(s.discharged_at.is_(None), s.admitted_at <= now - longer_than)
        .order_by(s.admitted_at)
        .limit(WORKLIST_LIMIT)
    )
    cond = _where_hospitals(s.hospital_id, hospital_ids)
    if cond is not None:
        query = query.where(cond)
    frame = _frame(engine, query)
    admitted = pd.to_datetime(frame["admitted_at"], utc=True)
    frame["los_hours"] = (pd.Timestamp(now) - admitted).dt.total_seconds() / 3600
    return frame


def _stays(engine: Engine, stay_ids: Sequence[str]) -> pd.DataFrame:
    s = StayRow
    parts = [
        _frame(
            engine,
            select(s.stay_id, s.patient_id, s.hospital_id, s.admitted_at, s.discharged_at).where(
                s.stay_id.in_(list(stay_ids[i : i + 500]))
            ),
        )
        for i in range(0, len(stay_ids), 500)
    ]
    if not parts:
        return pd.DataFrame(
            columns=["stay_id", "patient_id", "hospital_id", "admitted_at", "discharged_at"]
        )
    return pd.concat(parts, ignore_index=True)


def last_wards(engine: Engine, stay_ids: Sequence[str]) -> dict[str, str]:
    """Each stay's latest ward (its open period's, or the last one's)."""
    sl = StayLocationRow
    out: dict[str, tuple[int, str | None]] = {}
    for i in range(0, len(stay_ids), 500):
        chunk = list(stay_ids[i : i + 500])
        with engine.connect() as conn:
            for stay_id, seq, ward in conn.execute(
                select(sl.stay_id, sl.seq, sl.ward_id).where(
                    sl.stay_id.in_(chunk), sl.ward_id.is_not(None)
                )
            ):
                if stay_id not in out or seq > out[stay_id][0]:
                    out[stay_id] = (seq, ward)
    return {k: v[1] for k, v in out.items() if v[1]}


# --- A patient's timeline -----------------------------------------------------------------------


def alert_history(engine: Engine, patient_id: str, limit: int = 200) -> pd.DataFrame:
    """A patient's alerts, open or resolved, with who acknowledged them."""
    a = AlertRow
    return _frame(
        engine,
        select(
            a.alert_id,
            a.alert_type,
            a.status,
            a.raised_at,
            a.resolved_at,
            a.message,
            a.acknowledged_by,
            a.acknowledged_at,
        )
        .where(a.patient_id == patient_id)
        .order_by(a.raised_at)
        .limit(limit),
    )


def occupancy_trend(engine: Engine, unit_type: str, unit_id: str, since: datetime) -> pd.DataFrame:
    """Hourly occupancy of one unit since `since` (hours with no row are absent: no change)."""
    c = CensusHourlyRow
    return _frame(
        engine,
        select(c.hour, c.occupancy)
        .where(c.unit_type == unit_type, c.unit_id == unit_id, c.hour >= since)
        .order_by(c.hour),
    )


# --- Territory totals ---------------------------------------------------------------------------


def pathway_totals(engine: Engine) -> dict[str, Any]:
    """Patients, stays (and open ones), ED visits, median length of stay (hours), open alerts by
    type: counted in SQL, the median too on PostgreSQL (the demo's SQLite reads the stays' LOS)."""
    s, e, p, a = StayRow, EdVisitRow, PathwayStateRow, AlertRow
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            median = conn.scalar(
                select(func.percentile_cont(0.5).within_group(s.los_hours)).where(
                    s.los_hours.is_not(None)
                )
            )
        else:
            values = [
                float(v)
                for v in conn.scalars(select(s.los_hours).where(s.los_hours.is_not(None)))
                if v is not None
            ]
            median = statistics.median(values) if values else None
        return {
            "patients": conn.scalar(select(func.count()).select_from(p)) or 0,
            "stays": conn.scalar(select(func.count()).select_from(s)) or 0,
            "open_stays": conn.scalar(
                select(func.count()).select_from(s).where(s.discharged_at.is_(None))
            )
            or 0,
            "ed_visits": conn.scalar(select(func.count()).select_from(e)) or 0,
            "los_hours_median": float(median) if median is not None else None,
            "open_alerts": dict(
                conn.execute(
                    select(a.alert_type, func.count())
                    .where(a.status == "open")
                    .group_by(a.alert_type)
                    .order_by(a.alert_type)
                ).all()
            ),
        }


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
