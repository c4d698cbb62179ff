"""`parcours forecast …`: backtest candidate models on a census series, select one per series,
and forecast bed demand with calibrated intervals (written to SQL by `run`)."""

from __future__ import annotations

import json
import time
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
        "selected_mae_vs_naive": (sel / naive if sel is not None and naive else None),
        "forecast_rows": r.forecasts,
        "error": r.error,
        "window": [w.isoformat() for w in r.window] if r.window else None,
        "models": models,
        "accuracy": [a.as_dict() for a in r.accuracy],
        "skipped": r.skipped,
    }


def _print(results: list[UnitResult], as_json: bool) -> None:
    if as_json:
        reports = [_report(r) for r in results]
        if len(reports) == 1:
            typer.echo(json.dumps(reports[0], indent=2))
        else:
            doc = {"selected": {r["unit_id"]: r["selected"] for r in reports}, "series": reports}
            typer.echo(json.dumps(doc, indent=2))
        return
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
) -> None:
    from forecasting import ForecastingError
    from forecasting.job import census_inputs, recent_selections, run

    if spf_csv is not None and csv is not None:
        raise _fail("give --csv or --spf-csv, not both")
    engine = None
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
        else:
            from parcours.db import make_engine
            from parcours.runtime import load_settings

            engine = make_engine(load_settings().db_url)
            step = "h"
            if metric != "occupancy":
                raise ForecastingError("the live census forecasts occupancy (--metric occupancy)")
            levels = ("hospital", "service", "ward") if unit_type == "all" else (unit_type,)
            inputs = [
                item for level in levels for item in census_inputs(engine, level, 3 * horizon)
            ]
    except ForecastingError as exc:
        raise _fail(str(exc)) from exc
    if not inputs:
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
    common: dict[str, Any] = {
        "metric": metric,
        "horizon": horizon,
        "freq": step,
        "folds": folds,
        "write": write,
        "progress": not as_json,
        "with_prophet": with_prophet,
        "workers": workers,
    }
    if write and engine is not None and reselect_hours is not None:
        # Every series gets a forecast quickly (a refresh of its last selection, or the fast
        # candidates), then the series without a recent full backtest get one.
        previous = recent_selections(engine, metric, horizon, now - timedelta(hours=reselect_hours))
        first = run(engine, inputs, now=now, mode="refresh", previous=previous, **common)
        pending = [item for item in inputs if item.unit_id not in previous]
        done = {r.unit_id: r for r in first}
        if pending:
            for r in run(engine, pending, now=datetime.now(UTC), mode="full", **common):
                if not r.error or not done[r.unit_id].accuracy:
                    done[r.unit_id] = r
        results = [done[item.unit_id] for item in inputs]
    else:
        results = run(engine, inputs, now=now, **common)
    if len(results) == 1 and results[0].error:
        raise _fail(f"{results[0].unit_id}: {results[0].error}")
    _print(results, as_json)


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
) -> None:
    """Backtest, select and forecast every unit; write forecasts, their terms, the selected
    model and the backtest to SQL."""
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
