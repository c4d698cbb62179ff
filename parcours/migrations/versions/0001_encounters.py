"""Walking skeleton: the encounters table.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create `encounters`."""
    op.create_table(
        "encounters",
        sa.Column("encounter_id", sa.String(128), primary_key=True),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("class_code", sa.String(16), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("service_provider", sa.String(256), nullable=True),
        sa.Column("source_version", sa.String(128), nullable=False),
    )
    op.create_index("ix_encounters_patient_id", "encounters", ["patient_id"])


def downgrade() -> None:
    """Drop `encounters`."""
    op.drop_index("ix_encounters_patient_id", table_name="encounters")
    op.drop_table("encounters")
