"""Organizations by id and name: a hospital known only by its Organization (an Encounter's
serviceProvider, with no Location of its site) is shown by name.

Revision ID: 0022_organizations
Revises: 0020_rows_digest
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022_organizations"
down_revision: str | Sequence[str] | None = "0020_rows_digest"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """`organizations`, filled by the stream sink from the directory topic."""
    op.create_table(
        "organizations",
        sa.Column("organization_id", sa.String(length=256), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("source_version", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("organization_id"),
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_table("organizations")
