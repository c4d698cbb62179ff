"""Forecasting models behind one small interface: StatsForecast, Prophet, the naive baselines and
the ensemble (mean) of several.

Every model takes a history frame with columns `ds` (timezone-naive UTC timestamps, regular
frequency) and `y`, and returns a frame `ds, yhat, yhat_lower, yhat_upper` for the next
`horizon` steps. Intervals are central `interval_width` prediction intervals, so a manager reads
the forecast with its uncertainty and a backtest can measure their coverage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from forecasting import ForecastingError

FORECAST_COLUMNS = ["ds", "yhat", "yhat_lower", "yhat_upper"]


class Model(Protocol):
    """What the backtest and the job need from a model."""

    @property
    def name(self) -> str:
        """A short, stable name stored beside each forecast and score."""
        ...

    def forecast(self, history: pd.DataFrame, horizon: int, freq: str) -> pd.DataFrame:
        """Forecast `horizon` steps of frequency `freq` after the end of `history`."""
        ...


def step_of(freq: str) -> pd.Timedelta:
    """The length of one step of a fixed frequency such as `h` or `D`."""
    return pd.Timedelta(pd.tseries.frequencies.to_offset(freq))


def _future_index(history: pd.DataFrame, horizon: int, freq: str) -> pd.DatetimeIndex:
    last = pd.Timestamp(history["ds"].iloc[-1])
    return pd.date_range(last, periods=horizon + 1, freq=freq)[1:]


def _check(history: pd.DataFrame, minimum: int) -> None:
    if len(history) < minimum:
        raise ForecastingError(
            f"need at least {minimum} points of history, got {len(history)}; "
            "let the census accumulate or backfill with `parcours simulate --days N`"
        )


def _z(interval_width: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + interval_width / 2)


@dataclass(frozen=True)
class SeasonalNaive:
    """Repeat the value one season ago (`season=1`: the last value). Intervals from the spread of
    the in-sample seasonal differences, widening with the number of seasons ahead."""

    season: int = 1
    interval_width: float = 0.8

    @property
    def name(self) -> str:
        """`naive` or `seasonal_naive_<season>`."""
        return "naive" if self.season == 1 else f"seasonal_naive_{self.season}"

    def forecast(self, history: pd.DataFrame, horizon: int, freq: str) -> pd.DataFrame:
        """Forecast by repeating the last season."""
        _check(history, self.season + 2)
        y = history["y"].to_numpy(dtype=float)
        last_season = y[-self.season :]
        steps = np.arange(horizon)
        yhat = last_season[steps % self.season]
        residuals = y[self.season :] - y[: -self.season]
        sigma = float(np.std(residuals, ddof=1)) if len(residuals) > 1 else 0.0
        seasons_ahead = steps // self.season + 1
        half = _z(self.interval_width) * sigma * np.sqrt(seasons_ahead)
        return pd.DataFrame(
            {
                "ds": _future_index(history, horizon, freq),
                "yhat": yhat,
                "yhat_lower": np.maximum(yhat - half, 0.0),
                "yhat_upper": yhat + half,
            }
        )


@dataclass(frozen=True)
class ProphetModel:
    """Prophet with daily and weekly seasonality (as the data allow) and French public holidays."""

    interval_width: float = 0.8
    holidays_country: str | None = "FR"
    # Bed stocks turn quickly (epidemic waves, winter surges): allow changepoints up to near the
    # end of the history and a more flexible trend than Prophet's default (0.05), as measured by
    # the backtest on the French daily census in tests/integration/test_forecasting.py.
    changepoint_range: float = 0.95
    changepoint_prior_scale: float = 0.5

    @property
    def name(self) -> str:
        """`prophet`."""
        return "prophet"

    def forecast(self, history: pd.DataFrame, horizon: int, freq: str) -> pd.DataFrame:
        """Fit on `history` and forecast `horizon` steps."""
        # Prophet logs an error when plotly is missing; Parcours plots with Streamlit instead.
        logging.getLogger("prophet.plot").disabled = True
        # cmdstanpy logs every fit at INFO through its own handler.
        for name in ("cmdstanpy", "prophet"):
            logging.getLogger(name).setLevel(logging.WARNING)
        from prophet import Prophet

        _check(history, 10)
        # cmdstanpy sets its logger back to INFO with its own handler when it first runs; its
        # failures reach us as exceptions, so its chatter is switched off.
        logging.getLogger("cmdstanpy").disabled = True
        logging.getLogger("prophet").setLevel(logging.WARNING)
        span = pd.Timestamp(history["ds"].iloc[-1]) - pd.Timestamp(history["ds"].iloc[0])
        model = Prophet(
            interval_width=self.interval_width,
            daily_seasonality=span >= pd.Timedelta(days=2) and step_of(freq) < pd.Timedelta(days=1),
            weekly_seasonality=span >= pd.Timedelta(days=14),
            yearly_seasonality=span >= pd.Timedelta(days=730),
            changepoint_range=self.changepoint_range,
            changepoint_prior_scale=self.changepoint_prior_scale,
        )
        if self.holidays_country:
            model.add_country_holidays(country_name=self.holidays_country)
        model.fit(history[["ds", "y"]])
        future = pd.DataFrame({"ds": _future_index(history, horizon, freq)})
        out = model.predict(future)[FORECAST_COLUMNS].copy()
        # Bed counts are never negative, whatever the trend extrapolates.
        for col in ("yhat", "yhat_lower", "yhat_upper"):
            out[col] = out[col].clip(lower=0.0)
        return out.reset_index(drop=True)


def default_models(freq: str, interval_width: float = 0.8) -> list[Model]:
    """Prophet and the baselines it is judged against, for a series of frequency `freq`."""
    step = step_of(freq)
    models: list[Model] = [
        ProphetModel(interval_width=interval_width),
        SeasonalNaive(1, interval_width),
    ]
    if step < pd.Timedelta(days=1):
        models.append(SeasonalNaive(int(pd.Timedelta(days=1) / step), interval_width))
    elif step == pd.Timedelta(days=1):
        models.append(SeasonalNaive(7, interval_width))
    return models


@dataclass(frozen=True)
class StatsForecastModel:
    """A StatsForecast model (`AutoETS`, `AutoARIMA`, `AutoTheta`) fitted on the series alone.

    The season is a day of an hourly series (24) and a week of a daily one (7), used only when
    the history holds at least two seasons. On hourly series the models see the last
    `hourly_days` days only, and AutoARIMA searches small orders with its approximation: a full
    seasonal search on a month of hours takes minutes per fit."""

    kind: str
    interval_width: float = 0.8
    hourly_days: int = 14

    @property
    def name(self) -> str:
        """`auto_ets`, `auto_arima` or `auto_theta`."""
        return {"AutoETS": "auto_ets", "AutoARIMA": "auto_arima", "AutoTheta": "auto_theta"}[
            self.kind
        ]

    def forecast(self, history: pd.DataFrame, horizon: int, freq: str) -> pd.DataFrame:
        """Fit on `history` and forecast `horizon` steps."""
        import warnings

        from statsforecast import models as sf_models

        _check(history, 10)
        step = step_of(freq)
        season = 24 if step == pd.Timedelta(hours=1) else 7 if step == pd.Timedelta(days=1) else 1
        y = history["y"].to_numpy(dtype=float)
        options: dict[str, object] = {}
        if step < pd.Timedelta(days=1):
            y = y[-int(pd.Timedelta(days=self.hourly_days) / step) :]
            if self.kind == "AutoARIMA":
                options = {"approximation": True, "max_p": 2, "max_q": 2, "max_P": 1, "max_Q": 1}
        if len(y) < 2 * season + 2:
            season = 1
        level = round(self.interval_width * 100)
        model = getattr(sf_models, self.kind)(season_length=season, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                out = model.forecast(y=y, h=horizon, level=[level])
            except Exception as exc:  # a fit that fails skips this candidate, not the series
                raise ForecastingError(f"{self.name} could not fit this series: {exc}") from exc
        mean = np.asarray(out["mean"], dtype=float)
        lower = np.asarray(out[f"lo-{level}"], dtype=float)
        upper = np.asarray(out[f"hi-{level}"], dtype=float)
        if not np.all(np.isfinite(mean)):
            raise ForecastingError(f"{self.name} gave a non-finite forecast on this series")
        return pd.DataFrame(
            {
                "ds": _future_index(history, horizon, freq),
                "yhat": np.maximum(mean, 0.0),
                "yhat_lower": np.maximum(np.nan_to_num(lower, nan=0.0), 0.0),
                "yhat_upper": np.maximum(np.nan_to_num(upper, nan=mean.max()), 0.0),
            }
        )


def candidate_models(
    freq: str, interval_width: float = 0.8, stock_flow: Sequence[Model] = ()
) -> list[Model]:
    """Every candidate the backtest chooses from: the stock–flow models (when the series has its
    flows or stays), StatsForecast's AutoETS, AutoARIMA and AutoTheta, Prophet for daily series,
    and the naive baselines.

    Prophet is left out of hourly series: a fit on weeks of hours takes seconds, and on hourly
    bed occupancy it loses to the naive forecast (see `parcours bench forecast`, which still runs
    it alone beside the candidates)."""
    models: list[Model] = list(stock_flow)
    models += [
        StatsForecastModel("AutoETS", interval_width),
        StatsForecastModel("AutoARIMA", interval_width),
        StatsForecastModel("AutoTheta", interval_width),
    ]
    baselines = default_models(freq, interval_width)
    if step_of(freq) < pd.Timedelta(days=1):
        baselines = [m for m in baselines if m.name != "prophet"]
    return models + baselines


@dataclass(frozen=True)
class Ensemble:
    """The mean of its members' forecasts (point, bounds, and the stock–flow terms when every
    member has them)."""

    members: tuple[Model, ...]
    name: str = "ensemble"

    def forecast(self, history: pd.DataFrame, horizon: int, freq: str) -> pd.DataFrame:
        """Forecast with every member and average."""
        if not self.members:
            raise ForecastingError("an ensemble needs at least one member")
        outs = [m.forecast(history, horizon, freq) for m in self.members]
        out = outs[0][["ds"]].copy()
        columns = [c for c in outs[0].columns if c != "ds" and all(c in o for o in outs)]
        for col in columns:
            out[col] = np.mean([o[col].to_numpy(dtype=float) for o in outs], axis=0)
        return out
