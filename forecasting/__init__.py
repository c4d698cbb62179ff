"""Bed-demand forecasting (Prophet) on the hourly census, with rolling-origin backtests."""
