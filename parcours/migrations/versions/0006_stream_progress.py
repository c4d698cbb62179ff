"""Pathway: stream_progress, each raw partition's progress as its stream worker reports it.

Revision ID: 0006_stream_progress
Revises: 0005_sink_versions
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_stream_progress"
down_revision: str | Sequence[str] | None = "0005_sink_versions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create `stream_progress`."""
    op.create_table(
        "stream_progress",
        sa.Column("topic", sa.String(256), primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("worker", sa.String(256), nullable=False),
        sa.Column("processed_offset", sa.BigInteger),
        sa.Column("highwater", sa.BigInteger),
        sa.Column("lag", sa.BigInteger),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop `stream_progress`."""
    op.drop_table("stream_progress")
