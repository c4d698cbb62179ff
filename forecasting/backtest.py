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
from forecasting.metrics import conformal_halfwidths, naive_scale
from forecasting.models import Model, step_of

TARGET_COVERAGE = 0.8


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
class Backtest:
    """Every model's accuracy on the same folds, the selected model and its residuals."""

    accuracy: list[Accuracy]
    selected: str
    residuals: dict[str, np.ndarray]
    origins: list[pd.Timestamp]
    window_end: pd.Timestamp
    skipped: dict[str, str] = field(default_factory=dict)

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


def calibrate(
    forecast: pd.DataFrame,
    residuals: np.ndarray,
    level: float = TARGET_COVERAGE,
    capacity: float | None = None,
) -> pd.DataFrame:
    """Replace a forecast's interval by the conformal one from backtest `residuals` (folds ×
    leads), and keep every value within [0, capacity]."""
    out = forecast.copy()
    yhat = out["yhat"].to_numpy(dtype=float)
    half = conformal_halfwidths(residuals[:, : len(yhat)], level)
    top = np.inf if capacity is None else float(capacity)
    out["yhat"] = np.clip(yhat, 0.0, top)
    out["yhat_lower"] = np.clip(yhat - half, 0.0, top)
    out["yhat_upper"] = np.clip(yhat + half, 0.0, top)
    return out


def run_backtest(
    series: pd.DataFrame,
    models: list[Model],
    horizon: int,
    freq: str,
    folds: int = 3,
    min_train: int | None = None,
    level: float = TARGET_COVERAGE,
    capacity: float | None = None,
) -> Backtest:
    """Fit every model on each fold's history, score it on the next `horizon` points, calibrate
    its intervals on the other folds, and select the model with the lowest MASE.

    A model that cannot forecast some fold (too short a history for it, no flows…) is left out
    and its reason kept in `skipped`."""
    series = series.sort_values("ds").reset_index(drop=True)
    cuts = origins(len(series), horizon, folds, min_train or max(2 * horizon, 10))
    y = series["y"].to_numpy(dtype=float)
    season = mase_season(freq)
    scales = np.array([naive_scale(y[:cut], season) for cut in cuts])
    scale = float(np.nanmean(scales)) if np.isfinite(scales).any() else float("nan")
    actual = np.array([y[cut : cut + horizon] for cut in cuts])
    accuracy: list[Accuracy] = []
    residuals: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    top = np.inf if capacity is None else float(capacity)
    for model in models:
        points, lowers, uppers = [], [], []
        try:
            for cut in cuts:
                fc = model.forecast(series.iloc[:cut], horizon, freq)
                points.append(np.clip(fc["yhat"].to_numpy(dtype=float), 0.0, top))
                lowers.append(fc["yhat_lower"].to_numpy(dtype=float))
                uppers.append(fc["yhat_upper"].to_numpy(dtype=float))
        except ForecastingError as exc:
            skipped[model.name] = str(exc)
            continue
        yhat = np.array(points)
        res = actual - yhat
        lower, upper = np.array(lowers), np.array(uppers)
        if len(cuts) > 1:
            # Each fold's interval from the other folds' residuals: out-of-sample coverage.
            for k in range(len(cuts)):
                others = np.delete(res, k, axis=0)
                half = conformal_halfwidths(others, level)
                lower[k] = np.clip(yhat[k] - half, 0.0, top)
                upper[k] = np.clip(yhat[k] + half, 0.0, top)
        inside = (actual >= lower) & (actual <= upper)
        nonzero = actual != 0
        err = np.abs(res)
        mae = float(err.mean())
        accuracy.append(
            Accuracy(
                model=model.name,
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
        residuals[model.name] = res
    if not accuracy:
        raise ForecastingError(
            "no model could forecast this series: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    # Ties go to the model listed first (the candidates come simplest-last, stock–flow first).
    best = min(accuracy, key=lambda a: (a.mase if np.isfinite(a.mase) else np.inf, a.mae))
    step = step_of(freq)
    ds = pd.DatetimeIndex(series["ds"])
    return Backtest(
        accuracy=accuracy,
        selected=best.model,
        residuals=residuals,
        origins=[pd.Timestamp(ds[cut - 1]) for cut in cuts],
        window_end=pd.Timestamp(ds[cuts[-1] - 1]) + step * horizon,
        skipped=skipped,
    )


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
