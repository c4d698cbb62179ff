"""HL7 v2 listener: hl7_encounters, hl7_resources, patient_identifiers, hl7_message_counts.

Revision ID: 0012_hl7
Revises: 0002_ingest
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_hl7"
down_revision: str | Sequence[str] | None = "0002_ingest"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the HL7 listener's tables."""
    op.create_table(
        "hl7_encounters",
        sa.Column("encounter_id", sa.String(64), primary_key=True),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_hl7_encounters_patient_id", "hl7_encounters", ["patient_id"])
    op.create_table(
        "hl7_resources",
        sa.Column("resource_key", sa.String(160), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
    )
    op.create_table(
        "patient_identifiers",
        sa.Column("system", sa.String(256), primary_key=True),
        sa.Column("value", sa.String(128), primary_key=True),
        sa.Column("patient_id", sa.String(64), primary_key=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_patient_identifiers_value", "patient_identifiers", ["value"])
    op.create_table(
        "hl7_message_counts",
        sa.Column("integrator", sa.String(64), primary_key=True),
        sa.Column("sending_facility", sa.String(64), primary_key=True),
        sa.Column("trigger", sa.String(16), primary_key=True),
        sa.Column("ack_code", sa.String(2), primary_key=True),
        sa.Column("reason", sa.String(64), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop the HL7 listener's tables."""
    op.drop_table("hl7_message_counts")
    op.drop_index("ix_patient_identifiers_value", table_name="patient_identifiers")
    op.drop_table("patient_identifiers")
    op.drop_table("hl7_resources")
    op.drop_index("ix_hl7_encounters_patient_id", table_name="hl7_encounters")
    op.drop_table("hl7_encounters")
