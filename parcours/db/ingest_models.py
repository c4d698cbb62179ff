"""Tables of the ingest gateway: integrators and their tokens, the idempotency log, rejections.

- `integrators`: one row per feed (GP software, lab, SAMU…), its hashed bearer token and running
  counters the feed-health page reads.
- `ingest_log`: one row per resource version published to the raw topic. Its key
  (type, id, version) is the gateway's dedupe memory, so it survives restarts; the digest of a
  `v:` version's content tells a retry from other content sent under the same versionId.
- `ingest_rejections`: every refused request or entry, with the OperationOutcome sent back, and
  every message the stream worker dead-lettered, once (`dedupe_key`: a replay, or the directory
  read again at each start, records it again under the same key).
- `ingest_owners`: which integrator owns a patient (claimed by its first write) or an
  identifier system (assigned by an admin); `ingest_grants`: who else may write them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from parcours.db.models import Base, UTCDateTime


class IntegratorRow(Base):
    """A feed allowed to push, with its token hash (SHA-256 of a random 256-bit token)."""

    __tablename__ = "integrators"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    accepted_total: Mapped[int] = mapped_column(BigInteger, default=0)
    duplicate_total: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected_total: Mapped[int] = mapped_column(BigInteger, default=0)
    # None: the token never expires.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IngestLogRow(Base):
    """A resource version the broker acknowledged on the raw topic (the dedupe memory)."""

    __tablename__ = "ingest_log"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # `v:<meta.versionId>` or `h:<content hash>`.
    version: Mapped[str] = mapped_column(String(80), primary_key=True)
    kafka_key: Mapped[str] = mapped_column(String(160))
    source: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    # SHA-256 (hex) of what a `v:` version holds (`ingest.entries.content_digest`). None for
    # `h:` versions (their name is their hash) and for rows stored before it was kept: a
    # resend of those versions is a duplicate whatever it holds.
    digest: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_ingest_log_source_received_at", "source", "received_at"),)


class IngestRejectionRow(Base):
    """A request or entry the gateway refused, and what it told the integrator."""

    __tablename__ = "ingest_rejections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    http_status: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str | None] = mapped_column(String(64))
    resource_id: Mapped[str | None] = mapped_column(String(128))
    expression: Mapped[str | None] = mapped_column(String(512))
    diagnostics: Mapped[str | None] = mapped_column(Text)
    operation_outcome: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The stream worker's rows: a digest of the message and the reason (the gateway's: none).
    dedupe_key: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_ingest_rejections_source_received_at", "source", "received_at"),
        Index("ux_ingest_rejections_dedupe_key", "dedupe_key", unique=True),
    )


class IngestOwnerRow(Base):
    """The integrator that owns a patient (`kind` patient) or an identifier system (`system`)."""

    __tablename__ = "ingest_owners"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    value: Mapped[str] = mapped_column(String(512), primary_key=True)
    integrator: Mapped[str] = mapped_column(String(64))
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class IngestGrantRow(Base):
    """An integrator allowed to write what another owns: one patient, one identifier system,
    or (`kind` owner) everything an integrator owns."""

    __tablename__ = "ingest_grants"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    value: Mapped[str] = mapped_column(String(512), primary_key=True)
    integrator: Mapped[str] = mapped_column(String(64), primary_key=True)
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime)
