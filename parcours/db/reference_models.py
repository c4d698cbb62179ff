"""Tables of conditional references (written by the ingest gateway, `ingest/references.py`).

- `identifier_index`: (type, identifier system, identifier value) → id of every resource the
  gateway accepted with an identifier; how `Location?identifier=system|value` is answered. A key
  may name several ids (two resources sharing an identifier): such a reference is ambiguous.
- `pending_references`: conditional references accepted before their target (opt-in
  `PARCOURS_INGEST_DEFER_UNRESOLVED`), by source and element; `resolved_at` is set when the
  target arrives. Feed health lists those still open.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from parcours.db.models import Base, UTCDateTime


class IdentifierIndexRow(Base):
    """One identifier of one accepted resource."""

    __tablename__ = "identifier_index"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    system: Mapped[str] = mapped_column(String(256), primary_key=True)
    value: Mapped[str] = mapped_column(String(256), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PendingReferenceRow(Base):
    """Conditional references to a target not yet received, per source and element."""

    __tablename__ = "pending_references"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    system: Mapped[str] = mapped_column(String(256), primary_key=True)
    value: Mapped[str] = mapped_column(String(256), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    element: Mapped[str] = mapped_column(String(256), primary_key=True)
    # The id the reference was given; the target takes it when it is created.
    alias_id: Mapped[str] = mapped_column(String(64))
    occurrences: Mapped[int] = mapped_column(BigInteger)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_id: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_pending_references_resolved_at", "resolved_at", "source"),)
