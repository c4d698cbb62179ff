"""Ingest gateway: token expiry, patient ownership and grants between integrators.

Revision ID: 0013_ingest_ownership
Revises: 0002_ingest
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_ingest_ownership"
down_revision: str | Sequence[str] | None = "0002_ingest"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add `integrators.expires_at`, `ingest_owners` and `ingest_grants`."""
    op.add_column("integrators", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "ingest_owners",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("value", sa.String(512), primary_key=True),
        sa.Column("integrator", sa.String(64), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "ingest_grants",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("value", sa.String(512), primary_key=True),
        sa.Column("integrator", sa.String(64), primary_key=True),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop the ownership tables and the expiry column."""
    op.drop_table("ingest_grants")
    op.drop_table("ingest_owners")
    with op.batch_alter_table("integrators") as batch:
        batch.drop_column("expires_at")
