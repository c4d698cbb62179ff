"""The SQL schema, as SQLAlchemy 2.0 models. Alembic migrations in `parcours/migrations` create it.

Table names, owned by area (a later change adds its tables in a new migration):
- `encounters`: one row per FHIR Encounter seen by the stream processors (walking skeleton).
- ingest: `integrators`, `ingest_log`, `ingest_rejections`.
- pathway: `pathway_states`, `stays`, `stay_locations`, `alerts`, `alert_audit`.
- census: `locations`, `location_occupancy`, `census_hourly`.
- forecasting: `forecasts`, `forecast_accuracy`.

Times are stored in UTC and read back aware (`UTCDateTime`): PostgreSQL has `timestamptz`; SQLite
has no zone, so a time is converted to UTC before it is stored and marked UTC when read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from parcours.timeutil import to_utc


class UTCDateTimeType(TypeDecorator[datetime]):
    """An aware instant, stored as UTC on every database and read back aware (UTC).

    SQLite would otherwise store an aware time's wall clock without its offset and give it back
    naive: `09:06+01:00` read back as `09:06` UTC, an hour late.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        """Aware (or naive UTC) datetime → UTC; naive for SQLite, which keeps no zone."""
        if not isinstance(value, datetime):
            return value
        utc = to_utc(value)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        """Stored value → aware UTC datetime."""
        return to_utc(value) if isinstance(value, datetime) else value


UTCDateTime = UTCDateTimeType()


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
