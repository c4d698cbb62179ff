"""Forecasting tables: the latest forecast per unit, metric, model and target time, and the
backtest accuracy that tells a manager how far to trust it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from parcours.db.models import Base, UTCDateTime


class ForecastRow(Base):
    """One forecast point with its prediction interval."""

    __tablename__ = "forecasts"

    unit_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    ds: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    yhat: Mapped[float] = mapped_column(Float)
    yhat_lower: Mapped[float] = mapped_column(Float)
    yhat_upper: Mapped[float] = mapped_column(Float)
    interval_width: Mapped[float] = mapped_column(Float)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime)
    history_end: Mapped[datetime] = mapped_column(UTCDateTime)


class ForecastAccuracyRow(Base):
    """Rolling-origin backtest scores of one model on one unit's series."""

    __tablename__ = "forecast_accuracy"

    unit_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    horizon: Mapped[int] = mapped_column(Integer, primary_key=True)
    folds: Mapped[int] = mapped_column(Integer)
    mae: Mapped[float] = mapped_column(Float)
    rmse: Mapped[float] = mapped_column(Float)
    mape: Mapped[float | None] = mapped_column(Float)
    coverage: Mapped[float] = mapped_column(Float)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    mase: Mapped[float | None] = mapped_column(Float)
    # MAE and interval coverage per lead (1 step ahead first), over every fold.
    mae_by_lead: Mapped[list[Any] | None] = mapped_column(JSON)
    coverage_by_lead: Mapped[list[Any] | None] = mapped_column(JSON)


class ForecastSeriesRow(Base):
    """One forecast series: the model its backtest selected and the window that backtest saw."""

    __tablename__ = "forecast_series"

    unit_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    unit_type: Mapped[str | None] = mapped_column(String(16))
    freq: Mapped[str] = mapped_column(String(8))
    horizon: Mapped[int] = mapped_column(Integer)
    selected_model: Mapped[str] = mapped_column(String(64))
    capacity: Mapped[float | None] = mapped_column(Float)
    history_points: Mapped[int] = mapped_column(Integer)
    history_end: Mapped[datetime] = mapped_column(UTCDateTime)
    folds: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    target_coverage: Mapped[float] = mapped_column(Float)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ForecastTermRow(Base):
    """How a stock–flow forecast breaks down: the census now, minus the expected departures of
    the patients there, plus the expected admissions still present at `ds`."""

    __tablename__ = "forecast_terms"

    unit_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    ds: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    now: Mapped[float] = mapped_column(Float)
    expected_discharges: Mapped[float] = mapped_column(Float)
    expected_admissions: Mapped[float] = mapped_column(Float)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime)
