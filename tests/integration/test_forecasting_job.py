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
from tests.support import parcours_env, parcours_process, wait_until

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
    candidates = {"stock_flow", "auto_ets", "auto_arima", "auto_theta", "prophet", "naive"}
    assert {a["model"] for a in report["accuracy"]} == candidates | {"seasonal_naive_7"}
    selected = report["selected"]
    assert report["models"][selected]["mase"] <= report["models"]["naive"]["mase"]
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
    assert len(scores) == 7
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
            == 7
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
