"""The digest of each patient's records, beside its pathway state.

The stream sink stores the digest of the records it wrote for a patient (stays, periods, visits,
referrals, appointments). When the records the previous state derived have that digest, the
sink writes only what changed, without reading the patient's rows back.

Revision ID: 0020_rows_digest
Revises: 0019_watermark_indexes
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020_rows_digest"
down_revision: str | Sequence[str] | None = "0019_watermark_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """`pathway_states.rows_digest`, empty until the sink next writes the patient."""
    op.add_column("pathway_states", sa.Column("rows_digest", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    """Drop it."""
    op.drop_column("pathway_states", "rows_digest")
