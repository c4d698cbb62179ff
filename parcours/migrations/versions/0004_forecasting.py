"""Forecasting: forecasts and forecast_accuracy.

Revision ID: 0004_forecasting
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_forecasting"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create `forecasts` and `forecast_accuracy`."""
    op.create_table(
        "forecasts",
        sa.Column("unit_id", sa.String(128), primary_key=True),
        sa.Column("metric", sa.String(32), primary_key=True),
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("ds", TZ, primary_key=True),
        sa.Column("yhat", sa.Float, nullable=False),
        sa.Column("yhat_lower", sa.Float, nullable=False),
        sa.Column("yhat_upper", sa.Float, nullable=False),
        sa.Column("interval_width", sa.Float, nullable=False),
        sa.Column("run_at", TZ, nullable=False),
        sa.Column("history_end", TZ, nullable=False),
    )
    op.create_table(
        "forecast_accuracy",
        sa.Column("unit_id", sa.String(128), primary_key=True),
        sa.Column("metric", sa.String(32), primary_key=True),
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("horizon", sa.Integer, primary_key=True),
        sa.Column("folds", sa.Integer, nullable=False),
        sa.Column("mae", sa.Float, nullable=False),
        sa.Column("rmse", sa.Float, nullable=False),
        sa.Column("mape", sa.Float, nullable=True),
        sa.Column("coverage", sa.Float, nullable=False),
        sa.Column("computed_at", TZ, nullable=False),
    )


def downgrade() -> None:
    """Drop the forecasting tables."""
    op.drop_table("forecast_accuracy")
    op.drop_table("forecasts")
