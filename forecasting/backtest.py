"""Rolling-origin backtests: how far off each model was on history it did not see, which model
to trust for a series, and how wide its intervals must be to cover what they claim.

Each fold cuts the series at an origin, fits every model on what came before and forecasts the
next `horizon` steps. The errors of all folds give MAE, RMSE, MASE and, per lead, the residuals
from which the selected model's intervals are calibrated (split conformal). The coverage reported
for a model is out of sample: each fold's intervals come from the residuals of the other folds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from forecasting import ForecastingError
from forecasting.metrics import conformal_halfwidths, local_scale, naive_scale
from forecasting.models import Model, step_of

TARGET_COVERAGE = 0.8
ENSEMBLE = "ensemble"
# How many of the best models the ensemble averages.
ENSEMBLE_SIZE = 3
# The paired t statistic by which a model must beat the default over the folds to be selected
# instead of it.
SIGNIFICANCE = 2.0
# The default model, first found among the candidates: the stock–flow model (the census's own
# dynamics), else the naive forecast (a series without its flows: no structure to trust).
DEFAULTS = ("stock_flow", "naive")
# The prefix of the model name under which the stitched forecast is stored, one name per band
# model (`selected:stock_flow`, `selected:ensemble`…), when the bands chose different models.
STITCHED = "selected:"


@dataclass(frozen=True)
class Accuracy:
    """Errors of one model over every fold of a backtest."""

    model: str
    horizon: int
    folds: int
    mae: float
    rmse: float
    mape: float
    coverage: float
    mase: float = float("nan")
    mae_by_lead: tuple[float, ...] = ()
    coverage_by_lead: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, object]:
        """Plain-data form, for SQL and JSON."""
        out = asdict(self)
        out["mae_by_lead"] = list(self.mae_by_lead)
        out["coverage_by_lead"] = list(self.coverage_by_lead)
        return out

    def mae_at(self, lead: int) -> float:
        """MAE of the forecasts `lead` steps ahead (1-based)."""
        return self.mae_by_lead[lead - 1]


@dataclass(frozen=True)
class SelectionCheck:
    """The selection rule scored out of sample: on each of the later `folds`, the model chosen
    from the earlier folds only, its intervals calibrated on them too."""

    folds: int
    mae: float
    naive_mae: float
    coverage: float

    def as_dict(self) -> dict[str, object]:
        """Plain-data form, with the MAE ratio to naive (None when naive was perfect)."""
        out: dict[str, object] = asdict(self)
        out["mae_vs_naive"] = self.mae / self.naive_mae if self.naive_mae > 0 else None
        return out


@dataclass(frozen=True)
class Backtest:
    """Every model's accuracy on the same folds, the selected model and its residuals."""

    accuracy: list[Accuracy]
    selected: str
    residuals: dict[str, np.ndarray]
    origins: list[pd.Timestamp]
    window_end: pd.Timestamp
    skipped: dict[str, str] = field(default_factory=dict)
    # Residuals divided by their fold's local scale, and the local scale at the history's end:
    # what `calibrate` needs for the forecast after the history.
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    scale_now: float = 1.0
    # The models the ensemble averages after the history (empty: no ensemble).
    members: tuple[str, ...] = ()
    check: SelectionCheck | None = None
    # The model selected for each band of leads: (first lead, last lead, model), 1-based.
    selected_by_band: tuple[tuple[int, int, str], ...] = ()

    def of(self, model: str) -> Accuracy:
        """The accuracy of one model."""
        return next(a for a in self.accuracy if a.model == model)


def origins(n: int, horizon: int, folds: int, min_train: int) -> list[int]:
    """Training lengths of each fold: the last `folds` origins, `horizon` apart, newest last."""
    last = n - horizon
    found = [last - i * horizon for i in range(folds)]
    found = [o for o in found if o >= min_train]
    if not found:
        raise ForecastingError(
            f"{n} points are too few for a backtest with horizon {horizon} and "
            f"{min_train} training points; use a shorter horizon or a longer history"
        )
    return sorted(found)


