"""Remaining length of stay: a Kaplan–Meier survival curve of the time patients stay in a unit.

`S(t)` is the probability that a stay lasts longer than `t` hours. A patient already there for
`a` hours is still there `h` hours later with probability `S(a + h) / S(a)`. Stays still open
when the curve is fitted are right-censored at their current length, so long stays in progress
are not mistaken for short ones.

Stays already under way when the data begin (an ADT feed's first synchronisation sends only the
patients still there) are a sample biased toward long stays. Each such stay enters the curve at
the length it had when the data began (left truncation, `entry`): it says nothing about the
stays that ended before.

Beyond the longest stay seen the curve has no information; there the remaining stay is taken
as exponential with the mean length of the longest tenth of stays, so that a patient far past
every observed length still leaves, at a plausible pace.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from forecasting import ForecastingError


@dataclass(frozen=True)
class StayCurve:
    """A fitted survival curve of stay lengths (hours): step function `times → survival`."""

    times: np.ndarray
    survival: np.ndarray
    tail_mean: float
    stays: int

    def at(self, t: ArrayLike) -> np.ndarray:
        """`S(t)`: probability that a stay lasts longer than `t` hours."""
        t = np.asarray(t, dtype=float)
        idx = np.searchsorted(self.times, t, side="right") - 1
        base = np.where(idx >= 0, self.survival[np.clip(idx, 0, None)], 1.0)
        last_t, last_s = self.times[-1], self.survival[-1]
        beyond = t > last_t
        tail = max(last_s, 1e-6) * np.exp(-(np.maximum(t - last_t, 0.0)) / self.tail_mean)
        return np.where(beyond, tail, np.maximum(base, 0.0))

    def still_there(self, age: ArrayLike, ahead: ArrayLike) -> np.ndarray:
        """Probability that a stay now `age` hours long lasts `ahead` more hours.

        Broadcasts `age` against `ahead`."""
        age = np.asarray(age, dtype=float)
        ahead = np.asarray(ahead, dtype=float)
        now = self.at(age)
        later = self.at(age + ahead)
        # Where the empirical curve has reached 0 but the stay is still going, fall back on the
        # exponential tail from the stay's current length.
        tail = np.exp(-ahead / self.tail_mean)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(now > 1e-9, later / np.where(now > 1e-9, now, 1.0), tail)
        return np.clip(ratio, 0.0, 1.0)

    def mean(self) -> float:
        """Mean stay length (hours), the area under the curve with its tail."""
        widths = np.diff(np.r_[0.0, self.times])
        before = np.r_[1.0, self.survival[:-1]]
        return float(np.sum(widths * before) + self.survival[-1] * self.tail_mean)


def kaplan_meier(
    durations: ArrayLike, ended: ArrayLike, entry: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan–Meier estimate of `S(t)` from durations and whether each ended (False: still
    going, right-censored): the times (0 and every distinct duration) and the survival just
    after each, `S(t) = Π over ended durations t_i ≤ t of (1 − d_i / n_i)`, with `d_i` stays
    ending at `t_i` and `n_i` stays at risk then: lasting at least `t_i` and, with `entry` (the
    length at which each stay was first seen), seen before `t_i`."""
    d = np.asarray(durations, dtype=float)
    e = np.asarray(ended, dtype=bool)
    order = np.sort(d)
    times = np.unique(d)
    at_risk = len(d) - np.searchsorted(order, times, side="left")
    if entry is not None:
        # Stays first seen at or after t are not yet at risk at t.
        entered = np.sort(np.asarray(entry, dtype=float))
        at_risk = at_risk - (len(entered) - np.searchsorted(entered, times, side="left"))
    deaths = np.bincount(np.searchsorted(times, d[e]), minlength=len(times))
    survival = np.cumprod(1.0 - deaths / np.maximum(at_risk, np.maximum(deaths, 1)))
    if times[0] > 0:
        times, survival = np.r_[0.0, times], np.r_[1.0, survival]
    return times, survival


def fit_stay_curve(
    durations: ArrayLike, ended: ArrayLike, entry: ArrayLike | None = None
) -> StayCurve:
    """Kaplan–Meier fit of stay lengths in hours; `ended` False for open stays; `entry` the
    length (hours) at which each stay was first seen, 0 when it was seen from its start."""
    d = np.asarray(durations, dtype=float)
    e = np.asarray(ended, dtype=bool)
    keep = np.isfinite(d) & (d >= 0)
    d, e = d[keep], e[keep]
    entered = None if entry is None else np.asarray(entry, dtype=float)[keep]
    if e.sum() < 5:
        raise ForecastingError(
            f"only {int(e.sum())} finished stays to learn lengths of stay from; need at least 5"
        )
    times, survival = kaplan_meier(
        np.maximum(d, 1e-3), e, None if entered is None else np.minimum(entered, d - 1e-6)
    )
    finished = np.sort(d[e])
    top = finished[int(0.9 * len(finished)) :]
    tail_mean = float(max(np.mean(top) - finished[int(0.9 * len(finished))] + 1.0, 1.0))
    tail_mean = max(tail_mean, float(np.mean(finished)) / 2, 1.0)
    return StayCurve(times=times, survival=survival, tail_mean=tail_mean, stays=len(d))
