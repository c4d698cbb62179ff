"""Forecasting models, backtest arithmetic and the SPF census loader (on the real file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecasting import ForecastingError
from forecasting.backtest import backtest, origins
from forecasting.models import ProphetModel, SeasonalNaive, default_models
from forecasting.spf import department_series, load_spf


def hourly(days: int, seed: int = 0) -> pd.DataFrame:
    ds = pd.date_range("2026-01-05", periods=24 * days, freq="h")
    hour = np.arange(len(ds)) % 24
    y = 300 + 40 * np.sin(2 * np.pi * hour / 24) + np.random.default_rng(seed).normal(0, 3, len(ds))
    return pd.DataFrame({"ds": ds, "y": y})


def test_naive_repeats_the_last_value_and_widens_with_the_horizon() -> None:
    history = pd.DataFrame(
        {"ds": pd.date_range("2026-01-01", periods=6, freq="D"), "y": [1, 2, 4, 3, 5, 6.0]}
    )
    fc = SeasonalNaive(1).forecast(history, 3, "D")
    assert list(fc["yhat"]) == [6.0, 6.0, 6.0]
    assert list(fc["ds"]) == list(pd.date_range("2026-01-07", periods=3, freq="D"))
    widths = (fc["yhat_upper"] - fc["yhat_lower"]).to_list()
    assert widths[0] < widths[1] < widths[2]


def test_seasonal_naive_repeats_the_last_day() -> None:
    history = hourly(3)
    fc = SeasonalNaive(24).forecast(history, 30, "h")
    assert np.allclose(fc["yhat"].iloc[:24], history["y"].iloc[-24:])
    assert np.isclose(fc["yhat"].iloc[24], history["y"].iloc[-24])


def test_too_short_a_history_says_what_to_do() -> None:
    history = pd.DataFrame(
        {"ds": pd.date_range("2026-01-01", periods=3, freq="D"), "y": [1.0, 2, 3]}
    )
    with pytest.raises(ForecastingError, match="history"):
        SeasonalNaive(7).forecast(history, 2, "D")


def test_origins_are_horizon_apart_and_leave_enough_training() -> None:
    assert origins(100, 10, 3, 20) == [70, 80, 90]
    assert origins(35, 10, 3, 20) == [25]
    with pytest.raises(ForecastingError):
        origins(25, 10, 3, 20)


def test_backtest_scores_a_perfect_model_as_perfect() -> None:
    series = pd.DataFrame({"ds": pd.date_range("2026-01-01", periods=40, freq="D"), "y": 5.0})
    [acc] = backtest(series, [SeasonalNaive(1)], horizon=5, freq="D", folds=3)
    assert acc.folds == 3
    assert acc.mae == 0.0
    assert acc.coverage == 1.0


def test_prophet_beats_the_naive_forecast_on_a_daily_cycle() -> None:
    series = hourly(14)
    scores = {
        a.model: a for a in backtest(series, default_models("h"), horizon=24, freq="h", folds=2)
    }
    # Three models: the backtest adds their ensemble.
    assert set(scores) == {"prophet", "naive", "seasonal_naive_24", "ensemble"}
    assert scores["prophet"].mae < scores["naive"].mae
    assert 0.5 <= scores["prophet"].coverage <= 1.0


def test_prophet_forecast_has_ordered_non_negative_intervals() -> None:
    fc = ProphetModel().forecast(hourly(5), 12, "h")
    assert len(fc) == 12
    assert (fc["yhat_lower"] <= fc["yhat"]).all()
    assert (fc["yhat"] <= fc["yhat_upper"]).all()
    assert (fc["yhat_lower"] >= 0).all()


def test_spf_loader_reads_every_date_format_and_keeps_codes(shared_data: Path) -> None:
    frame = load_spf(shared_data / "timeseries" / "spf_covid_hospit_2020H1.csv")
    assert frame["dep"].nunique() == 101
    assert {"01", "2A", "2B", "971"} <= set(frame["dep"])
    cote_dor = department_series(frame, "21")
    assert len(cote_dor) == 105
    assert cote_dor["ds"].min() == pd.Timestamp("2020-03-18")
    assert cote_dor["ds"].max() == pd.Timestamp("2020-06-30")
    assert (cote_dor["ds"].diff().dropna() == pd.Timedelta(days=1)).all()
    # 27/06/2020 is written dd/mm/yyyy for dep 21 in the raw file; it must be there, once.
    assert (cote_dor["ds"] == pd.Timestamp("2020-06-27")).sum() == 1
    with pytest.raises(ForecastingError, match="département"):
        department_series(frame, "99")
