"""The forecasting job: read census series from SQL, backtest, forecast, write both back.

Series times are UTC. Prophet wants naive timestamps, so they are made naive (still UTC) for
fitting and made aware again when written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
from sqlalchemy import Engine, delete
from sqlalchemy.engine import Connection
from tqdm import tqdm

from forecasting import ForecastingError
from forecasting.backtest import Accuracy, backtest
from forecasting.models import Model
from parcours.db import upsert
from parcours.db.forecast_models import ForecastAccuracyRow, ForecastRow


@dataclass(frozen=True)
class UnitResult:
    """What happened to one unit's series: its scores, or why it was left out."""

    unit_id: str
    points: int
    accuracy: list[Accuracy]
    forecasts: int
    error: str | None = None


def to_naive_utc(series: pd.DataFrame) -> pd.DataFrame:
    """`ds, y` with `ds` as naive UTC timestamps, sorted, as Prophet expects."""
    ds = pd.to_datetime(series["ds"], utc=True).dt.tz_localize(None)
    return pd.DataFrame({"ds": ds, "y": series["y"].astype(float)}).sort_values("ds")


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
    """Replace the future forecast of (unit, metric, model) with `forecast`."""
    conn.execute(
        delete(ForecastRow).where(
            (ForecastRow.unit_id == unit_id)
            & (ForecastRow.metric == metric)
            & (ForecastRow.model == model)
            & (ForecastRow.ds > history_end)
        )
    )
    rows = [
        {
            "unit_id": unit_id,
            "metric": metric,
            "model": model,
            "ds": pd.Timestamp(r.ds).tz_localize("UTC").to_pydatetime(),
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
            "computed_at": computed_at,
        }
        for a in scores
    ]
    upsert(
        conn,
        ForecastAccuracyRow,
        rows,
        key=["unit_id", "metric", "model", "horizon"],
    )


def run(
    engine: Engine,
    series: Mapping[str, pd.DataFrame],
    *,
    metric: str,
    models: list[Model],
    horizon: int,
    freq: str,
    now: datetime,
    folds: int = 3,
    do_backtest: bool = True,
    do_forecast: bool = True,
    interval_width: float = 0.8,
    progress: bool = True,
) -> list[UnitResult]:
    """Backtest and/or forecast every unit; a unit whose history is too short is reported, not
    fatal, so one new ward does not stop the whole job."""
    results: list[UnitResult] = []
    for unit_id, raw in tqdm(series.items(), desc=f"forecast {metric}", disable=not progress):
        history = to_naive_utc(raw)
        try:
            scores = backtest(history, models, horizon, freq, folds) if do_backtest else []
            written = 0
            with engine.begin() as conn:
                if scores:
                    write_accuracy(conn, unit_id, metric, scores, now)
                if do_forecast:
                    end = pd.Timestamp(history["ds"].iloc[-1]).tz_localize("UTC").to_pydatetime()
                    for model in models:
                        fc = model.forecast(history, horizon, freq)
                        written += write_forecast(
                            conn, unit_id, metric, model.name, fc, interval_width, now, end
                        )
            results.append(UnitResult(unit_id, len(history), scores, written))
        except ForecastingError as exc:
            results.append(UnitResult(unit_id, len(history), [], 0, str(exc)))
    return results


CENSUS_METRICS = ("occupancy", "admissions", "discharges", "ed_arrivals")


def census_series(
    engine: Engine, metric: str = "occupancy", unit_type: str = "ward", min_points: int = 1
) -> dict[str, pd.DataFrame]:
    """Hourly `metric` of every unit of `unit_type` from `census_hourly`, as `ds, y` frames.

    The census writes no row for an hour with nothing to count, so missing hours inside a unit's
    span are zeros.
    """
    from sqlalchemy import select

    from parcours.db.pathway_models import CensusHourlyRow

    if metric not in CENSUS_METRICS:
        raise ForecastingError(f"unknown census metric {metric!r}; choose one of {CENSUS_METRICS}")
    column = getattr(CensusHourlyRow, metric)
    query = (
        select(CensusHourlyRow.unit_id, CensusHourlyRow.hour, column)
        .where(CensusHourlyRow.unit_type == unit_type)
        .order_by(CensusHourlyRow.unit_id, CensusHourlyRow.hour)
    )
    with engine.connect() as conn:
        frame = pd.DataFrame(conn.execute(query).all(), columns=["unit_id", "ds", "y"])
    out: dict[str, pd.DataFrame] = {}
    for unit_id, rows in frame.groupby("unit_id", sort=True):
        ds = pd.to_datetime(rows["ds"], utc=True)
        full = pd.date_range(ds.min(), ds.max(), freq="h")
        y = pd.Series(rows["y"].to_numpy(dtype=float), index=ds).reindex(full, fill_value=0.0)
        if len(y) >= min_points:
            out[str(unit_id)] = pd.DataFrame({"ds": full, "y": y.to_numpy()})
    return out
