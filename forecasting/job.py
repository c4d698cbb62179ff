"""The forecasting job: read census series from SQL, backtest every candidate, forecast with
the selected one, and write forecasts, their terms and the backtest back.

Series times are UTC. Models get naive timestamps (still UTC) and the job makes them aware
again when it writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy import Engine, delete
from sqlalchemy.engine import Connection
from tqdm import tqdm

from forecasting import ForecastingError
from forecasting.backtest import TARGET_COVERAGE, Accuracy, Backtest, calibrate, run_backtest
from forecasting.models import Model, candidate_models
from forecasting.stockflow import TERM_COLUMNS
from parcours.db import upsert
from parcours.db.forecast_models import (
    ForecastAccuracyRow,
    ForecastRow,
    ForecastSeriesRow,
    ForecastTermRow,
)


@dataclass(frozen=True)
class SeriesInput:
    """One series to forecast: `ds, y` (and its flows `admissions`, `departures` if known), the
    stock–flow models that fit its data (none: the series has no flows or stays), and the
    unit's capacity (the ceiling of every forecast and interval)."""

    unit_id: str
    frame: pd.DataFrame
    unit_type: str | None = None
    stock_flow: Sequence[Model] = ()
    capacity: float | None = None


@dataclass(frozen=True)
class UnitResult:
    """What happened to one unit's series: its scores and selected model, or why it was left
    out."""

    unit_id: str
    points: int
    accuracy: list[Accuracy]
    forecasts: int
    error: str | None = None
    selected: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    window: tuple[datetime, datetime] | None = None


def to_naive_utc(series: pd.DataFrame) -> pd.DataFrame:
    """The series with `ds` as naive UTC timestamps, sorted by `ds`, values as floats."""
    out = series.copy()
    ds = pd.to_datetime(out["ds"], utc=True).dt.tz_localize(None)
    out["ds"] = ds
    out["y"] = out["y"].astype(float)
    return out.sort_values("ds").reset_index(drop=True)


def _aware(stamp: object) -> datetime:
    return pd.Timestamp(stamp).tz_localize("UTC").to_pydatetime()


def write_forecast(
    conn: Connection,
    unit_id: str,
    metric: str,
    model: str,
    forecast: pd.DataFrame,
    interval_width: float,
    run_at: datetime,
    history_end: datetime,
) -> int:
    """Replace the future forecast of (unit, metric, model) with `forecast`, and its terms when
    the forecast has them."""
    for table in (ForecastRow, ForecastTermRow):
        conn.execute(
            delete(table).where(
                (table.unit_id == unit_id)
                & (table.metric == metric)
                & (table.model == model)
                & (table.ds > history_end)
            )
        )
    rows = [
        {
            "unit_id": unit_id,
            "metric": metric,
            "model": model,
            "ds": _aware(r.ds),
            "yhat": float(r.yhat),
            "yhat_lower": float(r.yhat_lower),
            "yhat_upper": float(r.yhat_upper),
            "interval_width": interval_width,
            "run_at": run_at,
            "history_end": history_end,
        }
        for r in forecast.itertuples()
    ]
    upsert(conn, ForecastRow, rows, key=["unit_id", "metric", "model", "ds"])
    if set(TERM_COLUMNS) <= set(forecast.columns):
        terms = [
            {
                "unit_id": unit_id,
                "metric": metric,
                "model": model,
                "ds": _aware(r.ds),
                "now": float(r.now),
                "expected_discharges": float(r.expected_discharges),
                "expected_admissions": float(r.expected_admissions),
                "run_at": run_at,
            }
            for r in forecast.itertuples()
        ]
        upsert(conn, ForecastTermRow, terms, key=["unit_id", "metric", "model", "ds"])
    return len(rows)


def write_accuracy(
    conn: Connection, unit_id: str, metric: str, scores: Iterable[Accuracy], computed_at: datetime
) -> None:
    """Upsert the backtest scores of one unit."""
    rows = [
        {
            "unit_id": unit_id,
            "metric": metric,
            "model": a.model,
            "horizon": a.horizon,
            "folds": a.folds,
            "mae": a.mae,
            "rmse": a.rmse,
            "mape": None if pd.isna(a.mape) else a.mape,
            "coverage": a.coverage,
            "mase": None if pd.isna(a.mase) or a.mase == float("inf") else a.mase,
            "mae_by_lead": list(a.mae_by_lead),
            "coverage_by_lead": list(a.coverage_by_lead),
            "computed_at": computed_at,
        }
        for a in scores
    ]
    upsert(conn, ForecastAccuracyRow, rows, key=["unit_id", "metric", "model", "horizon"])


def forecast_one(
    item: SeriesInput,
    models: Sequence[Model],
    horizon: int,
    freq: str,
    folds: int,
    level: float = TARGET_COVERAGE,
) -> tuple[Backtest, dict[str, pd.DataFrame]]:
    """Backtest every model on one series, then forecast with the selected model, the naive
    baseline and the stock–flow model, each with intervals calibrated on its own backtest."""
    history = to_naive_utc(item.frame)
    bt = run_backtest(
        history, list(models), horizon, freq, folds, level=level, capacity=item.capacity
    )
    keep = {bt.selected, "naive", "stock_flow"}
    out: dict[str, pd.DataFrame] = {}
    for model in models:
        if model.name in keep and model.name in bt.residuals:
            raw = model.forecast(history, horizon, freq)
            out[model.name] = calibrate(raw, bt.residuals[model.name], level, item.capacity)
    return bt, out


