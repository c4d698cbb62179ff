"""Indexes that find a hospital's latest period end and ED departure without a scan.

The stream sink reads a hospital's latest known time (its watermark) at every batch that touches
it, and the census reads the periods still open or ended in a window: on months of history a
scan of the hospital's rows each time.

Revision ID: 0019_watermark_indexes
Revises: 0018_census_pending
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0019_watermark_indexes"
down_revision: str | Sequence[str] | None = "0018_census_pending"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """(hospital, end) on `stay_locations`, (hospital, departure) on `ed_visits`."""
    op.create_index("ix_stay_locations_hospital_end", "stay_locations", ["hospital_id", "end_at"])
    op.create_index("ix_ed_visits_hospital_departed", "ed_visits", ["hospital_id", "departed_at"])


def downgrade() -> None:
    """Drop them."""
    op.drop_index("ix_ed_visits_hospital_departed", table_name="ed_visits")
    op.drop_index("ix_stay_locations_hospital_end", table_name="stay_locations")
