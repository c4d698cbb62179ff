"""Bed-demand forecasting on the census history: stock–flow, statistical and naive models, chosen
by rolling-origin backtests, with calibrated intervals."""


class ForecastingError(Exception):
    """Base exception of the forecasting package."""
