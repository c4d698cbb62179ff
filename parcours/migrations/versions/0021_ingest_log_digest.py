"""The digest of what each integrator-versioned resource version held, in the ingest log.

A resource sent again with the same `meta.versionId` and the same content is a duplicate (200);
with other content it is refused (409) instead of being answered as a duplicate and dropped.
Rows stored before this migration have no digest and keep answering as duplicates.

Revision ID: 0021_ingest_log_digest
Revises: 0002_ingest
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021_ingest_log_digest"
down_revision: str | Sequence[str] | None = "0002_ingest"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """`ingest_log.digest`, empty for the rows already there."""
    op.add_column("ingest_log", sa.Column("digest", sa.String(64), nullable=True))


def downgrade() -> None:
    """Drop it."""
    op.drop_column("ingest_log", "digest")
