"""Booked appointments (the stream's projection of FHIR Appointments), read by forecasting.

Revision ID: 0017_appointments
Revises: 0016_census_upsert
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017_appointments"
down_revision: str | Sequence[str] | None = "0016_census_upsert"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """The `appointments` table."""
    op.create_table(
        "appointments",
        sa.Column("appointment_id", sa.String(128), primary_key=True),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("start_at", TZ, nullable=True),
        sa.Column("booked_at", TZ, nullable=True),
        sa.Column("based_on", sa.String(256), nullable=True),
        sa.Column("hospital_id", sa.String(256), nullable=True),
        sa.Column("service_code", sa.String(64), nullable=True),
        sa.Column("location_id", sa.String(256), nullable=True),
    )
    op.create_index("ix_appointments_patient_id", "appointments", ["patient_id"])
    op.create_index("ix_appointments_start_at", "appointments", ["start_at"])


def downgrade() -> None:
    """Drop it."""
    op.drop_table("appointments")
