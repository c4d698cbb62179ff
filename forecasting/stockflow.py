"""Stock–flow occupancy forecasts: the patients in bed now, who leaves, and who arrives.

A census is a stock. Its future is the part of today's stock still there, plus the arrivals
still there. Two forms of the same model:

- `EpisodeStockFlow`, from the unit's stays (start and end of each stay in the unit): each
  patient in bed at the origin stays `h` more hours with the probability given by the
  remaining-length-of-stay curve of the unit's service at the stay's current length
  (Kaplan–Meier, `forecasting.survival`); arrivals are forecast by hour of week from the recent
  weeks, each still there at `t + h` with the curve's probability. Known demand (appointments
  booked by the origin for a start within the horizon) is added arrival by arrival, and the
  hour-of-week rate then counts only the arrivals that no appointment announced.
- `FlowStockFlow`, from a census series and its flows (admissions and departures per step,
  as in the Santé publique France files): `y[t+1] = y[t] × (1 − departure rate) + admissions`,
  with the departure rate of the recent steps and the admissions' recent level and trend
  (by hour of week for hourly series).

Both return the forecast's terms: the census at the origin (`now`), the expected departures of
the patients there and the expected admissions still present, so that `now − departures +
admissions` is the forecast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import pandas as pd

from forecasting import ForecastingError
from forecasting.survival import StayCurve, fit_stay_curve

TERM_COLUMNS = ["now", "expected_discharges", "expected_admissions"]
HOUR = pd.Timedelta(hours=1)
# Appointment statuses that announce an arrival. A stored appointment whose start has passed is
# `fulfilled` now but was `booked` at any origin before its start; the stream drops cancelled and
# no-show appointments (they are retracted).
KNOWN_STATUSES = frozenset({"booked", "arrived", "checked-in", "pending", "fulfilled"})


def _z(width: float) -> float:
    return NormalDist().inv_cdf(0.5 + width / 2)


def _future_index(history: pd.DataFrame, horizon: int, freq: str) -> pd.DatetimeIndex:
    last = pd.Timestamp(history["ds"].iloc[-1])
    return pd.date_range(last, periods=horizon + 1, freq=freq)[1:]


def _frame(
    history: pd.DataFrame,
    horizon: int,
    freq: str,
    mean: np.ndarray,
    var: np.ndarray,
    terms: dict[str, np.ndarray],
    width: float,
) -> pd.DataFrame:
    half = _z(width) * np.sqrt(np.maximum(var, 0.0))
    out = pd.DataFrame(
        {
            "ds": _future_index(history, horizon, freq),
            "yhat": mean,
            "yhat_lower": np.maximum(mean - half, 0.0),
            "yhat_upper": mean + half,
        }
    )
    for name in TERM_COLUMNS:
        out[name] = terms[name]
    return out


def weekly_profile(counts: np.ndarray, phase: np.ndarray, period: int, sub: int) -> np.ndarray:
    """Mean count per phase of a `period` (e.g. 168 hours of a week), shrunk toward the mean per
    phase of a shorter cycle `sub` (24 hours of a day) where few weeks are known.

    `counts[i]` was seen at phase `phase[i]`. Returns one mean per phase."""
    total = np.bincount(phase, weights=counts, minlength=period)
    seen = np.bincount(phase, minlength=period).astype(float)
    daily_total = np.bincount(phase % sub, weights=counts, minlength=sub)
    daily_seen = np.bincount(phase % sub, minlength=sub).astype(float)
    overall = counts.mean() if len(counts) else 0.0
    daily = np.where(daily_seen > 0, daily_total / np.maximum(daily_seen, 1), overall)
    prior = daily[np.arange(period) % sub]
    # One pseudo-week of the daily profile: with one week of history, half weekly, half daily.
    return (total + prior) / (seen + 1.0)


@dataclass(frozen=True)
class EpisodeStockFlow:
    """Stock–flow forecast of hourly occupancy from the unit's stays.

    `episodes`: the unit's stays with columns `start`, `end` (naive UTC, `end` NaT while open).
    `los_episodes`: the stays the remaining-length curve is learnt from (the unit's service);
    the unit's own stays when None. Only stays begun within `lookback_days` of the origin teach
    the curve and the arrival rates, so both follow the recent weeks. Stays begun before the
    first departure in the data are left-truncated there (see `forecasting.survival`).

    `booked`: the unit's appointments (`start`, `booked_at`, `status`; naive UTC), or None. Those
    booked by the origin and starting within the horizon are known arrivals; those that started
    in the lookback weeks are taken out of the arrivals the hour-of-week rate is learnt from."""

    episodes: pd.DataFrame
    los_episodes: pd.DataFrame | None = None
    booked: pd.DataFrame | None = None
    lookback_days: int = 28
    los_lookback_days: int = 90
    interval_width: float = 0.8
    name: str = "stock_flow"
    _cache: dict[pd.Timestamp, StayCurve] = field(default_factory=dict, compare=False, repr=False)

    def curve(self, origin: pd.Timestamp) -> StayCurve:
        """The remaining-length curve as known at `origin` (stays after it are unseen)."""
        if origin not in self._cache:
            src = self.los_episodes if self.los_episodes is not None else self.episodes
            lo = origin - pd.Timedelta(days=self.los_lookback_days)
            seen = src[(src["start"] <= origin) & (src["start"] >= lo)]
            end = seen["end"]
            ended = end.notna() & (end <= origin)
            stop = end.where(ended, origin)
            hours = (stop - seen["start"]) / HOUR
            # The data begin no later than the first departure they hold: a stay begun before
            # then was seen only from that length on.
            first_seen = src.loc[src["end"] <= origin, "end"].min()
            entry = (
                ((first_seen - seen["start"]) / HOUR).clip(lower=0.0).to_numpy()
                if pd.notna(first_seen)
                else None
            )
            self._cache[origin] = fit_stay_curve(hours.to_numpy(), ended.to_numpy(), entry)
        return self._cache[origin]

    def forecast(self, history: pd.DataFrame, horizon: int, freq: str) -> pd.DataFrame:
        """Forecast `horizon` hours of occupancy after the last hour of `history`."""
        if pd.Timedelta(pd.tseries.frequencies.to_offset(freq)) != HOUR:
            raise ForecastingError("the stay-based stock–flow model forecasts hourly series only")
        origin = pd.Timestamp(history["ds"].iloc[-1])
        curve = self.curve(origin)
        ep = self.episodes
        start, end = ep["start"], ep["end"]
        open_now = (start <= origin) & (end.isna() | (end > origin))
        ages = ((origin - start[open_now]) / HOUR).to_numpy(dtype=float)
        ahead = np.arange(1, horizon + 1, dtype=float)
        p = (
            curve.still_there(ages[:, None], ahead[None, :])
            if len(ages)
            else np.zeros((0, horizon))
        )
        stock_now = float(history["y"].iloc[-1])
        counted = len(ages)
        remain = p.sum(axis=0)
        var = (p * (1 - p)).sum(axis=0)
        if counted:
            # The census is the reference for "now"; patients it counts that the stays do not
            # (or the reverse) leave at the average pace of the others.
            remain = remain + (stock_now - counted) * p.mean(axis=0)
        else:
            remain = stock_now * curve.still_there(0.0, ahead)
        # Arrivals per hour of week over the recent weeks (before the origin).
        first = origin - pd.Timedelta(days=self.lookback_days)
        span_start = max(first, pd.Timestamp(start.min()).floor("h"))
        hours = pd.date_range(span_start, origin, freq="h", inclusive="left")
        if len(hours) < 24:
            raise ForecastingError("need at least a day of stays to forecast arrivals")
        arrived = start[(start >= hours[0]) & (start < origin)].dt.floor("h")
        counts = _hourly_counts(arrived, hours)
        known_starts = self.known_arrivals(origin, horizon)
        if self.booked is not None:
            # Scheduled arrivals of the past weeks are not part of the unplanned rate.
            past = self._booked_starts()
            past = past[(past >= hours[0]) & (past < origin)].dt.floor("h")
            counts = counts - _hourly_counts(past, hours)
        phase = (hours.dayofweek * 24 + hours.hour).to_numpy()
        # The profile is linear in the counts: this is the mean of all arrivals per hour of week
        # less that of the scheduled ones.
        rate = np.maximum(weekly_profile(counts, phase, 168, 24), 0.0)
        slots = pd.date_range(origin, periods=horizon, freq="h")
        lam = rate[(slots.dayofweek * 24 + slots.hour).to_numpy()]
        # An arrival during the hour starting at slot j is present at origin + h (h > j) with the
        # probability of a stay longer than h − j − ½ hours.
        j = np.arange(horizon)
        lag = ahead[:, None] - j[None, :] - 0.5
        surv = np.where(lag > 0, curve.at(np.maximum(lag, 0.0)), 0.0)
        arrivals = surv @ lam
        # Unplanned arrivals are Poisson: their variance is their mean.
        var = var + arrivals
        if len(known_starts):
            # A known arrival at `s` is present at origin + h with the probability of a stay
            # longer than h − (s − origin) hours.
            since = ahead[:, None] - ((known_starts - origin) / HOUR).to_numpy(dtype=float)[None, :]
            p_known = np.where(since > 0, curve.at(np.maximum(since, 0.0)), 0.0)
            arrivals = arrivals + p_known.sum(axis=1)
            var = var + (p_known * (1 - p_known)).sum(axis=1)
        mean = np.maximum(remain + arrivals, 0.0)
        terms = {
            "now": np.full(horizon, stock_now),
            "expected_discharges": stock_now - remain,
            "expected_admissions": arrivals,
        }
        return _frame(history, horizon, freq, mean, var, terms, self.interval_width)

    def _booked_starts(self) -> pd.Series:
        b = self.booked
        if b is None or b.empty:
            return pd.Series([], dtype="datetime64[ns]")
        return b.loc[b["status"].isin(KNOWN_STATUSES) & b["start"].notna(), "start"]

    def known_arrivals(self, origin: pd.Timestamp, horizon: int) -> pd.Series:
        """Starts of the appointments booked by `origin` that begin within `horizon` hours."""
        b = self.booked
        if b is None or b.empty:
            return pd.Series([], dtype="datetime64[ns]")
        start = b["start"]
        keep = (
            b["status"].isin(KNOWN_STATUSES)
            & (b["booked_at"] <= origin)
            & (start > origin)
            & (start < origin + horizon * HOUR)
        )
        return start[keep]


def _hourly_counts(stamps: pd.Series, hours: pd.DatetimeIndex) -> np.ndarray:
    """How many of `stamps` (floored to the hour) fall in each of `hours`."""
    if not len(stamps):
        return np.zeros(len(hours))
    return stamps.value_counts().reindex(hours, fill_value=0).to_numpy(dtype=float)


def _steps_per_day(freq: str) -> int:
    step = pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
    return max(1, int(pd.Timedelta(days=1) / step))


@dataclass(frozen=True)
class FlowStockFlow:
    """Stock–flow forecast from a census series with its flows.

    `history` has `y` (the census at each step) and `admissions`, `departures` (the flows during
    the step ending at `ds`: `y[t] ≈ y[t−1] + admissions[t] − departures[t]`). Daily series: the
    departure rate of the last `rate_days`, admissions at the mean of the last week with the
    week-on-week trend, damped. Hourly: both by hour of week over the last `hourly_rate_days`.

    The defaults are those that did best on the French daily COVID census of 2020 (101
    départements, weekly origins, 7 days ahead): a week of departures, a quarter of the trend.
    `daily_variants` adds the flat and the full-trend forms, for the backtest to choose from:
    waves rise and fall at paces no single damping fits."""

    interval_width: float = 0.8
    rate_days: int = 7
    trend_damping: float = 0.25
    hourly_rate_days: int = 28
    # How far back (in half-windows) the week's mean admissions sit: 1 moves the level from the
    # middle of the week to its end along the trend.
    centre: float = 0.0
    name: str = "stock_flow"

    def forecast(self, history: pd.DataFrame, horizon: int, freq: str) -> pd.DataFrame:
        """Forecast `horizon` steps after the end of `history`."""
        if "admissions" not in history or "departures" not in history:
            raise ForecastingError(
                "the stock–flow model needs admissions and departures beside the census "
                "(--admissions-col and --discharges-col, or SPF's rad/dc)"
            )
        per_day = _steps_per_day(freq)
        y = history["y"].to_numpy(dtype=float)
        adm = np.clip(np.nan_to_num(history["admissions"].to_numpy(dtype=float)), 0.0, None)
        dep = np.clip(np.nan_to_num(history["departures"].to_numpy(dtype=float)), 0.0, None)
        if len(y) < 2 * per_day + 1 or len(y) < 8:
            raise ForecastingError(f"need at least {max(2 * per_day + 1, 8)} steps of census")
        if per_day == 1:
            lam, rate = self._daily(y, adm, dep, horizon)
        else:
            lam, rate = self._sub_daily(history, y, adm, dep, horizon, freq, per_day)
        level = y[-1]
        mean = np.empty(horizon)
        leaving = np.empty(horizon)
        var = np.empty(horizon)
        acc_var = 0.0
        for k in range(horizon):
            out = level * rate[k]
            level = max(level - out + lam[k], 0.0)
            acc_var += lam[k] + out
            mean[k], leaving[k], var[k] = level, out, acc_var
        terms = {
            "now": np.full(horizon, y[-1]),
            "expected_discharges": np.cumsum(leaving),
            "expected_admissions": np.cumsum(lam),
        }
        return _frame(history, horizon, freq, mean, var, terms, self.interval_width)

    def _daily(
        self, y: np.ndarray, adm: np.ndarray, dep: np.ndarray, horizon: int
    ) -> tuple[np.ndarray, np.ndarray]:
        w = min(self.rate_days, len(y) - 1)
        stock = y[-w - 1 : -1].sum()
        rate = dep[-w:].sum() / stock if stock > 0 else 0.0
        week = min(7, (len(y) - 1) // 2)
        recent = adm[-week:].mean()
        before = adm[-2 * week : -week].mean()
        growth = np.log((recent + 1.0) / (before + 1.0)) / week
        k = np.arange(1, horizon + 1)
        lam = recent * np.exp(growth * (self.centre * (week - 1) / 2 + self.trend_damping * k))
        return lam, np.full(horizon, min(rate, 1.0))

    def _sub_daily(
        self,
        history: pd.DataFrame,
        y: np.ndarray,
        adm: np.ndarray,
        dep: np.ndarray,
        horizon: int,
        freq: str,
        per_day: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        n = min(len(y) - 1, self.hourly_rate_days * per_day)
        ds = pd.DatetimeIndex(history["ds"])
        period = 7 * per_day
        steps_of_day = ((ds.hour * 60 + ds.minute) * per_day // 1440).to_numpy()
        phase_all = (ds.dayofweek.to_numpy() * per_day + steps_of_day) % period
        phase = phase_all[-n:]
        lam_p = weekly_profile(adm[-n:], phase, period, per_day)
        out_p = weekly_profile(dep[-n:], phase, period, per_day)
        stock_p = weekly_profile(y[-n - 1 : -1], phase, period, per_day)
        rate_p = np.where(stock_p > 0, out_p / np.maximum(stock_p, 1e-9), 0.0)
        future = _future_index(history, horizon, freq)
        f_steps = ((future.hour * 60 + future.minute) * per_day // 1440).to_numpy()
        f_phase = (future.dayofweek.to_numpy() * per_day + f_steps) % period
        return lam_p[f_phase], np.clip(rate_p[f_phase], 0.0, 1.0)


def daily_variants(interval_width: float = 0.8) -> list[FlowStockFlow]:
    """The stock–flow forms a daily census backtest chooses from: damped trend (the default),
    no trend with two weeks of departures, and the full trend from the week's end."""
    return [
        FlowStockFlow(interval_width),
        FlowStockFlow(interval_width, rate_days=14, trend_damping=0.0, name="stock_flow_flat"),
        FlowStockFlow(interval_width, trend_damping=1.0, centre=1.0, name="stock_flow_trend"),
    ]


@dataclass(frozen=True)
class DailyFromHourly:
    """A daily forecast read off an hourly model: the hourly forecast from a daily origin,
    taken every 24 hours (day 1 is the origin + 24 h), terms included.

    `hourly_history` is the unit's hourly census with its flows (naive UTC `ds`); the model cuts
    it at each origin, so a backtest fold sees no hour after its origin."""

    hourly: EpisodeStockFlow | FlowStockFlow
    hourly_history: pd.DataFrame
    name: str = "stock_flow"

    def forecast(self, history: pd.DataFrame, horizon: int, freq: str) -> pd.DataFrame:
        """Forecast `horizon` days after the last day of `history`."""
        if pd.Timedelta(pd.tseries.frequencies.to_offset(freq)) != pd.Timedelta(days=1):
            raise ForecastingError("the daily stock–flow model forecasts daily series only")
        origin = pd.Timestamp(history["ds"].iloc[-1])
        hourly = self.hourly_history
        past = hourly[hourly["ds"] <= origin].reset_index(drop=True)
        if past.empty or pd.Timestamp(past["ds"].iloc[-1]) != origin:
            raise ForecastingError(f"no hourly census at the daily origin {origin}")
        out = self.hourly.forecast(past, 24 * horizon, "h")
        return out.iloc[23::24].reset_index(drop=True)