def run(
    engine: Engine | None,
    series: Sequence[SeriesInput],
    *,
    metric: str,
    horizon: int,
    freq: str,
    now: datetime,
    folds: int = 4,
    write: bool = True,
    level: float = TARGET_COVERAGE,
    progress: bool = True,
    with_prophet: bool = True,
) -> list[UnitResult]:
    """Backtest, select and forecast every series; write the results when `write` (and an
    engine is given). A series too short for the models is reported, not fatal, so one new ward
    does not stop the whole job."""
    results: list[UnitResult] = []
    for item in tqdm(series, desc=f"forecast {metric}", disable=not progress):
        models = candidate_models(freq, level, item.stock_flow)
        if not with_prophet:
            models = [m for m in models if m.name != "prophet"]
        points = len(item.frame)
        try:
            bt, forecasts = forecast_one(item, models, horizon, freq, folds, level)
        except ForecastingError as exc:
            results.append(UnitResult(item.unit_id, points, [], 0, str(exc)))
            continue
        written = 0
        history_end = _aware(to_naive_utc(item.frame)["ds"].iloc[-1])
        window = (_aware(bt.origins[0]), _aware(bt.window_end))
        if write and engine is not None:
            with engine.begin() as conn:
                write_accuracy(conn, item.unit_id, metric, bt.accuracy, now)
                for name, fc in forecasts.items():
                    written += write_forecast(
                        conn, item.unit_id, metric, name, fc, level, now, history_end
                    )
                upsert(
                    conn,
                    ForecastSeriesRow,
                    [
                        {
                            "unit_id": item.unit_id,
                            "metric": metric,
                            "unit_type": item.unit_type,
                            "freq": freq,
                            "horizon": horizon,
                            "selected_model": bt.selected,
                            "capacity": item.capacity,
                            "history_points": points,
                            "history_end": history_end,
                            "folds": bt.of(bt.selected).folds,
                            "window_start": window[0],
                            "window_end": window[1],
                            "target_coverage": level,
                            "computed_at": now,
                        }
                    ],
                    key=["unit_id", "metric"],
                )
        results.append(
            UnitResult(
                item.unit_id,
                points,
                bt.accuracy,
                written,
                selected=bt.selected,
                skipped=bt.skipped,
                window=window,
            )
        )
    return results


CENSUS_METRICS = ("occupancy", "admissions", "discharges", "ed_arrivals")


def census_series(
    engine: Engine, metric: str = "occupancy", unit_type: str = "ward", min_points: int = 1
) -> dict[str, pd.DataFrame]:
    """Hourly `metric` of every unit of `unit_type` from `census_hourly`, as `ds, y` frames;
    occupancy comes with its flows (`admissions`, `departures`: arrivals and departures during
    the hour before `ds`, transfers included).

    The census writes no row for an hour with nothing to count, so missing hours inside a unit's
    span are zeros.
    """
    from sqlalchemy import select

    from parcours.db.pathway_models import CensusHourlyRow as C

    if metric not in CENSUS_METRICS:
        raise ForecastingError(f"unknown census metric {metric!r}; choose one of {CENSUS_METRICS}")
    cols = [getattr(C, metric), C.admissions, C.transfers_in, C.discharges, C.transfers_out]
    query = (
        select(C.unit_id, C.hour, *cols).where(C.unit_type == unit_type).order_by(C.unit_id, C.hour)
    )
    names = ["unit_id", "ds", "y", "adm", "tin", "dis", "tout"]
    with engine.connect() as conn:
        frame = pd.DataFrame(conn.execute(query).all(), columns=names)
    out: dict[str, pd.DataFrame] = {}
    for unit_id, rows in frame.groupby("unit_id", sort=True):
        ds = pd.to_datetime(rows["ds"], utc=True)
        full = pd.date_range(ds.min(), ds.max(), freq="h")
        values = rows.set_index(ds)[names[2:]].astype(float).reindex(full, fill_value=0.0)
        if len(values) < min_points:
            continue
        series = pd.DataFrame({"ds": full, "y": values["y"].to_numpy()})
        if metric == "occupancy":
            series["admissions"] = (values["adm"] + values["tin"]).shift(1).fillna(0.0).to_numpy()
            series["departures"] = (values["dis"] + values["tout"]).shift(1).fillna(0.0).to_numpy()
        out[str(unit_id)] = series
    return out


def census_inputs(
    engine: Engine,
    unit_type: str,
    min_points: int,
    lookback: timedelta = timedelta(days=120),
) -> list[SeriesInput]:
    """Every unit of `unit_type` with enough hourly occupancy, each with its stay-based
    stock–flow model (its episodes and length-of-stay pool) and its capacity."""
    from forecasting.episodes import capacities, load_hierarchy, los_pools, unit_episodes
    from forecasting.stockflow import EpisodeStockFlow, FlowStockFlow

    series = census_series(engine, "occupancy", unit_type, min_points)
    if not series:
        return []
    start = min(pd.Timestamp(s["ds"].iloc[0]) for s in series.values()).to_pydatetime()
    hierarchy = load_hierarchy(engine)
    episodes = unit_episodes(engine, start - lookback, hierarchy)
    pools = los_pools(episodes, hierarchy)
    by_id = {u.unit_id: u for u in episodes if u.unit_type == unit_type}
    caps = capacities(engine)
    out = []
    for unit_id, frame in series.items():
        unit = by_id.get(unit_id)
        stock_flow: Model
        if unit is not None and int(episodes[unit]["end"].notna().sum()) >= 5:
            stock_flow = EpisodeStockFlow(episodes[unit], pools[unit])
        else:
            stock_flow = FlowStockFlow()
        out.append(
            SeriesInput(unit_id, frame, unit_type, (stock_flow,), caps.get((unit_type, unit_id)))
        )
    return out
