"""Census: census_hourly rows are updated in place; leave room for it and vacuum it often.

A backfill rewrites the hours of the census that each batch changes. With free space in each page
(fillfactor) PostgreSQL updates a row in its own page without touching the indexes (a HOT
update), and prunes the old versions as it goes; autovacuum also visits the table after a few
thousand changes rather than after a fifth of it. Nothing to do on SQLite.

Revision ID: 0016_census_upsert
Revises: 0006_stream_progress
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016_census_upsert"
down_revision: str | Sequence[str] | None = "0006_stream_progress"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SETTINGS = {
    "census_hourly": "fillfactor = 70, autovacuum_vacuum_scale_factor = 0.02,"
    " autovacuum_vacuum_threshold = 2000, autovacuum_analyze_scale_factor = 0.05",
    "location_occupancy": "fillfactor = 70",
    "stay_locations": "fillfactor = 85",
    "stays": "fillfactor = 85",
}


def upgrade() -> None:
    """Room for in-place updates, and a closer autovacuum, on PostgreSQL."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, options in SETTINGS.items():
        op.execute(f"ALTER TABLE {table} SET ({options})")


def downgrade() -> None:
    """PostgreSQL's defaults again."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, options in SETTINGS.items():
        names = ", ".join(part.split("=")[0].strip() for part in options.split(","))
        op.execute(f"ALTER TABLE {table} RESET ({names})")
