"""The stitched forecast (one model per band of leads) written by the job to PostgreSQL and
read back by the dashboard in place of the selected model's own forecast."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
from sqlalchemy import text

from dashboard import queries
from forecasting.backtest import STITCHED
from forecasting.job import SeriesInput, _record, forecast_one
from parcours.db import make_engine
from tests.unit.test_forecast_bands import MODELS, series


def test_the_job_stores_the_stitched_forecast_and_the_dashboard_reads_it(pg_url: str) -> None:
    engine = make_engine(pg_url)
    item = SeriesInput("spf:bands", series(), "departement")
    outcome = forecast_one(item, MODELS, horizon=14, freq="D", folds=6)
    now = datetime(2026, 12, 6, tzinfo=UTC)
    result = _record(engine, item, outcome, "hosp", 14, "D", now, True, 0.8)
    assert result.selected == "stock_flow"
    assert result.selected_by_band == ((1, 7, "stock_flow"), (8, 14, "far_sighted"))
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT model, count(*) AS n FROM forecasts WHERE unit_id = 'spf:bands' "
                "GROUP BY model ORDER BY model"
            )
        ).all()
        selected = conn.scalar(
            text("SELECT selected_model FROM forecast_series WHERE unit_id = 'spf:bands'")
        )
    assert [tuple(r) for r in rows] == [
        ("far_sighted", 14),
        ("naive", 14),
        (STITCHED + "far_sighted", 7),
        (STITCHED + "stock_flow", 7),
        ("stock_flow", 14),
    ]
    assert selected == "stock_flow"

    shown = queries.unit_forecast(engine, "spf:bands", "hosp")
    assert shown is not None and shown.model == "stock_flow"
    _, forecasts = outcome
    stitched = pd.concat(
        [forecasts[STITCHED + "stock_flow"], forecasts[STITCHED + "far_sighted"]],
        ignore_index=True,
    )
    assert len(shown.points) == 14
    assert np.allclose(shown.points["yhat"].astype(float), stitched["yhat"])
    assert np.allclose(shown.points["yhat_upper"].astype(float), stitched["yhat_upper"])
    # The far leads are not the selected model's own forecast.
    own = forecasts["stock_flow"]["yhat"].to_numpy()
    assert not np.allclose(shown.points["yhat"].astype(float)[7:], own[7:])
