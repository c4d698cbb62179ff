"""`parcours forecast …`: backtest and forecast bed demand, writing both to SQL."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import pandas as pd

forecast_app = typer.Typer(
    help="Bed-demand forecasts (Prophet) and their backtests.", no_args_is_help=True
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
DepOption = Annotated[
    list[str], typer.Option("--dep", help="Département(s) of --spf-csv, e.g. 21.")
]
MetricOption = Annotated[
    str,
    typer.Option(
        help="Series: occupancy, admissions, discharges, ed_arrivals (census); hosp, rea (--spf-csv)."
    ),
]
UnitOption = Annotated[
    str, typer.Option("--unit-type", help="Census level: ward, service or hospital.")
]


def _spf_series(path: Path, deps: list[str], metric: str) -> dict[str, pd.DataFrame]:
    from forecasting.spf import department_series, load_spf

    frame = load_spf(path)
    chosen = deps or sorted(frame["dep"].unique())
    return {f"spf:{dep}": department_series(frame, dep, metric) for dep in chosen}


def _execute(
    *,
    do_backtest: bool,
    do_forecast: bool,
    spf_csv: Path | None,
    deps: list[str],
    metric: str,
    unit_type: str,
    horizon: int,
    folds: int,
    as_json: bool,
) -> None:
    from forecasting import ForecastingError
    from forecasting.job import census_series, run
    from forecasting.models import default_models
    from parcours.db import make_engine
    from parcours.runtime import load_settings

    settings = load_settings()
    engine = make_engine(settings.db_url)
    try:
        if spf_csv is not None:
            series, freq = _spf_series(spf_csv, deps, metric), "D"
        else:
            series, freq = census_series(engine, metric, unit_type, min_points=3 * horizon), "h"
    except (ForecastingError, KeyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not series:
        typer.echo(
            f"error: no {unit_type} has {3 * horizon} hours of census yet; let the stream worker "
            "run, or backfill history with `parcours simulate --days N --kafka`",
            err=True,
        )
        raise typer.Exit(2)
    results = run(
        engine,
        series,
        metric=metric,
        models=default_models(freq),
        horizon=horizon,
        freq=freq,
        folds=folds,
        now=datetime.now(UTC),
        do_backtest=do_backtest,
        do_forecast=do_forecast,
    )
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "unit_id": r.unit_id,
                        "points": r.points,
                        "forecast_rows": r.forecasts,
                        "error": r.error,
                        "accuracy": [a.as_dict() for a in r.accuracy],
                    }
                    for r in results
                ],
                indent=2,
            )
        )
        return
    for r in results:
        if r.error:
            typer.echo(f"{r.unit_id}: skipped: {r.error}")
            continue
        typer.echo(f"{r.unit_id}: {r.points} points, {r.forecasts} forecast rows written")
        if r.accuracy:
            best = min(r.accuracy, key=lambda a: a.mae)
            typer.echo(f"  {'model':<20} {'MAE':>9} {'RMSE':>9} {'MAPE':>7} {'coverage':>9}")
            for a in sorted(r.accuracy, key=lambda a: a.mae):
                mark = " <- best" if a is best else ""
                typer.echo(
                    f"  {a.model:<20} {a.mae:9.2f} {a.rmse:9.2f} {a.mape:7.1%} {a.coverage:9.0%}{mark}"
                )


@forecast_app.command("backtest")
def backtest_cmd(
    spf_csv: SpfOption = None,
    dep: DepOption = [],  # noqa: B006 - Typer reads the default
    metric: MetricOption = "occupancy",
    unit_type: UnitOption = "ward",
    horizon: Annotated[
        int, typer.Option(help="Steps ahead to score (hours; days for --spf-csv).")
    ] = 24,
    folds: Annotated[int, typer.Option(help="Rolling origins.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Score Prophet against naive baselines on history it did not see; write the scores to SQL."""
    _execute(
        do_backtest=True,
        do_forecast=False,
        spf_csv=spf_csv,
        deps=dep,
        metric=metric,
        unit_type=unit_type,
        horizon=horizon,
        folds=folds,
        as_json=as_json,
    )


@forecast_app.command("run")
def run_cmd(
    spf_csv: SpfOption = None,
    dep: DepOption = [],  # noqa: B006 - Typer reads the default
    metric: MetricOption = "occupancy",
    unit_type: UnitOption = "ward",
    horizon: Annotated[int, typer.Option(help="Steps ahead (hours; days for --spf-csv).")] = 72,
    folds: Annotated[int, typer.Option(help="Rolling origins of the accompanying backtest.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    every: Annotated[
        float | None,
        typer.Option(help="Run again every SECONDS until stopped (a long-running forecaster)."),
    ] = None,
) -> None:
    """Backtest, then forecast every unit with every model; write forecasts and scores to SQL."""
    while True:
        try:
            _execute(
                do_backtest=True,
                do_forecast=True,
                spf_csv=spf_csv,
                deps=dep,
                metric=metric,
                unit_type=unit_type,
                horizon=horizon,
                folds=folds,
                as_json=as_json,
            )
        except typer.Exit as exc:
            # With --every, too little history yet is a reason to wait, not to stop.
            if every is None or exc.exit_code != 2:
                raise
        if every is None:
            return
        typer.echo(f"next forecast run in {every:.0f} s", err=True)
        time.sleep(every)
