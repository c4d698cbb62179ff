"""Care pathway and census tables (streams sink).

Revision ID: 0003_pathway
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_pathway"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the pathway and census tables."""
    op.create_table(
        "pathway_states",
        sa.Column("patient_id", sa.String(128), primary_key=True),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("last_event_at", TZ, nullable=True),
    )
    op.create_table(
        "stays",
        sa.Column("stay_id", sa.String(128), primary_key=True),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("hospital_id", sa.String(256), nullable=True),
        sa.Column("admitted_at", TZ, nullable=True),
        sa.Column("discharged_at", TZ, nullable=True),
        sa.Column("disposition", sa.String(64), nullable=True),
        sa.Column("admit_source", sa.String(64), nullable=True),
        sa.Column("from_ed_encounter", sa.String(128), nullable=True),
        sa.Column("los_hours", sa.Float(), nullable=True),
    )
    op.create_index("ix_stays_patient_id", "stays", ["patient_id"])
    op.create_index("ix_stays_hospital_id", "stays", ["hospital_id"])
    op.create_table(
        "stay_locations",
        sa.Column("stay_id", sa.String(128), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("hospital_id", sa.String(256), nullable=False),
        sa.Column("location_id", sa.String(256), nullable=True),
        sa.Column("ward_ref", sa.String(256), nullable=True),
        sa.Column("ward_id", sa.String(256), nullable=True),
        sa.Column("bed_id", sa.String(256), nullable=True),
        sa.Column("start_at", TZ, nullable=False),
        sa.Column("end_at", TZ, nullable=True),
        sa.Column("discharged", sa.Boolean(), nullable=False),
    )
    op.create_index(
        "ix_stay_locations_hospital_start", "stay_locations", ["hospital_id", "start_at"]
    )
    op.create_index("ix_stay_locations_location_id", "stay_locations", ["location_id"])
    op.create_index("ix_stay_locations_ward_id", "stay_locations", ["ward_id"])
    op.create_index("ix_stay_locations_patient_id", "stay_locations", ["patient_id"])
    op.create_table(
        "ed_visits",
        sa.Column("encounter_id", sa.String(128), primary_key=True),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("hospital_id", sa.String(256), nullable=True),
        sa.Column("ward_id", sa.String(256), nullable=True),
        sa.Column("arrived_at", TZ, nullable=True),
        sa.Column("departed_at", TZ, nullable=True),
        sa.Column("admitted", sa.Boolean(), nullable=False),
        sa.Column("disposition", sa.String(64), nullable=True),
    )
    op.create_index("ix_ed_visits_patient_id", "ed_visits", ["patient_id"])
    op.create_index("ix_ed_visits_hospital_arrived", "ed_visits", ["hospital_id", "arrived_at"])
    op.create_table(
        "community_visits",
        sa.Column("encounter_id", sa.String(128), primary_key=True),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("class_code", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(256), nullable=True),
        sa.Column("start_at", TZ, nullable=True),
        sa.Column("end_at", TZ, nullable=True),
    )
    op.create_index("ix_community_visits_patient_id", "community_visits", ["patient_id"])
    op.create_table(
        "referrals",
        sa.Column("referral_id", sa.String(128), primary_key=True),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("requester", sa.String(256), nullable=True),
        sa.Column("performer", sa.String(256), nullable=True),
        sa.Column("authored_at", TZ, nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
    )
    op.create_index("ix_referrals_patient_id", "referrals", ["patient_id"])
    op.create_table(
        "alerts",
        sa.Column("alert_id", sa.String(256), primary_key=True),
        sa.Column("alert_type", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(128), nullable=True),
        sa.Column("unit_id", sa.String(256), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("raised_at", TZ, nullable=False),
        sa.Column("resolved_at", TZ, nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("acknowledged_by", sa.String(128), nullable=True),
        sa.Column("acknowledged_at", TZ, nullable=True),
    )
    op.create_index("ix_alerts_patient_id", "alerts", ["patient_id"])
    op.create_index("ix_alerts_status_type", "alerts", ["status", "alert_type"])
    op.create_table(
        "alert_audit",
        sa.Column("audit_id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.String(256), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
    )
    op.create_index("ix_alert_audit_alert_id", "alert_audit", ["alert_id"])
    op.create_table(
        "locations",
        sa.Column("location_id", sa.String(256), primary_key=True),
        sa.Column("name", sa.String(256), nullable=True),
        sa.Column("physical_type", sa.String(16), nullable=True),
        sa.Column("part_of", sa.String(256), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("service_code", sa.String(64), nullable=True),
        sa.Column("service_name", sa.String(256), nullable=True),
        sa.Column("organization", sa.String(256), nullable=True),
        sa.Column("source_version", sa.String(128), nullable=False),
    )
    op.create_table(
        "location_occupancy",
        sa.Column("unit_type", sa.String(16), primary_key=True),
        sa.Column("unit_id", sa.String(256), primary_key=True),
        sa.Column("hospital_id", sa.String(256), nullable=False),
        sa.Column("name", sa.String(256), nullable=True),
        sa.Column("occupied", sa.Integer(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=True),
        sa.Column("as_of", TZ, nullable=True),
    )
    op.create_index("ix_location_occupancy_hospital_id", "location_occupancy", ["hospital_id"])
    op.create_table(
        "census_hourly",
        sa.Column("unit_type", sa.String(16), primary_key=True),
        sa.Column("unit_id", sa.String(256), primary_key=True),
        sa.Column("hour", TZ, primary_key=True),
        sa.Column("hospital_id", sa.String(256), nullable=False),
        sa.Column("occupancy", sa.Integer(), nullable=False),
        sa.Column("admissions", sa.Integer(), nullable=False),
        sa.Column("discharges", sa.Integer(), nullable=False),
        sa.Column("transfers_in", sa.Integer(), nullable=False),
        sa.Column("transfers_out", sa.Integer(), nullable=False),
        sa.Column("ed_arrivals", sa.Integer(), nullable=False),
    )
    op.create_index("ix_census_hourly_hospital_hour", "census_hourly", ["hospital_id", "hour"])


def downgrade() -> None:
    """Drop the pathway and census tables."""
    for table in (
        "census_hourly",
        "location_occupancy",
        "locations",
        "alert_audit",
        "alerts",
        "referrals",
        "community_visits",
        "ed_visits",
        "stay_locations",
        "stays",
        "pathway_states",
    ):
        op.drop_table(table)