def mase_season(freq: str) -> int:
    """The season of the naive forecast MASE is scaled by: a day for hourly series (occupancy
    follows the day's admissions and discharges), one step otherwise."""
    return 24 if step_of(freq) == pd.Timedelta(hours=1) else 1


def band_width(freq: str, horizon: int) -> int:
    """How many leads a selection band spans: a day of hours, a week of days, else the whole
    horizon."""
    step = step_of(freq)
    if step == pd.Timedelta(hours=1):
        return 24
    if step == pd.Timedelta(days=1):
        return 7
    return horizon


def bands(horizon: int, width: int) -> list[tuple[int, int]]:
    """The bands of leads as 0-based slices [start, stop) of `width` leads each (the last one
    possibly shorter)."""
    return [(lo, min(lo + width, horizon)) for lo in range(0, horizon, max(1, width))]


def choose_by_band(
    err: dict[str, np.ndarray], default: str | None, spans: list[tuple[int, int]]
) -> list[str]:
    """`choose` within each band: `err` is folds × leads absolute errors per model, and a band's
    fold MAE is the mean over its leads."""
    return [
        choose({n: e[:, lo:hi].mean(axis=1) for n, e in err.items()}, default) for lo, hi in spans
    ]


def calibrate(
    forecast: pd.DataFrame,
    residuals: np.ndarray,
    level: float = TARGET_COVERAGE,
    capacity: float | None = None,
    scale: float = 1.0,
) -> pd.DataFrame:
    """Replace a forecast's interval by the conformal one from backtest `residuals` (folds ×
    leads, each divided by its fold's local scale) times the series' local `scale` now, and
    keep every value within [0, capacity]."""
    out = forecast.copy()
    yhat = out["yhat"].to_numpy(dtype=float)
    half = conformal_halfwidths(residuals[:, : len(yhat)], level) * scale
    top = np.inf if capacity is None else float(capacity)
    out["yhat"] = np.clip(yhat, 0.0, top)
    out["yhat_lower"] = np.clip(yhat - half, 0.0, top)
    out["yhat_upper"] = np.clip(yhat + half, 0.0, top)
    return out


def local_scales(y: np.ndarray, cuts: list[int], season: int) -> tuple[np.ndarray, float]:
    """The local scale (`metrics.local_scale`) of the history before each fold's origin, and of
    the whole series. Scales that are missing or below a tenth of their mean get that tenth (a
    flat fortnight must not make the next interval zero); all 1 when the series never moves."""
    raw = np.array([local_scale(y[:cut], season) for cut in cuts] + [local_scale(y, season)])
    positive = raw[np.isfinite(raw) & (raw > 0)]
    if len(positive) == 0:
        return np.ones(len(cuts)), 1.0
    floor = 0.1 * float(positive.mean())
    fixed = np.where(np.isfinite(raw) & (raw > floor), raw, floor)
    return fixed[:-1], float(fixed[-1])


