"""SQL tables of the dashboard: its local accounts and the trail of who opened which record.

- `dashboard_users`: local accounts (argon2 hash of the password, role, optional hospitals) and
  the roles of people who sign in through the hospital's OIDC provider (no password then).
- `access_audit`: every sign-in and every opening of a patient's pathway, by whom and when;
  French hospitals must be able to say who accessed which record.

Acknowledgements of alerts stay in `alert_audit` (pathway tables), with the signed-in user.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from parcours.db.models import Base, UTCDateTime


class DashboardUserRow(Base):
    """A person who may use the dashboard, with one role."""

    __tablename__ = "dashboard_users"

    username: Mapped[str] = mapped_column(String(128), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(String(256))
    hospitals: Mapped[list[str] | None] = mapped_column(JSON)
    active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AccessAuditRow(Base):
    """One access: a sign-in (or a refused one), or the opening of a patient's pathway."""

    __tablename__ = "access_audit"

    access_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(128))
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    patient_id: Mapped[str | None] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_access_audit_patient_id", "patient_id"),
        Index("ix_access_audit_at", "at"),
    )
