"""Ingest gateway: integrators, ingest_log (idempotency), ingest_rejections.

Revision ID: 0002_ingest
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_ingest"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the three ingest tables."""
    op.create_table(
        "integrators",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("accepted_total", sa.BigInteger(), nullable=False),
        sa.Column("duplicate_total", sa.BigInteger(), nullable=False),
        sa.Column("rejected_total", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "ingest_log",
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("resource_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.String(80), primary_key=True),
        sa.Column("kafka_key", sa.String(160), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_ingest_log_source_received_at", "ingest_log", ["source", "received_at"])
    op.create_table(
        "ingest_rejections",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=True),
        sa.Column("resource_id", sa.String(128), nullable=True),
        sa.Column("expression", sa.String(512), nullable=True),
        sa.Column("diagnostics", sa.Text(), nullable=True),
        sa.Column("operation_outcome", sa.JSON(), nullable=False),
    )
    op.create_index(
        "ix_ingest_rejections_source_received_at",
        "ingest_rejections",
        ["source", "received_at"],
    )


def downgrade() -> None:
    """Drop the ingest tables."""
    op.drop_index("ix_ingest_rejections_source_received_at", table_name="ingest_rejections")
    op.drop_table("ingest_rejections")
    op.drop_index("ix_ingest_log_source_received_at", table_name="ingest_log")
    op.drop_table("ingest_log")
    op.drop_table("integrators")
