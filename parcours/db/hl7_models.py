"""Tables of the HL7 v2 (MLLP) listener.

- `hl7_encounters`: each stay's movement history (JSON `EncounterState`) and the last Encounter
  version published, so that a repeated, late or cancelling message is applied to the whole
  history and a new version is published only when the Encounter changes.
- `hl7_resources`: the last version and content digest of each Patient and Location the
  listener published (same reason).
- `patient_identifiers`: identifier (system, value) → patient id, for finding a patient by IPP
  or INS (`parcours pathways show`).
- `hl7_message_counts`: v2 messages by integrator, sending facility, trigger, ACK code and
  reason, for the feed-health page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from parcours.db.models import Base, UTCDateTime


class Hl7EncounterRow(Base):
    """One stay known from ADT messages."""

    __tablename__ = "hl7_encounters"

    encounter_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_hl7_encounters_patient_id", "patient_id"),)


class Hl7ResourceRow(Base):
    """The last published version of a Patient or Location (`Type/id`)."""

    __tablename__ = "hl7_resources"

    resource_key: Mapped[str] = mapped_column(String(160), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))


class PatientIdentifierRow(Base):
    """An identifier of a patient (IPP, INS…) as a feed sent it."""

    __tablename__ = "patient_identifiers"

    system: Mapped[str] = mapped_column(String(256), primary_key=True)
    value: Mapped[str] = mapped_column(String(128), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_patient_identifiers_value", "value"),)


class Hl7MessageCountRow(Base):
    """How many v2 messages of one kind a sender sent, and how they were answered."""

    __tablename__ = "hl7_message_counts"

    integrator: Mapped[str] = mapped_column(String(64), primary_key=True)
    sending_facility: Mapped[str] = mapped_column(String(64), primary_key=True)
    trigger: Mapped[str] = mapped_column(String(16), primary_key=True)
    ack_code: Mapped[str] = mapped_column(String(2), primary_key=True)
    reason: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)
