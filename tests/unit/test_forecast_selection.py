"""Model selection that does not trust a lucky winner, the ensemble built fold by fold from what
was known at each origin, intervals scaled by how much the series moves lately, and the daily
census read off the hourly one."""

from __future__ import annotations

import numpy as np
import pandas as pd

from forecasting.backtest import (
    calibrate,
    choose,
    local_scales,
    online_ensemble,
    run_backtest,
    selection_check,
)
from forecasting.job import daily_census
from forecasting.models import Ensemble, Model, SeasonalNaive
from forecasting.stockflow import DailyFromHourly, EpisodeStockFlow
from tests.unit.test_forecast_models import simulated_ward


def test_a_model_that_wins_by_chance_does_not_replace_the_default() -> None:
    steady = np.array([1.0, 1.0, 1.0, 1.0])
    # Lower mean (0.975) but the differences (-0.1, +0.2, -0.2, 0) are noise: t ≈ -0.3.
    lucky = np.array([0.9, 1.2, 0.8, 1.0])
    assert choose({"stock_flow": steady, "lucky": lucky}, "stock_flow") == "stock_flow"
    # Better on every fold: t far below -2.
    better = np.array([0.5, 0.6, 0.5, 0.55])
    assert choose({"stock_flow": steady, "better": better}, "stock_flow") == "better"
    # Without a default, the lowest mean error; fewer than 3 folds keep the default.
    assert choose({"stock_flow": steady, "lucky": lucky}, None) == "lucky"
    assert choose({"stock_flow": steady[:2], "better": better[:2]}, "stock_flow") == "stock_flow"


def test_the_online_ensemble_uses_only_the_folds_before_each_origin() -> None:
    actual = np.zeros((3, 2))
    points = {
        "a": np.array([[1.0, 1.0], [1.0, 1.0], [9.0, 9.0]]),
        "b": np.array([[2.0, 2.0], [5.0, 5.0], [0.0, 0.0]]),
        "c": np.array([[6.0, 6.0], [0.0, 0.0], [0.0, 0.0]]),
    }
    ens, members = online_ensemble(actual, points, size=2)
    # Fold 0: no earlier fold, every model. Fold 1: best on fold 0 are a (1) and b (2).
    # Fold 2: mean errors over folds 0-1: a 1, b 3.5, c 3 → a and c.
    assert np.allclose(ens, [[3.0, 3.0], [3.0, 3.0], [4.5, 4.5]])
    # After the history: over all folds a 11/3, b 7/3, c 2 → c and b.
    assert members == ("c", "b")


def test_local_scales_follow_the_recent_moves_with_a_floor() -> None:
    y = np.r_[np.arange(0.0, 40.0, 2.0), np.full(20, 40.0)]
    scales, now = local_scales(y, [20, 30], season=1)
    # The last 14 moves before 20: steps of 2. Before 30: 5 steps of 2 and 9 flat → 10/14.
    assert np.allclose(scales, [2.0, 10 / 14])
    # The last fortnight is flat (0): a tenth of the mean of the others.
    assert np.isclose(now, 0.1 * (2.0 + 10 / 14) / 2)
    ones, one = local_scales(np.full(30, 7.0), [20], season=1)
    assert list(ones) == [1.0] and one == 1.0


def test_calibrated_halfwidths_scale_with_the_series_now() -> None:
    fc = pd.DataFrame(
        {
            "ds": pd.date_range("2026-01-01", periods=2, freq="D"),
            "yhat": [50.0, 50.0],
            "yhat_lower": [0.0, 0.0],
            "yhat_upper": [0.0, 0.0],
        }
    )
    scores = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]])
    narrow = calibrate(fc, scores, 0.8)
    wide = calibrate(fc, scores, 0.8, scale=3.0)
    assert np.allclose(narrow["yhat_upper"] - narrow["yhat"], [1.0, 1.0])
    assert np.allclose(wide["yhat_upper"] - wide["yhat"], [3.0, 3.0])


def test_selection_check_scores_the_later_folds_chosen_on_earlier_ones() -> None:
    actual = np.zeros((6, 2))
    points = {
        "naive": np.full((6, 2), 2.0),
        "stock_flow": np.full((6, 2), 1.0),
        "lucky": np.array([[0.0, 0.0]] * 3 + [[4.0, 4.0]] * 3),
    }
    check = selection_check(actual, points, "stock_flow", np.ones(6))
    assert check is not None
    # Folds 3-5: chosen on folds 0..k-1. "lucky" was perfect on folds 0-2 (t = -inf) and is
    # chosen at fold 3 (error 4); at folds 4 and 5 its lead is gone, stock_flow (error 1).
    assert check.folds == 3
    assert np.isclose(check.mae, (4 + 1 + 1) / 3)
    assert check.naive_mae == 2.0
    assert selection_check(actual[:3], points, "stock_flow", np.ones(3)) is None


