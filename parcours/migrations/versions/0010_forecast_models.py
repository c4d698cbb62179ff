"""Forecast models: per-series selection, the stock–flow terms, and richer backtest scores.

Revision ID: 0010_forecast_models
Revises: 0004_forecasting
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_forecast_models"
down_revision: str | Sequence[str] | None = "0004_forecasting"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create `forecast_series` and `forecast_terms`; add MASE, per-lead scores and the
    backtest window to `forecast_accuracy`."""
    op.create_table(
        "forecast_series",
        sa.Column("unit_id", sa.String(128), primary_key=True),
        sa.Column("metric", sa.String(32), primary_key=True),
        sa.Column("unit_type", sa.String(16), nullable=True),
        sa.Column("freq", sa.String(8), nullable=False),
        sa.Column("horizon", sa.Integer, nullable=False),
        sa.Column("selected_model", sa.String(64), nullable=False),
        sa.Column("capacity", sa.Float, nullable=True),
        sa.Column("history_points", sa.Integer, nullable=False),
        sa.Column("history_end", TZ, nullable=False),
        sa.Column("folds", sa.Integer, nullable=False),
        sa.Column("window_start", TZ, nullable=False),
        sa.Column("window_end", TZ, nullable=False),
        sa.Column("target_coverage", sa.Float, nullable=False),
        sa.Column("computed_at", TZ, nullable=False),
    )
    op.create_table(
        "forecast_terms",
        sa.Column("unit_id", sa.String(128), primary_key=True),
        sa.Column("metric", sa.String(32), primary_key=True),
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("ds", TZ, primary_key=True),
        sa.Column("now", sa.Float, nullable=False),
        sa.Column("expected_discharges", sa.Float, nullable=False),
        sa.Column("expected_admissions", sa.Float, nullable=False),
        sa.Column("run_at", TZ, nullable=False),
    )
    with op.batch_alter_table("forecast_accuracy") as batch:
        batch.add_column(sa.Column("mase", sa.Float, nullable=True))
        batch.add_column(sa.Column("mae_by_lead", sa.JSON, nullable=True))
        batch.add_column(sa.Column("coverage_by_lead", sa.JSON, nullable=True))


def downgrade() -> None:
    """Drop what `upgrade` added."""
    with op.batch_alter_table("forecast_accuracy") as batch:
        batch.drop_column("coverage_by_lead")
        batch.drop_column("mae_by_lead")
        batch.drop_column("mase")
    op.drop_table("forecast_terms")
    op.drop_table("forecast_series")
