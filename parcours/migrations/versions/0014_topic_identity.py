"""Kernel: topic_identity, the broker topic (Kafka topic id and cluster id) the SQL data came from.

Revision ID: 0014_topic_identity
Revises: 0006_stream_progress
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_topic_identity"
down_revision: str | Sequence[str] | None = "0006_stream_progress"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create `topic_identity`."""
    op.create_table(
        "topic_identity",
        sa.Column("topic", sa.String(256), primary_key=True),
        sa.Column("topic_id", sa.String(64), nullable=False),
        sa.Column("cluster_id", sa.String(256), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop `topic_identity`."""
    op.drop_table("topic_identity")
