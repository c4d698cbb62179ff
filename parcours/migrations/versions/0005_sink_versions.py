"""Pathway: sink_versions, how many times shared sink inputs (the Location tree) changed.

Revision ID: 0005_sink_versions
Revises: 0003_pathway
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_sink_versions"
down_revision: str | Sequence[str] | None = "0003_pathway"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create `sink_versions`."""
    op.create_table(
        "sink_versions",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    """Drop `sink_versions`."""
    op.drop_table("sink_versions")
