"""Forecast benchmark: refit and forecast every ward, service and hospital series of the default
simulated territory, beside Prophet alone on the same series and folds.

The territory is simulated first (not timed): each inpatient stay's ward moves give the hourly
occupancy of every ward, service and hospital (present at the top of each hour), its arrivals
and departures, and the stays the stock–flow model learns from. The ED is left out: its boxes
are not beds. Then, timed, `forecasting.job.run` backtests the candidates on rolling origins,
selects one per series and forecasts with calibrated intervals, hourly and daily (the census at
midnight, 14 days ahead), as `parcours forecast run` does; and Prophet alone does the same
hourly backtest and forecast.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from forecasting.cli import DAILY_METRIC, DAILY_MIN_TRAIN
from forecasting.job import SeriesInput, UnitResult, daily_inputs, run
from forecasting.models import ProphetModel
from forecasting.stockflow import EpisodeStockFlow

START = datetime(2026, 1, 5, tzinfo=UTC)
# Days ahead of the daily forecast, as `parcours forecast run` (its --daily-horizon).
DAILY_HORIZON = 14


@dataclass(frozen=True)
class BenchResult:
    """Timings and accuracy of one bench run (seconds None: not run)."""

    series: int
    days: int
    horizon: int
    folds: int
    fast_seconds: float
    refresh_seconds: float
    full_seconds: float | None
    prophet_seconds: float
    results: list[UnitResult]
    prophet_results: list[UnitResult]
    daily_series: int = 0


def _naive(at: datetime) -> pd.Timestamp:
    return pd.Timestamp(at).tz_convert(UTC).tz_localize(None)


def territory_inputs(days: int, seed: int = 7) -> list[SeriesInput]:
    """Simulate `days` of the default territory and build every ward, service and hospital
    series with its stays and capacity."""
    from simulate.model import Simulation
    from simulate.territory import default_territory

    territory = default_territory()
    sim = Simulation(territory, seed, START, days)
    for _ in sim.run():
        pass
    wards = {w.id: w for w in territory.wards if not w.is_ed}
    end = _naive(START + timedelta(days=days))
    hours = pd.date_range(_naive(START), end, freq="h", inclusive="left")
    episodes: dict[tuple[str, str], list[tuple[pd.Timestamp, pd.Timestamp]]] = defaultdict(list)
    capacity: dict[tuple[str, str], float] = defaultdict(float)
    for w in wards.values():
        capacity[("ward", w.id)] += w.beds
        capacity[("service", f"{w.establishment}/{w.service}")] += w.beds
        capacity[("hospital", w.establishment)] += w.beds
    for stay in sim.stays.values():
        moves = [m for m in stay.moves if m.ward in wards]
        for level in ("ward", "service", "hospital"):
            current: str | None = None
            start = stop = pd.NaT
            for m in moves:
                w = wards[m.ward]
                unit = {"ward": w.id, "service": f"{w.establishment}/{w.service}"}.get(
                    level, w.establishment
                )
                m_end = _naive(m.end) if m.end is not None and _naive(m.end) < end else pd.NaT
                if unit == current:
                    stop = m_end
                    continue
                if current is not None:
                    episodes[(level, current)].append((start, stop))
                current, start, stop = unit, _naive(m.start), m_end
            if current is not None:
                episodes[(level, current)].append((start, stop))
    inputs = []
    by_service: dict[str, list[pd.DataFrame]] = defaultdict(list)
    frames = {
        key: pd.DataFrame(rows, columns=["start", "end"]).astype("datetime64[ns]")
        for key, rows in episodes.items()
    }
    for (level, unit), frame in frames.items():
        if level == "ward":
            by_service[f"{wards[unit].establishment}/{wards[unit].service}"].append(frame)
    for (level, unit), frame in sorted(frames.items()):
        frame = frame[frame["start"] < end]
        s = np.sort(frame["start"].to_numpy())
        e = np.sort(frame["end"].fillna(pd.Timestamp.max).to_numpy())
        h = hours.to_numpy()
        occ = np.searchsorted(s, h, side="right") - np.searchsorted(e, h, side="right")
        prev = h - np.timedelta64(1, "h")
        arr = np.searchsorted(s, h, side="right") - np.searchsorted(s, prev, side="right")
        dep = np.searchsorted(e, h, side="right") - np.searchsorted(e, prev, side="right")
        series = pd.DataFrame(
            {"ds": hours, "y": occ.astype(float), "admissions": arr, "departures": dep}
        )
        model = EpisodeStockFlow(frame)
        inputs.append(SeriesInput(unit, series, level, (model,), capacity[(level, unit)]))
    return inputs


def run_bench(
    days: int, horizon: int, folds: int, workers: int, full: bool, seed: int = 7
) -> BenchResult:
    """Simulate, then time `parcours forecast run`'s passes on every series, hourly and daily
    (the fast first pass, a refresh of the hourly selections, optionally the full backtest of
    every candidate) and Prophet alone backtested and forecast on the same hourly series, each
    over `workers` processes."""
    inputs = territory_inputs(days, seed)
    daily = daily_inputs(inputs, DAILY_HORIZON + DAILY_MIN_TRAIN)
    now = datetime.now(UTC)
    common: dict[str, Any] = {"now": now, "folds": folds, "write": False, "workers": workers}
    hourly_pass: dict[str, Any] = {"metric": "occupancy", "horizon": horizon, "freq": "h"}
    daily_pass: dict[str, Any] = {
        "metric": DAILY_METRIC,
        "horizon": DAILY_HORIZON,
        "freq": "D",
        "min_train": DAILY_MIN_TRAIN,
    }

    def timed(
        hourly_kw: dict[str, Any], daily_kw: dict[str, Any] | None
    ) -> tuple[list[UnitResult], float]:
        t0 = time.perf_counter()
        out = run(None, inputs, **common, **hourly_pass, **hourly_kw)
        if daily_kw is not None and daily:
            run(None, daily, **common, **daily_pass, **daily_kw)
        return out, time.perf_counter() - t0

    fast, fast_s = timed({"mode": "fast"}, {"mode": "fast"})
    previous = {r.unit_id: r.selected for r in fast if r.selected}
    _, refresh_s = timed({"mode": "refresh", "previous": previous}, {"mode": "fast"})
    results, full_s = timed({"mode": "full"}, {"mode": "full"}) if full else (fast, None)
    prophet, prophet_s = timed({"only": [ProphetModel()]}, None)
    return BenchResult(
        len(inputs),
        days,
        horizon,
        folds,
        fast_s,
        refresh_s,
        full_s,
        prophet_s,
        results,
        prophet,
        len(daily),
    )


def report(r: BenchResult) -> str:
    """The bench's table and one-line summary."""
    lead = min(24, r.horizon)

    def at(res: UnitResult, model: str) -> float:
        acc = next((a for a in res.accuracy if a.model == model), None)
        return acc.mae_at(lead) if acc else float("nan")

    ok = [x for x in r.results if not x.error]
    selected = [x.selected for x in ok]
    ratio_sel = [at(x, x.selected or "") / at(x, "naive") for x in ok if at(x, "naive") > 0]
    p_ok = [x for x in r.prophet_results if not x.error]
    naive = {x.unit_id: at(x, "naive") for x in ok}
    ratio_prophet = [
        at(x, "prophet") / naive[x.unit_id] for x in p_ok if naive.get(x.unit_id, 0) > 0
    ]
    cov = [next(a.coverage for a in x.accuracy if a.model == x.selected) for x in ok]
    cov_p = [x.accuracy[0].coverage for x in p_ok]
    counts = pd.Series(selected).value_counts().to_dict()
    head = f"MAE@{lead}h / naive (median)"
    lines = [
        f"forecast bench: {r.series} series (wards, services, hospitals), {r.days} days of "
        f"hourly history, horizon {r.horizon} h, {r.folds} folds; and {r.daily_series} daily "
        f"series {DAILY_HORIZON} days ahead (not for Prophet alone)",
        f"{'':<44} {'seconds':>8} {head:>28} {'80% coverage (median)':>22}",
        f"{'Parcours, first pass (fast candidates)':<44} {r.fast_seconds:8.1f} "
        + (
            f"{np.median(ratio_sel):28.3f} {np.median(cov):22.2f}" if r.full_seconds is None else ""
        ),
        f"{'Parcours, refresh (refit selected + naive)':<44} {r.refresh_seconds:8.1f}",
    ]
    if r.full_seconds is not None:
        lines.append(
            f"{'Parcours, full backtest (every candidate)':<44} {r.full_seconds:8.1f} "
            f"{np.median(ratio_sel):28.3f} {np.median(cov):22.2f}"
        )
    lines += [
        f"{'Prophet alone (backtest + forecast)':<44} {r.prophet_seconds:8.1f} "
        f"{np.median(ratio_prophet):28.3f} {np.median(cov_p):22.2f}",
        f"selected models: {counts}; skipped series: {len(r.results) - len(ok)}",
        f"summary: {r.series} series refit and forecast in {r.refresh_seconds:.0f} s, first "
        f"pass {r.fast_seconds:.0f} s (goal < 60 s), Prophet alone {r.prophet_seconds:.0f} s; "
        f"selected beats naive at {lead} h on {sum(x < 1 for x in ratio_sel)}/{len(ratio_sel)}",
    ]
    return "\n".join(lines)
