"""The SQL schema, as SQLAlchemy 2.0 models. Alembic migrations in `parcours/migrations` create it.

Table names, owned by area (a later change adds its tables in a new migration):
- `encounters`: one row per FHIR Encounter seen by the stream processors (walking skeleton).
- ingest: `integrators`, `ingest_log`, `ingest_rejections`.
- pathway: `pathway_states`, `stays`, `stay_locations`, `alerts`, `alert_audit`.
- census: `locations`, `location_occupancy`, `census_hourly`.
- forecasting: `forecasts`, `forecast_accuracy`.

Times are timezone-aware UTC (`DateTime(timezone=True)`); on SQLite they come back naive and
are read as UTC.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UTCDateTime = DateTime(timezone=True)


class Base(DeclarativeBase):
    """Declarative base of every Parcours table."""


class EncounterRow(Base):
    """An encounter as last seen by the stream processors (idempotent on its id)."""

    __tablename__ = "encounters"

    encounter_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(128))
    class_code: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(32))
    period_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    period_end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    service_provider: Mapped[str | None] = mapped_column(String(256))
    source_version: Mapped[str] = mapped_column(String(128))

    __table_args__ = (Index("ix_encounters_patient_id", "patient_id"),)
