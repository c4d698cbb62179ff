"""Dashboard: local accounts, the access trail, and the role behind each alert acknowledgement.

Revision ID: 0011_users_audit
Revises: 0003_pathway
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_users_audit"
down_revision: str | Sequence[str] | None = "0003_pathway"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create `dashboard_users` and `access_audit`; add `role` to `alert_audit`."""
    op.create_table(
        "dashboard_users",
        sa.Column("username", sa.String(128), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(256), nullable=True),
        sa.Column("hospitals", sa.JSON(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("disabled_at", TZ, nullable=True),
        sa.Column("last_login_at", TZ, nullable=True),
    )
    op.create_table(
        "access_audit",
        sa.Column("access_id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("patient_id", sa.String(128), nullable=True),
        sa.Column("at", TZ, nullable=False),
    )
    op.create_index("ix_access_audit_patient_id", "access_audit", ["patient_id"])
    op.create_index("ix_access_audit_at", "access_audit", ["at"])
    with op.batch_alter_table("alert_audit") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=True))


def downgrade() -> None:
    """Drop what `upgrade` created."""
    with op.batch_alter_table("alert_audit") as batch:
        batch.drop_column("role")
    op.drop_index("ix_access_audit_at", "access_audit")
    op.drop_index("ix_access_audit_patient_id", "access_audit")
    op.drop_table("access_audit")
    op.drop_table("dashboard_users")
