"""Bed-demand forecasting (Prophet) on the census history, with rolling-origin backtests."""


class ForecastingError(Exception):
    """Base exception of the forecasting package."""