def test_backtest_keeps_the_stock_flow_default_and_offers_the_ensemble() -> None:
    stays, census = simulated_ward(days=40)
    models: list[Model] = [EpisodeStockFlow(stays), SeasonalNaive(24), SeasonalNaive(1)]
    bt = run_backtest(census, models, horizon=24, freq="h", folds=12)
    assert {a.model for a in bt.accuracy} == {
        "stock_flow",
        "seasonal_naive_24",
        "naive",
        "ensemble",
    }
    assert len(bt.members) == 3
    assert bt.selected in ("stock_flow", "ensemble")
    assert bt.check is not None and bt.check.folds == 6
    assert bt.check.mae < bt.check.naive_mae
    assert bt.scale_now > 0


def test_ensemble_averages_its_members_and_keeps_terms_only_if_all_have_them() -> None:
    stays, census = simulated_ward(days=20)
    sf, naive = EpisodeStockFlow(stays), SeasonalNaive(1)
    both = Ensemble((sf, naive)).forecast(census, 6, "h")
    a, b = sf.forecast(census, 6, "h"), naive.forecast(census, 6, "h")
    assert np.allclose(both["yhat"], (a["yhat"] + b["yhat"]) / 2)
    assert "now" not in both
    twice = Ensemble((sf, sf)).forecast(census, 6, "h")
    assert np.allclose(twice["expected_admissions"], a["expected_admissions"])


def test_daily_census_is_the_midnight_stock_with_the_day_s_flows() -> None:
    ds = pd.date_range("2026-03-01 22:00", periods=24 * 3 + 3, freq="h", tz="UTC")
    hourly = pd.DataFrame(
        {
            "ds": ds,
            "y": np.arange(len(ds), dtype=float),
            "admissions": 2.0,
            "departures": 1.0,
        }
    )
    daily = daily_census(hourly)
    # The midnight of 03-02 is 2 hours after the start: its day's flows are incomplete.
    assert list(daily["ds"]) == list(pd.date_range("2026-03-03", periods=3, freq="D"))
    assert list(daily["y"]) == [26.0, 50.0, 74.0]
    assert list(daily["admissions"]) == [48.0] * 3
    assert list(daily["departures"]) == [24.0] * 3


def test_daily_stock_flow_reads_the_hourly_forecast_every_24_hours() -> None:
    stays, census = simulated_ward(days=30)
    hourly = EpisodeStockFlow(stays)
    days = daily_census(census)
    model = DailyFromHourly(hourly, census)
    fc = model.forecast(days, 14, "D")
    origin = days["ds"].iloc[-1]
    assert list(fc["ds"]) == list(pd.date_range(origin, periods=15, freq="D")[1:])
    direct = hourly.forecast(census[census["ds"] <= origin], 24 * 14, "h")
    assert np.allclose(fc["yhat"], direct["yhat"].iloc[23::24])
    recomposed = fc["now"] - fc["expected_discharges"] + fc["expected_admissions"]
    assert np.allclose(recomposed, fc["yhat"])


def test_kaplan_meier_matches_lifelines_and_a_hand_computed_curve() -> None:
    from lifelines import KaplanMeierFitter

    from forecasting.survival import kaplan_meier

    # Stays 2, 3+, 3, 5, 5, 8+ (+: still going). At 2: 6 at risk, 1 ends → 5/6. At 3: 5 at
    # risk, 1 ends → × 4/5. At 5: 3 at risk, 2 end → × 1/3. At 8 nothing ends.
    durations = [2.0, 3.0, 3.0, 5.0, 5.0, 8.0]
    ended = [True, False, True, True, True, False]
    times, survival = kaplan_meier(durations, ended)
    assert list(times) == [0.0, 2.0, 3.0, 5.0, 8.0]
    assert np.allclose(survival, [1.0, 5 / 6, 2 / 3, 2 / 9, 2 / 9])
    rng = np.random.default_rng(2)
    d = np.round(rng.lognormal(3.0, 0.7, 400), 1)
    e = rng.uniform(size=400) < 0.8
    times, survival = kaplan_meier(d, e)
    sf = KaplanMeierFitter().fit(d, event_observed=e).survival_function_
    assert np.allclose(times, sf.index.to_numpy(dtype=float))
    assert np.allclose(survival, sf.iloc[:, 0].to_numpy(dtype=float))
