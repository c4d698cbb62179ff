"""`parcours forecast run` on the real French census file, writing to the session's PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from forecasting.job import census_series
from parcours.db import make_engine, upsert
from parcours.db.pathway_models import CensusHourlyRow
from tests.support import fresh_database, parcours_env, parcours_process, wait_until

pytestmark = pytest.mark.integration


def forecast(args: list[str], pg_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parcours", "forecast", *args],
        env=parcours_env(DATABASE_URL=pg_url),
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_forecast_run_writes_forecasts_and_scores_and_reruns_idempotently(
    pg_url: str, shared_data: Path
) -> None:
    csv = str(shared_data / "timeseries" / "spf_covid_hospit_2020H1.csv")
    args = [
        "run",
        "--spf-csv",
        csv,
        "--dep",
        "21",
        "--metric",
        "hosp",
        "--horizon",
        "7",
        "--folds",
        "3",
        "--json",
    ]
    first = forecast(args, pg_url)
    assert first.returncode == 0, first.stderr[-2000:]
    report = json.loads(first.stdout)
    assert report["unit_id"] == "spf:21"
    assert report["points"] == 105
    candidates = {"stock_flow", "stock_flow_flat", "stock_flow_trend", "auto_ets", "auto_arima"}
    candidates |= {"auto_theta", "prophet", "naive"}
    assert {a["model"] for a in report["accuracy"]} == candidates | {"seasonal_naive_7", "ensemble"}
    selected = report["selected"]
    # Three folds are too few for any model's lead over the stock–flow default to be significant.
    assert selected == "stock_flow"
    written = sorted({selected, "naive", "stock_flow"})

    engine = make_engine(pg_url)
    query = text(
        "SELECT model, count(*) AS n, min(ds) AS first, max(ds) AS last, "
        "bool_and(yhat_lower <= yhat AND yhat <= yhat_upper) AS ordered "
        "FROM forecasts WHERE unit_id = 'spf:21' GROUP BY model ORDER BY model"
    )
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
        scores = conn.execute(
            text("SELECT model, folds, coverage FROM forecast_accuracy WHERE unit_id = 'spf:21'")
        ).all()
        chosen = conn.execute(
            text("SELECT selected_model, folds FROM forecast_series WHERE unit_id = 'spf:21'")
        ).one()
        terms = conn.execute(
            text(
                "SELECT now, expected_discharges, expected_admissions FROM forecast_terms "
                "WHERE unit_id = 'spf:21' AND model = 'stock_flow' ORDER BY ds"
            )
        ).all()
    assert [r["model"] for r in rows] == written
    for r in rows:
        assert r["n"] == 7
        assert r["first"].isoformat() == "2020-07-01T00:00:00+00:00"
        assert r["ordered"]
    assert len(scores) == 10
    assert all(s.folds == 3 and 0.0 <= s.coverage <= 1.0 for s in scores)
    assert tuple(chosen) == (selected, 3)
    assert len(terms) == 7
    assert all(t.now > 0 and t.expected_discharges > 0 for t in terms)

    again = forecast(args, pg_url)
    assert again.returncode == 0, again.stderr[-2000:]
    with engine.connect() as conn:
        count = conn.scalar(text("SELECT count(*) FROM forecasts WHERE unit_id = 'spf:21'"))
        assert count == 7 * len(written)
        assert (
            conn.scalar(text("SELECT count(*) FROM forecast_accuracy WHERE unit_id = 'spf:21'"))
            == 10
        )


def test_unknown_department_is_a_clear_error(pg_url: str, shared_data: Path) -> None:
    csv = str(shared_data / "timeseries" / "spf_covid_hospit_2020H1.csv")
    result = forecast(["backtest", "--spf-csv", csv, "--dep", "99", "--metric", "hosp"], pg_url)
    assert result.returncode == 2
    assert "error: no rows for département '99'" in result.stderr
    assert "Traceback" not in result.stderr


def test_forecast_run_reads_the_live_hourly_census(pg_url: str) -> None:
    """Hourly ward occupancy from `census_hourly` (hours with no row count as zero)."""
    engine = make_engine(pg_url)
    ward = "Location/fc-test-ward"
    start = pd.Timestamp("2026-03-02T00:00:00Z")
    hours = pd.date_range(start, periods=24 * 6, freq="h")
    rows = [
        {
            "unit_type": "ward",
            "unit_id": ward,
            "hour": h.to_pydatetime(),
            "hospital_id": "Organization/fc-test",
            "occupancy": int(20 + 6 * np.sin(2 * np.pi * h.hour / 24)),
            "admissions": 1,
            "discharges": 1,
            "transfers_in": 0,
            "transfers_out": 0,
            "ed_arrivals": 0,
        }
        for h in hours
        if h.hour != 3  # a gap: read as zero, not skipped
    ]
    with engine.begin() as conn:
        upsert(conn, CensusHourlyRow, rows, key=["unit_type", "unit_id", "hour"])
    series = census_series(engine, "occupancy", "ward")
    assert len(series[ward]) == 24 * 6
    assert (series[ward].set_index("ds").loc[start + pd.Timedelta(hours=3), "y"]) == 0.0

    result = forecast(
        ["run", "--unit-type", "ward", "--horizon", "24", "--folds", "2", "--json"], pg_url
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    report = {r["unit_id"]: r for r in out["series"]} if "series" in out else {out["unit_id"]: out}
    assert report[ward]["points"] == 24 * 6
    selected = report[ward]["selected"]
    with engine.connect() as conn:
        got = conn.execute(
            text(
                "SELECT model, count(*) AS n, min(ds) AS first FROM forecasts "
                "WHERE unit_id = :u AND metric = 'occupancy' GROUP BY model ORDER BY model"
            ),
            {"u": ward},
        ).all()
    assert [(g.model, g.n) for g in got] == [
        (m, 24) for m in sorted({selected, "naive", "stock_flow"})
    ]
    assert all(g.first == hours[-1] + pd.Timedelta(hours=1) for g in got)


def test_the_long_running_forecaster_waits_for_history_instead_of_dying(tmp_path: Path) -> None:
    from parcours.db import upgrade

    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade(empty)
    log = tmp_path / "forecaster.log"
    env = parcours_env(DATABASE_URL=empty)
    with parcours_process(["forecast", "run", "--every", "0.5"], env, log) as proc:
        wait_until(lambda: log.read_text().count("next forecast run") >= 2, 60, what="two rounds")
        assert proc.poll() is None
    text_ = log.read_text()
    assert "has 216 hours of census yet" in text_
    assert "Traceback" not in text_


def test_backtest_any_census_csv_names_the_selected_model(
    pg_url: str, shared_data: Path, tmp_path: Path
) -> None:
    """A plain CSV (one département's census with SPF's cumulative rad/dc columns)."""
    from forecasting.spf import load_spf

    spf = load_spf(shared_data / "timeseries" / "spf_covid_hospit_2020H1.csv")
    cote_dor = spf[spf["dep"] == "21"][["ds", "hosp", "rad", "dc"]]
    csv = tmp_path / "cote_dor.csv"
    cote_dor.rename(columns={"ds": "date"}).to_csv(csv, index=False)
    args = ["backtest", "--csv", str(csv), "--date-col", "date", "--value-col", "hosp"]
    args += ["--freq", "D", "--horizon", "7", "--folds", "6", "--no-prophet", "--json"]
    result = forecast(args, pg_url)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    selected = report["selected"]
    assert selected in report["models"]
    for name in ("stock_flow", "auto_ets", "auto_arima", "auto_theta", "naive"):
        scores = report["models"][name]
        assert {"mae", "rmse", "mase", "coverage"} <= set(scores)
        assert scores["folds"] == 6
    # The stock–flow model is the default; another is selected only for a clearly lower error.
    assert report["models"][selected]["mase"] <= report["models"]["stock_flow"]["mase"]
    assert "ensemble" in report["models"]
    check = report["selection_check"]
    assert check["folds"] == 3
    assert 0 <= check["coverage"] <= 1 and check["mae_vs_naive"] > 0
    assert report["models"]["stock_flow"]["mae"] < report["models"]["naive"]["mae"]

    text_out = forecast([a for a in args if a != "--json"], pg_url)
    assert text_out.returncode == 0
    assert f"selected: {selected}" in text_out.stdout


def test_backtest_of_a_bad_csv_is_one_error_line_naming_the_row(
    pg_url: str, tmp_path: Path
) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("date,beds\n2026-01-01,10\n2026-01-02,11\n2026-01-03,douze\n")
    args = ["backtest", "--csv", str(csv), "--date-col", "date", "--value-col", "beds"]
    result = forecast(args, pg_url)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {csv} line 4: column 'beds' holds 'douze', not a number"
    )
    assert "Traceback" not in result.stderr
    missing = forecast([*args[:-1], "lits"], pg_url)
    assert missing.returncode == 2
    assert "no column 'lits' (the header has: date, beds)" in missing.stderr


def test_forecast_run_writes_daily_forecasts_of_the_live_census(pg_url: str) -> None:
    """Thirty days of hourly census give a daily series (occupancy at midnight UTC) forecast 14
    days ahead beside the hourly one, under the metric `occupancy_daily`. In a database of its
    own, so that the run's one daily series is this ward's."""
    with fresh_database(pg_url) as db:
        _daily_forecasts_of_the_live_census(db)


def _daily_forecasts_of_the_live_census(pg_url: str) -> None:
    engine = make_engine(pg_url)
    ward = "Location/fc-daily-ward"
    start = pd.Timestamp("2026-03-02T00:00:00Z")
    hours = pd.date_range(start, periods=24 * 30, freq="h")
    rng = np.random.default_rng(5)
    arrivals = rng.poisson(np.where(hours.dayofweek < 5, 0.5, 0.2))
    leaving = rng.poisson(0.4, len(hours))
    occupancy = np.maximum(25 + np.cumsum(arrivals - leaving), 0)
    rows = [
        {
            "unit_type": "ward",
            "unit_id": ward,
            "hour": h.to_pydatetime(),
            "hospital_id": "Organization/fc-test",
            "occupancy": int(occupancy[i]),
            "admissions": int(arrivals[i]),
            "discharges": int(leaving[i]),
            "transfers_in": 0,
            "transfers_out": 0,
            "ed_arrivals": 0,
        }
        for i, h in enumerate(hours)
    ]
    with engine.begin() as conn:
        upsert(conn, CensusHourlyRow, rows, key=["unit_type", "unit_id", "hour"])

    args = ["run", "--unit-type", "ward", "--horizon", "24", "--folds", "2", "--no-prophet"]
    result = forecast([*args, "--json"], pg_url)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    daily = out["occupancy_daily"]
    assert daily["unit_id"] == ward
    # The first midnight has no day of flows before it.
    assert daily["points"] == 29
    last_midnight = pd.Timestamp("2026-03-31T00:00:00Z")
    with engine.connect() as conn:
        series = conn.execute(
            text(
                "SELECT freq, horizon, selected_model, history_end FROM forecast_series "
                "WHERE unit_id = :u AND metric = 'occupancy_daily'"
            ),
            {"u": ward},
        ).one()
        got = conn.execute(
            text(
                "SELECT model, count(*) AS n, min(ds) AS first, max(ds) AS last FROM forecasts "
                "WHERE unit_id = :u AND metric = 'occupancy_daily' GROUP BY model"
            ),
            {"u": ward},
        ).all()
        terms = conn.execute(
            text(
                "SELECT count(*) FROM forecast_terms "
                "WHERE unit_id = :u AND metric = 'occupancy_daily' AND model = 'stock_flow'"
            ),
            {"u": ward},
        ).scalar_one()
    assert (series.freq, series.horizon) == ("D", 14)
    assert pd.Timestamp(series.history_end) == last_midnight
    assert {g.model for g in got} == {series.selected_model, "naive", "stock_flow"}
    for g in got:
        assert g.n == 14
        assert pd.Timestamp(g.first) == last_midnight + pd.Timedelta(days=1)
        assert pd.Timestamp(g.last) == last_midnight + pd.Timedelta(days=14)
    assert terms == 14
    # The hourly forecast is still there (other tests' wards may share the database).
    hourly = {r["unit_id"]: r for r in out.get("series", [out])}
    assert hourly[ward]["points"] == 24 * 30
