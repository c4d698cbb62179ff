"""Selection per band of leads: a model that wins significantly at the longer leads serves
those leads only, and the published forecast is stitched from each band's model with the
band's own interval."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from forecasting.backtest import STITCHED, band_width, bands, calibrate, run_backtest, stitch
from forecasting.job import SeriesInput, forecast_one
from forecasting.models import Model, SeasonalNaive

START = pd.Timestamp("2026-01-01")


def truth(ds: pd.DatetimeIndex) -> np.ndarray:
    """The series, known to the test models so that their errors are set by construction."""
    days = (ds - START) / pd.Timedelta(days=1)
    return 100.0 + 10.0 * np.sin(np.asarray(days, dtype=float) / 5.0)


@dataclass(frozen=True)
class Biased:
    """The true future plus an error of `near` at leads 1–7 and `far` at leads 8–14, varied a
    little from one origin to the next (the paired differences have a spread)."""

    name: str
    near: float
    far: float

    def forecast(self, history: pd.DataFrame, horizon: int, freq: str) -> pd.DataFrame:
        last = pd.Timestamp(history["ds"].iloc[-1])
        ds = pd.date_range(last, periods=horizon + 1, freq=freq)[1:]
        wobble = 1.0 + 0.1 * (len(history) % 3)
        lead = np.arange(1, horizon + 1)
        err = np.where(lead <= 7, self.near, self.far) * wobble
        yhat = truth(ds) + err
        return pd.DataFrame({"ds": ds, "yhat": yhat, "yhat_lower": yhat, "yhat_upper": yhat})


def series(days: int = 120) -> pd.DataFrame:
    ds = pd.date_range(START, periods=days, freq="D")
    return pd.DataFrame({"ds": ds, "y": truth(ds)})


MODELS: list[Model] = [
    Biased("stock_flow", near=1.0, far=8.0),
    Biased("far_sighted", near=6.0, far=2.0),
    SeasonalNaive(1),
]


def test_bands_are_a_day_of_hours_or_a_week_of_days() -> None:
    assert bands(72, band_width("h", 72)) == [(0, 24), (24, 48), (48, 72)]
    assert bands(14, band_width("D", 14)) == [(0, 7), (7, 14)]
    assert bands(10, band_width("D", 10)) == [(0, 7), (7, 10)]


def test_each_band_keeps_the_default_unless_beaten_significantly_there() -> None:
    bt = run_backtest(series(), MODELS, horizon=14, freq="D", folds=6, ensemble=False)
    # Leads 1-7: the default is best. Leads 8-14: far_sighted beats it on every fold.
    assert bt.selected_by_band == ((1, 7, "stock_flow"), (8, 14, "far_sighted"))
    assert bt.selected == "stock_flow"
    # The rule scored out of sample per band: each band's chosen model's errors (1 and 2,
    # times the wobble) below naive's.
    assert bt.check is not None and bt.check.mae < bt.check.naive_mae


def test_the_stitched_forecast_takes_each_band_from_its_model_with_its_interval() -> None:
    history = series()
    item = SeriesInput("spf:test", history, "departement")
    bt, out = forecast_one(item, MODELS, horizon=14, freq="D", folds=6)
    assert set(out) == {
        "stock_flow",
        "far_sighted",
        "naive",
        STITCHED + "stock_flow",
        STITCHED + "far_sighted",
    }
    near, far = out[STITCHED + "stock_flow"], out[STITCHED + "far_sighted"]
    future = pd.date_range(history["ds"].iloc[-1], periods=15, freq="D")[1:]
    assert list(near["ds"]) == list(future[:7])
    assert list(far["ds"]) == list(future[7:])
    # Points: each band's from its own model.
    assert np.allclose(near["yhat"], out["stock_flow"]["yhat"].iloc[:7])
    assert np.allclose(far["yhat"], out["far_sighted"]["yhat"].iloc[7:])
    # Intervals: conformal on the band's model's scores at the band's leads only.
    raw = {m.name: m.forecast(history, 14, "D") for m in MODELS}
    for name, part, (lo, hi) in (("stock_flow", near, (0, 7)), ("far_sighted", far, (7, 14))):
        expected = calibrate(raw[name].iloc[lo:hi], bt.scores[name][:, lo:hi], scale=bt.scale_now)
        assert np.allclose(part["yhat_upper"], expected["yhat_upper"])
        assert np.allclose(part["yhat_lower"], expected["yhat_lower"])
    # The far band's interval is narrower than the default model's own at those leads.
    width = far["yhat_upper"].to_numpy() - far["yhat_lower"].to_numpy()
    own = out["stock_flow"]["yhat_upper"] - out["stock_flow"]["yhat_lower"]
    assert (width < own.iloc[7:].to_numpy()).all()


def test_nothing_is_stitched_when_one_model_serves_every_band() -> None:
    models: list[Model] = [
        Biased("stock_flow", near=1.0, far=1.0),
        Biased("other", 6.0, 6.0),
        MODELS[2],
    ]
    bt = run_backtest(series(), models, horizon=14, freq="D", folds=6, ensemble=False)
    assert {name for _, _, name in bt.selected_by_band} == {"stock_flow"}
    assert stitch({m.name: m.forecast(series(), 14, "D") for m in models}, bt) == {}


def test_the_dashboard_says_which_model_serves_which_band() -> None:
    from dashboard import forecast_text

    assert forecast_text.STITCHED == STITCHED
    per_lead = ["stock_flow"] * 24 + ["ensemble"] * 48
    runs = forecast_text.band_runs(per_lead)
    assert runs == [(1, 24, "stock_flow"), (25, 72, "ensemble")]
    fr = forecast_text.bands_sentence(runs, "h")
    assert fr.startswith("Modèle retenu selon l'échéance : 1 à 24 h : Stock–flux")
    assert "25 à 72 h : Ensemble" in fr
    en = forecast_text.bands_sentence([(1, 7, "naive"), (8, 14, "auto_ets")], "D", "en")
    assert en.startswith("Model selected by lead time: 1 to 7 days: ")
    assert "; 8 to 14 days: " in en
