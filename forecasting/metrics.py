"""Forecast accuracy measures and conformal interval widths. Pure arithmetic on arrays.

MASE divides a forecast's mean absolute error by the in-sample error of a seasonal naive
forecast on the history the forecast was made from (Hyndman & Koehler, 2006): below 1, the
forecast beats repeating the last season.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike


def mae(actual: ArrayLike, forecast: ArrayLike) -> float:
    """Mean absolute error."""
    a, f = np.asarray(actual, dtype=float), np.asarray(forecast, dtype=float)
    return float(np.mean(np.abs(a - f)))


def rmse(actual: ArrayLike, forecast: ArrayLike) -> float:
    """Root mean squared error."""
    a, f = np.asarray(actual, dtype=float), np.asarray(forecast, dtype=float)
    return float(np.sqrt(np.mean((a - f) ** 2)))


def naive_scale(history: ArrayLike, season: int = 1) -> float:
    """In-sample mean absolute error of the seasonal naive forecast `y[t] = y[t - season]`.

    NaN when the history is shorter than one season plus one point."""
    y = np.asarray(history, dtype=float)
    if len(y) <= season:
        return float("nan")
    return float(np.mean(np.abs(y[season:] - y[:-season])))


def local_scale(history: ArrayLike, season: int = 1, window: int | None = None) -> float:
    """How much the series moves lately: the seasonal naive scale of its last `window` moves
    (two weeks by default: 14 daily steps, or 14 × 24 hours with `season` 24). NaN when too
    short."""
    y = np.asarray(history, dtype=float)
    span = window if window is not None else 14 * season
    return naive_scale(y[-(span + season) :], season)


def mase(actual: ArrayLike, forecast: ArrayLike, history: ArrayLike, season: int = 1) -> float:
    """Mean absolute scaled error of `forecast` against `actual`, scaled on `history`.

    A flat history (scale 0) gives 0 for a perfect forecast and infinity otherwise."""
    scale = naive_scale(history, season)
    err = mae(actual, forecast)
    if scale == 0:
        return 0.0 if err == 0 else math.inf
    return err / scale


def coverage(actual: ArrayLike, lower: ArrayLike, upper: ArrayLike) -> float:
    """Share of actual values inside their interval `[lower, upper]` (bounds included)."""
    a = np.asarray(actual, dtype=float)
    inside = (a >= np.asarray(lower, dtype=float)) & (a <= np.asarray(upper, dtype=float))
    return float(np.mean(inside))


def conformal_quantile(scores: ArrayLike, level: float) -> float:
    """The split-conformal quantile of non-negative `scores` for a `level` interval.

    The ceil((n + 1) * level)-th smallest score: with exchangeable scores, a new score falls at or
    below it with probability at least `level`. With too few scores for that rank, the largest."""
    s = np.sort(np.asarray(scores, dtype=float))
    s = s[np.isfinite(s)]
    if len(s) == 0:
        return float("nan")
    rank = math.ceil((len(s) + 1) * level)
    return float(s[min(rank, len(s)) - 1])


def conformal_halfwidths(residuals: ArrayLike, level: float = 0.8) -> np.ndarray:
    """Half-widths per lead of `level` intervals around a point forecast, from backtest residuals.

    `residuals` is a folds × leads array (actual − forecast). Errors grow with the lead, and a few
    folds give few residuals per lead, so each lead gets a scale (the root mean square of its
    residuals, smoothed over neighbouring leads and never shrinking with the lead) and one
    conformal quantile of the scaled absolute residuals is taken over every fold and lead."""
    r = np.atleast_2d(np.asarray(residuals, dtype=float))
    leads = r.shape[1]
    rms = np.sqrt(np.nanmean(r**2, axis=0))
    window = max(1, leads // 12)
    if window > 1:
        kernel = np.ones(2 * window + 1)
        padded = np.pad(rms, window, mode="edge")
        rms = np.convolve(padded, kernel / kernel.sum(), mode="valid")
    scale = np.maximum.accumulate(rms)
    positive = scale[scale > 0]
    if len(positive) == 0:
        return np.zeros(leads)
    scale = np.where(scale > 0, scale, positive.min())
    q = conformal_quantile((np.abs(r) / scale).ravel(), level)
    return q * scale