def online_ensemble(
    actual: np.ndarray, points: dict[str, np.ndarray], size: int = ENSEMBLE_SIZE
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Fold forecasts of the mean of the `size` models with the lowest MAE on the earlier folds
    (every model on the first fold), so that each fold's ensemble uses only what was known at
    its origin; and the members chosen on every fold, for the forecast after the history."""
    names = list(points)

    def top(k: int) -> list[str]:
        err = {m: float(np.abs(actual[:k] - points[m][:k]).mean()) for m in names}
        return sorted(names, key=lambda m: err[m])[:size]

    folds = actual.shape[0]
    out = np.empty_like(actual, dtype=float)
    for k in range(folds):
        members = names if k == 0 else top(k)
        out[k] = np.mean([points[m][k] for m in members], axis=0)
    return out, tuple(top(folds))


def choose(fold_mae: dict[str, np.ndarray], default: str | None) -> str:
    """The selected model: the lowest mean fold MAE, unless a `default` is given and the best
    model's lead over it is not significant (paired t statistic of the fold MAE differences
    below `SIGNIFICANCE`, or fewer than 3 folds). Ties go to the model listed first."""
    names = list(fold_mae)
    best = min(names, key=lambda m: (float(np.mean(fold_mae[m])), names.index(m)))
    if default is None or best == default:
        return best
    diff = fold_mae[best] - fold_mae[default]
    if len(diff) < 3:
        return default
    spread = float(np.std(diff, ddof=1))
    if spread == 0:
        return best if diff.mean() < 0 else default
    t = float(diff.mean()) / (spread / np.sqrt(len(diff)))
    return best if t < -SIGNIFICANCE else default


def selection_check(
    actual: np.ndarray,
    points: dict[str, np.ndarray],
    default: str | None,
    fold_scale: np.ndarray,
    level: float = TARGET_COVERAGE,
    spans: list[tuple[int, int]] | None = None,
) -> SelectionCheck | None:
    """Score the selection rule on the later half of the folds: at fold k, `choose_by_band`
    sees folds before k only, and each band's chosen model's interval is calibrated on its
    residuals there at the band's leads. `spans` are the bands (default: one over every lead).
    None without naive among the models or with fewer than 4 folds."""
    folds = actual.shape[0]
    if "naive" not in points or folds < 4:
        return None
    spans = spans or [(0, actual.shape[1])]
    first = folds // 2
    errors, naive, inside = [], [], []
    for k in range(first, folds):
        err = {n: np.abs(actual[:k] - p[:k]) for n, p in points.items()}
        for (lo, hi), name in zip(spans, choose_by_band(err, default, spans), strict=True):
            yhat = points[name][k, lo:hi]
            z = (actual[:k, lo:hi] - points[name][:k, lo:hi]) / fold_scale[:k, None]
            half = conformal_halfwidths(z, level) * fold_scale[k]
            lower, upper = np.maximum(yhat - half, 0.0), yhat + half
            truth = actual[k, lo:hi]
            errors.append(np.abs(truth - yhat))
            naive.append(np.abs(truth - points["naive"][k, lo:hi]))
            inside.append((truth >= lower) & (truth <= upper))
    return SelectionCheck(
        folds=folds - first,
        mae=float(np.mean(np.concatenate(errors))),
        naive_mae=float(np.mean(np.concatenate(naive))),
        coverage=float(np.mean(np.concatenate(inside))),
    )


def run_backtest(
    series: pd.DataFrame,
    models: list[Model],
    horizon: int,
    freq: str,
    folds: int = 3,
    min_train: int | None = None,
    level: float = TARGET_COVERAGE,
    capacity: float | None = None,
    ensemble: bool = True,
) -> Backtest:
    """Fit every model on each fold's history, score it on the next `horizon` points, calibrate
    its intervals on the other folds, and select a model per band of leads (`band_width`).

    With at least `ENSEMBLE_SIZE` models that forecast every fold, the candidates include the
    `ensemble` (see `online_ensemble`). The default model (`DEFAULTS`: stock–flow, else naive)
    is selected in each band unless another beats it significantly there over the folds (see
    `choose`; `selected` is the first band's model):
    the model with the lowest backtest error among many is partly the luckiest, and its lead
    shrinks on the weeks that follow. `check` scores that rule on the later folds, each chosen
    from the folds before it (see `selection_check`).

    Intervals are conformal on residuals divided by the local scale of each fold's history
    (`local_scales`), so that an interval widens when the series moves more, as in an epidemic
    wave, and narrows when it calms. A model that cannot forecast some fold (too short a history
    for it, no flows…) is left out and its reason kept in `skipped`."""
    series = series.sort_values("ds").reset_index(drop=True)
    cuts = origins(len(series), horizon, folds, min_train or max(2 * horizon, 10))
    y = series["y"].to_numpy(dtype=float)
    season = mase_season(freq)
    scales = np.array([naive_scale(y[:cut], season) for cut in cuts])
    scale = float(np.nanmean(scales)) if np.isfinite(scales).any() else float("nan")
    fold_scale, scale_now = local_scales(y, cuts, season)
    actual = np.array([y[cut : cut + horizon] for cut in cuts])
    top = np.inf if capacity is None else float(capacity)
    points: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    for model in models:
        try:
            fcs = [model.forecast(series.iloc[:cut], horizon, freq) for cut in cuts]
        except ForecastingError as exc:
            skipped[model.name] = str(exc)
            continue
        points[model.name] = np.array(
            [np.clip(fc["yhat"].to_numpy(dtype=float), 0.0, top) for fc in fcs]
        )
    if not points:
        raise ForecastingError(
            "no model could forecast this series: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    members: tuple[str, ...] = ()
    if ensemble and len(points) >= ENSEMBLE_SIZE:
        points[ENSEMBLE], members = online_ensemble(actual, dict(points))
    default = next((d for d in DEFAULTS if d in points), None)
    accuracy: list[Accuracy] = []
    residuals: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}
    for name, yhat in points.items():
        res = actual - yhat
        z = res / fold_scale[:, None]
        lower, upper = np.empty_like(yhat), np.empty_like(yhat)
        for k in range(len(cuts)):
            # Each fold's interval from the other folds' residuals: out-of-sample coverage.
            others = np.delete(z, k, axis=0) if len(cuts) > 1 else z
            half = conformal_halfwidths(others, level) * fold_scale[k]
            lower[k] = np.clip(yhat[k] - half, 0.0, top)
            upper[k] = np.clip(yhat[k] + half, 0.0, top)
        inside = (actual >= lower) & (actual <= upper)
        nonzero = actual != 0
        err = np.abs(res)
        mae = float(err.mean())
        accuracy.append(
            Accuracy(
                model=name,
                horizon=horizon,
                folds=len(cuts),
                mae=mae,
                rmse=float(np.sqrt((res**2).mean())),
                mape=float((err[nonzero] / actual[nonzero]).mean())
                if nonzero.any()
                else float("nan"),
                coverage=float(inside.mean()),
                mase=mae / scale if scale > 0 else (0.0 if mae == 0 else float("inf")),
                mae_by_lead=tuple(float(v) for v in err.mean(axis=0)),
                coverage_by_lead=tuple(float(v) for v in inside.mean(axis=0)),
            )
        )
        residuals[name] = res
        scores[name] = z
    spans = bands(horizon, band_width(freq, horizon))
    chosen = choose_by_band({n: np.abs(r) for n, r in residuals.items()}, default, spans)
    check = selection_check(actual, points, default, fold_scale, level, spans)
    step = step_of(freq)
    ds = pd.DatetimeIndex(series["ds"])
    return Backtest(
        accuracy=accuracy,
        selected=chosen[0],
        residuals=residuals,
        origins=[pd.Timestamp(ds[cut - 1]) for cut in cuts],
        window_end=pd.Timestamp(ds[cuts[-1] - 1]) + step * horizon,
        skipped=skipped,
        scores=scores,
        scale_now=scale_now,
        members=members,
        check=check,
        selected_by_band=tuple(
            (lo + 1, hi, name) for (lo, hi), name in zip(spans, chosen, strict=True)
        ),
    )


def stitch(
    forecasts: dict[str, pd.DataFrame],
    bt: Backtest,
    level: float = TARGET_COVERAGE,
    capacity: float | None = None,
) -> dict[str, pd.DataFrame]:
    """The published forecast when the bands chose different models: each band's points from
    its model's raw forecast (`forecasts`), with the conformal interval from that model's scores
    at the band's leads; one frame (`ds, yhat, yhat_lower, yhat_upper`) per model, named
    `STITCHED` + model. Empty when one model serves every band."""
    if len({name for _, _, name in bt.selected_by_band}) <= 1:
        return {}
    pieces: dict[str, list[pd.DataFrame]] = {}
    for first, last, name in bt.selected_by_band:
        lo, hi = first - 1, last
        raw = forecasts[name].iloc[lo:hi]
        part = calibrate(raw, bt.scores[name][:, lo:hi], level, capacity, bt.scale_now)
        pieces.setdefault(name, []).append(part[["ds", "yhat", "yhat_lower", "yhat_upper"]])
    return {STITCHED + n: pd.concat(p, ignore_index=True) for n, p in pieces.items()}


def backtest(
    series: pd.DataFrame,
    models: list[Model],
    horizon: int,
    freq: str,
    folds: int = 3,
    min_train: int | None = None,
) -> list[Accuracy]:
    """Every model's accuracy on a rolling-origin backtest (see `run_backtest`)."""
    return run_backtest(series, models, horizon, freq, folds, min_train).accuracy
