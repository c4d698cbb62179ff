"""The stream worker records each message it dead-lettered once on the Feed health page.

A replay of the raw topic, or the directory topic read again at every worker start, dead-letters
the same messages again; their rows share a `dedupe_key` and are written once. The gateway's rows
have none.

Revision ID: 0023_rejection_dedupe
Revises: 0021_ingest_log_digest
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023_rejection_dedupe"
down_revision: str | Sequence[str] | None = "0021_ingest_log_digest"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """`ingest_rejections.dedupe_key`, unique, empty for the rows already there."""
    op.add_column("ingest_rejections", sa.Column("dedupe_key", sa.String(64), nullable=True))
    op.create_index(
        "ux_ingest_rejections_dedupe_key", "ingest_rejections", ["dedupe_key"], unique=True
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_index("ux_ingest_rejections_dedupe_key", table_name="ingest_rejections")
    op.drop_column("ingest_rejections", "dedupe_key")
