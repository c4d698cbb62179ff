"""Identifier index of accepted resources, and conditional references still waiting for a target.

Revision ID: 0015_identifier_index
Revises: 0002_ingest
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_identifier_index"
down_revision: str | Sequence[str] | None = "0002_ingest"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create `identifier_index` and `pending_references`."""
    op.create_table(
        "identifier_index",
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("system", sa.String(256), primary_key=True),
        sa.Column("value", sa.String(256), primary_key=True),
        sa.Column("resource_id", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "pending_references",
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("system", sa.String(256), primary_key=True),
        sa.Column("value", sa.String(256), primary_key=True),
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("element", sa.String(256), primary_key=True),
        sa.Column("alias_id", sa.String(64), nullable=False),
        sa.Column("occurrences", sa.BigInteger(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_id", sa.String(64), nullable=True),
    )
    op.create_index(
        "ix_pending_references_resolved_at", "pending_references", ["resolved_at", "source"]
    )


def downgrade() -> None:
    """Drop both tables."""
    op.drop_index("ix_pending_references_resolved_at", table_name="pending_references")
    op.drop_table("pending_references")
    op.drop_table("identifier_index")
