"""Census hours a backlog's batches changed and left for a later recomputation.

Revision ID: 0018_census_pending
Revises: 0017_appointments
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018_census_pending"
down_revision: str | Sequence[str] | None = "0017_appointments"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """The `census_pending` table: one window of hours per hospital (none: only its live
    occupancy)."""
    op.create_table(
        "census_pending",
        sa.Column("hospital_id", sa.String(256), primary_key=True),
        sa.Column("lo", TZ, nullable=True),
        sa.Column("hi", TZ, nullable=True),
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_table("census_pending")
