"""`parcours forecast …`: backtest candidate models on a census series, select one per series,
and forecast bed demand with calibrated intervals (written to SQL by `run`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from forecasting.job import SeriesInput, UnitResult

forecast_app = typer.Typer(
    help="Bed-demand forecasts (stock–flow, StatsForecast, Prophet, naive) and their backtests.",
    no_args_is_help=True,
)

SpfOption = Annotated[
    Path | None,
    typer.Option(
        "--spf-csv",
        help="Use the Santé publique France daily census file instead of the live census.",
        exists=True,
        dir_okay=False,
    ),
]
CsvOption = Annotated[
    Path | None,
    typer.Option(
        "--csv",
        help="Any census CSV (with --date-col and --value-col).",
        exists=True,
        dir_okay=False,
    ),
]
DepOption = Annotated[
    list[str], typer.Option("--dep", help="Département(s) of --spf-csv, e.g. 21.")
]
MetricOption = Annotated[
    str,
    typer.Option(
        help=(
            "Series: occupancy, admissions, discharges, ed_arrivals (census); "
            "hosp, rea (--spf-csv)."
        )
    ),
]
UnitOption = Annotated[
    str, typer.Option("--unit-type", help="Census level: ward, service, hospital, or all.")
]
DateCol = Annotated[str | None, typer.Option("--date-col", help="Date column of --csv.")]
ValueCol = Annotated[str | None, typer.Option("--value-col", help="Census column of --csv.")]
AdmCol = Annotated[
    str | None, typer.Option("--admissions-col", help="Admissions per step column of --csv.")
]
DisCol = Annotated[
    str | None, typer.Option("--discharges-col", help="Discharges per step column of --csv.")
]
FreqOption = Annotated[
    str | None,
    typer.Option("--freq", help="Step of --csv: D (daily) or h (hourly). Default D."),
]
CapOption = Annotated[
    float | None, typer.Option("--capacity", help="Beds of a --csv series (interval ceiling).")
]
# How soon the long-running forecaster looks again when the census is still too short.
RETRY_S = 30.0

PROPHET_OPT = Annotated[
    bool, typer.Option("--prophet/--no-prophet", help="Include Prophet among the candidates.")
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _file_inputs(
    *,
    spf_csv: Path | None,
    csv: Path | None,
    deps: list[str],
    metric: str,
    date_col: str | None,
    value_col: str | None,
    admissions_col: str | None,
    discharges_col: str | None,
    freq: str | None,
    capacity: float | None,
) -> tuple[list[SeriesInput], str]:
    from forecasting.job import SeriesInput
    from forecasting.spf import department_series, load_census_csv, load_spf
    from forecasting.stockflow import FlowStockFlow, daily_variants

    if csv is not None:
        if not date_col or not value_col:
            raise _fail("--csv needs --date-col and --value-col")
        step = (freq or "D").strip()
        if step not in ("D", "h", "H"):
            raise _fail(f"--freq must be D or h, not {step!r}")
        step = "h" if step in ("h", "H") else "D"
        frame = load_census_csv(csv, date_col, value_col, admissions_col, discharges_col, step)
        flows = "admissions" in frame and "departures" in frame
        models = (daily_variants() if step == "D" else [FlowStockFlow()]) if flows else []
        return [SeriesInput(f"csv:{csv.stem}", frame, None, models, capacity)], step
    assert spf_csv is not None
    table = load_spf(spf_csv)
    chosen = deps or sorted(table["dep"].unique())
    out = []
    for dep in chosen:
        frame = department_series(table, dep, metric)
        models = daily_variants() if "admissions" in frame else []
        out.append(SeriesInput(f"spf:{dep}", frame, "departement", models, None))
    return out, "D"


def _report(r: UnitResult) -> dict[str, Any]:
    models = {a.model: a.as_dict() for a in r.accuracy}
    mae = {a.model: a.mae for a in r.accuracy}
    naive = mae.get("naive")
    sel = mae.get(r.selected) if r.selected else None
    return {
        "unit_id": r.unit_id,
        "points": r.points,
        "selected": r.selected,
        "selected_by_band": [
            {"leads": [first, last], "model": name} for first, last, name in r.selected_by_band
        ],
        "selected_mae_vs_naive": (sel / naive if sel is not None and naive else None),
        "forecast_rows": r.forecasts,
        "error": r.error,
        "window": [w.isoformat() for w in r.window] if r.window else None,
        "models": models,
        "accuracy": [a.as_dict() for a in r.accuracy],
        "skipped": r.skipped,
        "selection_check": r.check.as_dict() if r.check else None,
    }


def _document(results: list[UnitResult]) -> dict[str, Any]:
    reports = [_report(r) for r in results]
    if len(reports) == 1:
        return reports[0]
    return {"selected": {r["unit_id"]: r["selected"] for r in reports}, "series": reports}


def _print(
    results: list[UnitResult],
    as_json: bool,
    more: list[tuple[str, int, list[UnitResult]]] | None = None,
) -> None:
    """Print the results of the main metric; `more` are other metrics of the same run (the
    live census's daily occupancy), under their metric's name."""
    if as_json:
        doc = _document(results)
        for metric, _, extra in more or []:
            doc[metric] = _document(extra)
        typer.echo(json.dumps(doc, indent=2))
        return
    _print_text(results)
    for metric, horizon, extra in more or []:
        typer.echo(f"{metric}: {len(extra)} series, {horizon} days ahead")
        _print_text(extra)


def _print_text(results: list[UnitResult]) -> None:
    for r in results:
        if r.error:
            typer.echo(f"{r.unit_id}: skipped: {r.error}")
            continue
        written = f", {r.forecasts} forecast rows written" if r.forecasts else ""
        typer.echo(f"{r.unit_id}: {r.points} points{written}")
        if not r.accuracy:
            continue
        typer.echo(f"  {'model':<16} {'MAE':>9} {'RMSE':>9} {'MASE':>7} {'coverage':>9}")
        for a in sorted(r.accuracy, key=lambda a: a.mase):
            mark = "  <- selected" if a.model == r.selected else ""
            typer.echo(
                f"  {a.model:<16} {a.mae:9.2f} {a.rmse:9.2f} {a.mase:7.3f} {a.coverage:9.0%}{mark}"
            )
        for name, why in r.skipped.items():
            typer.echo(f"  {name:<16} skipped: {why}")
        typer.echo(f"  selected: {r.selected}")
        if len({name for _, _, name in r.selected_by_band}) > 1:
            bands = ", ".join(f"{a}–{b}: {name}" for a, b, name in r.selected_by_band)
            typer.echo(f"  selected by band of leads: {bands}")
        if r.check is not None and r.check.naive_mae > 0:
            typer.echo(
                f"  selection check, last {r.check.folds} folds each chosen on the folds before: "
                f"MAE {r.check.mae / r.check.naive_mae:.2f} × naive, "
                f"coverage {r.check.coverage:.0%}"
            )


DAILY_METRIC = "occupancy_daily"
# The shortest history (days) a daily backtest fold of the live census fits on.
DAILY_MIN_TRAIN = 14


@dataclass(frozen=True)
class _Pass:
    """One metric of a run: its series, step, horizon and shortest backtest training."""

    metric: str
    step: str
    horizon: int
    inputs: list[SeriesInput]
    min_train: int | None = None


def _execute(
    *,
    write: bool,
    spf_csv: Path | None,
    csv: Path | None,
    deps: list[str],
    metric: str,
    unit_type: str,
    horizon: int,
    folds: int,
    as_json: bool,
    with_prophet: bool,
    workers: int = 1,
    reselect_hours: float | None = None,
    date_col: str | None = None,
    value_col: str | None = None,
    admissions_col: str | None = None,
    discharges_col: str | None = None,
    freq: str | None = None,
    capacity: float | None = None,
    daily_horizon: int = 0,
) -> None:
    from forecasting import ForecastingError
    from forecasting.job import census_inputs, daily_inputs, recent_selections, run

    if spf_csv is not None and csv is not None:
        raise _fail("give --csv or --spf-csv, not both")
    engine = None
    passes: list[_Pass] = []
    try:
        if spf_csv is not None or csv is not None:
            inputs, step = _file_inputs(
                spf_csv=spf_csv,
                csv=csv,
                deps=deps,
                metric=metric,
                date_col=date_col,
                value_col=value_col,
                admissions_col=admissions_col,
                discharges_col=discharges_col,
                freq=freq,
                capacity=capacity,
            )
            passes.append(_Pass(metric, step, horizon, inputs))
        else:
            from parcours.db import make_engine
            from parcours.runtime import load_settings

            engine = make_engine(load_settings().db_url)
            if metric != "occupancy":
                raise ForecastingError("the live census forecasts occupancy (--metric occupancy)")
            levels = ("hospital", "service", "ward") if unit_type == "all" else (unit_type,)
            hourly = [
                item for level in levels for item in census_inputs(engine, level, 3 * horizon)
            ]
            passes.append(_Pass(metric, "h", horizon, hourly))
            if daily_horizon > 0 and hourly:
                daily = daily_inputs(hourly, daily_horizon + DAILY_MIN_TRAIN)
                if daily:
                    passes.append(_Pass(DAILY_METRIC, "D", daily_horizon, daily, DAILY_MIN_TRAIN))
    except ForecastingError as exc:
        raise _fail(str(exc)) from exc
    if not passes[0].inputs:
        raise _fail(
            f"no {'ward, service or hospital' if unit_type == 'all' else unit_type} has "
            f"{3 * horizon} hours of census yet; let the stream worker "
            "run, or backfill history with `parcours simulate --days N --kafka`"
        )
    if write and engine is None:
        from parcours.db import make_engine
        from parcours.runtime import load_settings

        engine = make_engine(load_settings().db_url)
    now = datetime.now(UTC)

    def common(p: _Pass) -> dict[str, Any]:
        return {
            "metric": p.metric,
            "horizon": p.horizon,
            "freq": p.step,
            "folds": folds,
            "write": write,
            "progress": not as_json,
            "with_prophet": with_prophet,
            "workers": workers,
            "min_train": p.min_train,
        }

    outcome: list[tuple[_Pass, list[UnitResult]]] = []
    if write and engine is not None and reselect_hours is not None:
        # Every series of every metric gets a forecast quickly (a refresh of its last selection,
        # or the fast candidates), then the series without a recent full backtest get one.
        since = now - timedelta(hours=reselect_hours)
        firsts = []
        for p in passes:
            previous = recent_selections(engine, p.metric, p.horizon, since)
            first = run(engine, p.inputs, now=now, mode="refresh", previous=previous, **common(p))
            firsts.append((previous, {r.unit_id: r for r in first}))
        for p, (previous, done) in zip(passes, firsts, strict=True):
            pending = [item for item in p.inputs if item.unit_id not in previous]
            if pending:
                for r in run(engine, pending, now=datetime.now(UTC), mode="full", **common(p)):
                    if not r.error or not done[r.unit_id].accuracy:
                        done[r.unit_id] = r
            outcome.append((p, [done[item.unit_id] for item in p.inputs]))
    else:
        outcome = [(p, run(engine, p.inputs, now=now, **common(p))) for p in passes]
    results = outcome[0][1]
    if len(outcome) == 1 and len(results) == 1 and results[0].error:
        raise _fail(f"{results[0].unit_id}: {results[0].error}")
    _print(results, as_json, [(p.metric, p.horizon, r) for p, r in outcome[1:]])


@forecast_app.command("backtest")
def backtest_cmd(
    csv: CsvOption = None,
    date_col: DateCol = None,
    value_col: ValueCol = None,
    admissions_col: AdmCol = None,
    discharges_col: DisCol = None,
    freq: FreqOption = None,
    capacity: CapOption = None,
    spf_csv: SpfOption = None,
    dep: DepOption = [],  # noqa: B006 - Typer reads the default
    metric: MetricOption = "occupancy",
    unit_type: UnitOption = "ward",
    horizon: Annotated[
        int, typer.Option(help="Steps ahead to score (hours; days for daily files).")
    ] = 24,
    folds: Annotated[int, typer.Option(help="Rolling origins, `horizon` apart.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    with_prophet: PROPHET_OPT = True,
    workers: Annotated[int, typer.Option(min=1, help="Processes sharing the series.")] = 2,
) -> None:
    """Score every candidate on history it did not see (MAE, RMSE, MASE, 80 % interval
    coverage) and name the model selected per series. Writes nothing."""
    _execute(
        write=False,
        spf_csv=spf_csv,
        csv=csv,
        deps=dep,
        metric="hosp" if (spf_csv is not None and metric == "occupancy") else metric,
        unit_type=unit_type,
        horizon=horizon,
        folds=folds,
        as_json=as_json,
        with_prophet=with_prophet,
        workers=workers,
        date_col=date_col,
        value_col=value_col,
        admissions_col=admissions_col,
        discharges_col=discharges_col,
        freq=freq,
        capacity=capacity,
    )


@forecast_app.command("run")
def run_cmd(
    spf_csv: SpfOption = None,
    dep: DepOption = [],  # noqa: B006 - Typer reads the default
    metric: MetricOption = "occupancy",
    unit_type: UnitOption = "all",
    horizon: Annotated[int, typer.Option(help="Steps ahead (hours; days for --spf-csv).")] = 72,
    folds: Annotated[int, typer.Option(help="Rolling origins of the backtest.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    with_prophet: PROPHET_OPT = True,
    workers: Annotated[int, typer.Option(min=1, help="Processes sharing the series.")] = 2,
    reselect_hours: Annotated[
        float,
        typer.Option(
            help="Backtest every candidate again when the last full backtest is older than "
            "this; in between, refit the selected model (and stock–flow, naive) only."
        ),
    ] = 24.0,
    every: Annotated[
        float | None,
        typer.Option(help="Run again every SECONDS until stopped (a long-running forecaster)."),
    ] = None,
    daily_horizon: Annotated[
        int,
        typer.Option(
            min=0,
            help="Days ahead of the daily forecast of the live census (occupancy at midnight "
            "UTC, metric occupancy_daily); 0: none.",
        ),
    ] = 14,
) -> None:
    """Backtest, select and forecast every unit; write forecasts, their terms, the selected
    model and the backtest to SQL. The live census is forecast hourly (`--horizon` hours) and
    daily (`--daily-horizon` days, metric occupancy_daily)."""
    while True:
        wait = every
        try:
            _execute(
                write=True,
                spf_csv=spf_csv,
                csv=None,
                deps=dep,
                metric="hosp" if (spf_csv is not None and metric == "occupancy") else metric,
                unit_type=unit_type,
                horizon=horizon,
                folds=folds,
                as_json=as_json,
                with_prophet=with_prophet,
                workers=workers,
                reselect_hours=reselect_hours,
                daily_horizon=daily_horizon if spf_csv is None else 0,
            )
        except typer.Exit as exc:
            # With --every, too little history yet is a reason to wait, not to stop; the census
            # is filling up, so look again soon rather than a whole period later.
            if every is None or exc.exit_code != 2:
                raise
            wait = min(every, RETRY_S)
        if every is None or wait is None:
            return
        typer.echo(f"next forecast run in {wait:.0f} s", err=True)
        time.sleep(wait)
