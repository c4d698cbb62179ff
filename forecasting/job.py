"""The forecasting job: read census series from SQL, backtest every candidate, forecast with
the selected one, and write forecasts, their terms and the backtest back.

Series times are UTC. Models get naive timestamps (still UTC) and the job makes them aware
again when it writes.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy import Engine, delete
from sqlalchemy.engine import Connection
from tqdm import tqdm

from forecasting import ForecastingError
from forecasting.backtest import (
    ENSEMBLE,
    TARGET_COVERAGE,
    Accuracy,
    Backtest,
    SelectionCheck,
    calibrate,
    run_backtest,
    stitch,
)
from forecasting.models import Ensemble, Model, candidate_models
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
    check: SelectionCheck | None = None
    selected_by_band: tuple[tuple[int, int, str], ...] = ()


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
    min_train: int | None = None,
) -> tuple[Backtest, dict[str, pd.DataFrame]]:
    """Backtest every model on one series, then forecast with the model of each band, the naive
    baseline and the stock–flow model, each with intervals calibrated on its own backtest; and,
    when the bands chose different models, the stitched forecast (`stitch`)."""
    history = to_naive_utc(item.frame)
    bt = run_backtest(
        history,
        list(models),
        horizon,
        freq,
        folds,
        min_train=min_train,
        level=level,
        capacity=item.capacity,
    )
    keep = {name for _, _, name in bt.selected_by_band} | {bt.selected, "naive", "stock_flow"}
    by_name = {m.name: m for m in models}
    if bt.members:
        by_name[ENSEMBLE] = Ensemble(tuple(by_name[n] for n in bt.members))
    out: dict[str, pd.DataFrame] = {}
    raws: dict[str, pd.DataFrame] = {}
    for name, model in by_name.items():
        if name in keep and name in bt.scores:
            raws[name] = model.forecast(history, horizon, freq)
            out[name] = calibrate(raws[name], bt.scores[name], level, item.capacity, bt.scale_now)
    out.update(stitch(raws, bt, level, item.capacity))
    return bt, out


# Candidates whose backtest costs seconds per fold on an hourly series; the fast pass leaves
# them out, and a refresh fits them only where the last full backtest selected them.
SLOW = frozenset({"auto_ets", "auto_arima", "prophet"})


def candidates(
    item: SeriesInput, freq: str, level: float, mode: str, previous: Mapping[str, str]
) -> list[Model]:
    """The models a run backtests on one series.

    `full`: every candidate. `fast`: all but the slow ones (stock–flow, AutoTheta, naive
    baselines), so that every series has a forecast within a minute. `refresh`: the model the
    last full backtest selected (`previous[unit]`), the stock–flow models and naive, to refit
    and recalibrate them on the newest data; a series never fully backtested, or whose last
    selection was the ensemble, is run `fast` (its ensemble then averages fast candidates)."""
    every = candidate_models(freq, level, item.stock_flow)
    if mode == "full":
        return every
    chosen = previous.get(item.unit_id) if mode == "refresh" else None
    if chosen is not None and chosen != ENSEMBLE and any(m.name == chosen for m in every):
        keep = {chosen, "naive"} | {m.name for m in item.stock_flow}
        return [m for m in every if m.name in keep]
    return [m for m in every if m.name not in SLOW]


def recent_selections(engine: Engine, metric: str, horizon: int, since: datetime) -> dict[str, str]:
    """The model selected per unit by a full backtest (one that scored the slow candidates)
    computed at or after `since`, for the same horizon."""
    from sqlalchemy import select

    f, a = ForecastSeriesRow, ForecastAccuracyRow
    query = (
        select(f.unit_id, f.selected_model)
        .join(a, (a.unit_id == f.unit_id) & (a.metric == f.metric))
        .where(
            f.metric == metric,
            f.horizon == horizon,
            a.horizon == horizon,
            a.model == "auto_ets",
            a.computed_at >= since,
        )
    )
    with engine.connect() as conn:
        return {r[0]: r[1] for r in conn.execute(query)}


def _forecast_task(
    args: tuple[SeriesInput, list[Model], int, str, int, float, int | None],
) -> tuple[Backtest, dict[str, pd.DataFrame]] | str:
    """`forecast_one` in a worker process; a ForecastingError comes back as its message."""
    item, models, horizon, freq, folds, level, min_train = args
    try:
        return forecast_one(item, models, horizon, freq, folds, level, min_train)
    except ForecastingError as exc:
        return str(exc)


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
    only: Sequence[Model] | None = None,
    workers: int = 1,
    mode: str = "full",
    previous: Mapping[str, str] | None = None,
    min_train: int | None = None,
) -> list[UnitResult]:
    """Backtest, select and forecast every series; write the results when `write` (and an
    engine is given), each series as soon as it is done. `only` replaces the candidates (a
    benchmark's peer); `mode` and `previous` choose the candidates (see `candidates`). `workers`
    > 1 spreads the series over that many processes; `min_train` is the shortest history a
    backtest fold fits on (see `run_backtest`). A series too
    short for the models is reported, not fatal, so one new ward does not stop the whole job."""
    tasks = []
    for item in series:
        models = (
            list(only) if only is not None else candidates(item, freq, level, mode, previous or {})
        )
        if not with_prophet:
            models = [m for m in models if m.name != "prophet"]
        tasks.append((item, models, horizon, freq, folds, level, min_train))
    outcomes: Iterable[tuple[Backtest, dict[str, pd.DataFrame]] | str]
    if workers > 1 and len(tasks) > 1:
        outcomes = _pool(workers).map(_forecast_task, tasks)
    else:
        outcomes = map(_forecast_task, tasks)
    results: list[UnitResult] = []
    bar = tqdm(zip(series, outcomes, strict=True), total=len(tasks), disable=not progress)
    for item, outcome in bar:
        bar.set_description(f"forecast {metric}")
        results.append(_record(engine, item, outcome, metric, horizon, freq, now, write, level))
    return results


_POOLS: dict[int, ProcessPoolExecutor] = {}


def _pool(workers: int) -> ProcessPoolExecutor:
    """One process pool per size for the life of the process: the forecaster runs round after
    round, and each worker imports the model libraries (seconds) only once."""
    if workers not in _POOLS:
        _POOLS[workers] = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn")
        )
    return _POOLS[workers]


def _record(
    engine: Engine | None,
    item: SeriesInput,
    outcome: tuple[Backtest, dict[str, pd.DataFrame]] | str,
    metric: str,
    horizon: int,
    freq: str,
    now: datetime,
    write: bool,
    level: float,
) -> UnitResult:
    points = len(item.frame)
    if isinstance(outcome, str):
        return UnitResult(item.unit_id, points, [], 0, outcome)
    bt, forecasts = outcome
    written = 0
    history_end = _aware(to_naive_utc(item.frame)["ds"].iloc[-1])
    window = (_aware(bt.origins[0]), _aware(bt.window_end))
    if write and engine is not None:
        with engine.begin() as conn:
            write_accuracy(conn, item.unit_id, metric, bt.accuracy, now)
            # Forecasts of models this run did not keep (an earlier selection) would mislead.
            for table in (ForecastRow, ForecastTermRow):
                conn.execute(
                    delete(table).where(
                        (table.unit_id == item.unit_id)
                        & (table.metric == metric)
                        & table.model.not_in(list(forecasts))
                    )
                )
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
    return UnitResult(
        item.unit_id,
        points,
        bt.accuracy,
        written,
        selected=bt.selected,
        skipped=bt.skipped,
        window=window,
        check=bt.check,
        selected_by_band=bt.selected_by_band,
    )


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


def daily_census(hourly: pd.DataFrame) -> pd.DataFrame:
    """The daily census of an hourly occupancy series: `y` is the occupancy at 00:00 UTC of each
    day, `admissions` and `departures` the flows of the 24 hours before it. Midnights less than a
    day after the series starts are left out (their flows are incomplete)."""
    frame = to_naive_utc(hourly)
    ds = pd.DatetimeIndex(frame["ds"])
    out = pd.DataFrame({"ds": ds, "y": frame["y"].to_numpy(dtype=float)})
    for col in ("admissions", "departures"):
        if col in frame:
            out[col] = frame[col].rolling(24, min_periods=24).sum().to_numpy()
    keep = (ds.hour == 0) & (ds - ds[0] >= pd.Timedelta(hours=23))
    return out[keep].reset_index(drop=True)


def census_inputs(
    engine: Engine,
    unit_type: str,
    min_points: int,
    lookback: timedelta = timedelta(days=120),
) -> list[SeriesInput]:
    """Every unit of `unit_type` with enough hourly occupancy, each with its stay-based
    stock–flow model (its episodes, length-of-stay pool and booked appointments) and its
    capacity."""
    from forecasting.episodes import (
        capacities,
        load_hierarchy,
        los_pools,
        unit_bookings,
        unit_episodes,
    )
    from forecasting.stockflow import EpisodeStockFlow, FlowStockFlow

    series = census_series(engine, "occupancy", unit_type, min_points)
    if not series:
        return []
    start = min(pd.Timestamp(s["ds"].iloc[0]) for s in series.values()).to_pydatetime()
    hierarchy = load_hierarchy(engine)
    episodes = unit_episodes(engine, start - lookback, hierarchy)
    pools = los_pools(episodes, hierarchy)
    bookings = unit_bookings(engine, start - lookback, hierarchy)
    by_id = {u.unit_id: u for u in episodes if u.unit_type == unit_type}
    caps = capacities(engine)
    out = []
    for unit_id, frame in series.items():
        unit = by_id.get(unit_id)
        stock_flow: Model
        if unit is not None and int(episodes[unit]["end"].notna().sum()) >= 5:
            stock_flow = EpisodeStockFlow(episodes[unit], pools[unit], bookings.get(unit))
        else:
            stock_flow = FlowStockFlow()
        out.append(
            SeriesInput(unit_id, frame, unit_type, (stock_flow,), caps.get((unit_type, unit_id)))
        )
    return out


def daily_inputs(hourly: Sequence[SeriesInput], min_points: int) -> list[SeriesInput]:
    """The daily census (`daily_census`) of every hourly series with at least `min_points`
    days. Its stock–flow model is the hourly one read every 24 hours (`DailyFromHourly`), beside
    the daily flow forms without and with trend."""
    from forecasting.stockflow import (
        DailyFromHourly,
        EpisodeStockFlow,
        FlowStockFlow,
        daily_variants,
    )

    out = []
    for item in hourly:
        days = daily_census(item.frame)
        if len(days) < min_points:
            continue
        models: list[Model] = [
            DailyFromHourly(m, to_naive_utc(item.frame))
            for m in item.stock_flow
            if isinstance(m, EpisodeStockFlow | FlowStockFlow)
        ]
        models += daily_variants()[1:]
        out.append(SeriesInput(item.unit_id, days, item.unit_type, models, item.capacity))
    return out
