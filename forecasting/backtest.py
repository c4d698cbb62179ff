"""Rolling-origin backtests: how far off each model was, measured on history it did not see."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from forecasting import ForecastingError
from forecasting.models import Model


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

    def as_dict(self) -> dict[str, float | int | str]:
        """Plain-data form, for SQL and JSON."""
        return asdict(self)


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


def score(actual: np.ndarray, forecast: pd.DataFrame) -> dict[str, float]:
    """MAE, RMSE, MAPE (over non-zero actuals) and interval coverage of one fold."""
    err = forecast["yhat"].to_numpy(dtype=float) - actual
    nonzero = actual != 0
    inside = (actual >= forecast["yhat_lower"].to_numpy()) & (
        actual <= forecast["yhat_upper"].to_numpy()
    )
    return {
        "abs": float(np.abs(err).sum()),
        "sq": float((err**2).sum()),
        "ape": float(np.abs(err[nonzero] / actual[nonzero]).sum()),
        "n_ape": float(nonzero.sum()),
        "inside": float(inside.sum()),
        "n": float(len(actual)),
    }


def backtest(
    series: pd.DataFrame,
    models: list[Model],
    horizon: int,
    freq: str,
    folds: int = 3,
    min_train: int | None = None,
) -> list[Accuracy]:
    """Fit every model on each fold's history and score it on the next `horizon` points."""
    series = series.sort_values("ds").reset_index(drop=True)
    cuts = origins(len(series), horizon, folds, min_train or max(2 * horizon, 10))
    results: list[Accuracy] = []
    for model in models:
        totals = dict.fromkeys(("abs", "sq", "ape", "n_ape", "inside", "n"), 0.0)
        for cut in cuts:
            fc = model.forecast(series.iloc[:cut], horizon, freq)
            actual = series["y"].iloc[cut : cut + horizon].to_numpy(dtype=float)
            for k, v in score(actual, fc).items():
                totals[k] += v
        n = totals["n"]
        results.append(
            Accuracy(
                model=model.name,
                horizon=horizon,
                folds=len(cuts),
                mae=totals["abs"] / n,
                rmse=float(np.sqrt(totals["sq"] / n)),
                mape=totals["ape"] / totals["n_ape"] if totals["n_ape"] else float("nan"),
                coverage=totals["inside"] / n,
            )
        )
    return results
