"""Batched, idempotent upserts of canonical events into SQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine

from parcours.db import upsert
from parcours.db.models import EncounterRow
from streams.events import CanonicalEvent, EncounterRecorded


def encounter_rows(events: Sequence[CanonicalEvent]) -> list[dict[str, Any]]:
    """One row per encounter; within a batch the last event of an encounter wins."""
    rows: dict[str, dict[str, Any]] = {}
    for ev in events:
        if isinstance(ev, EncounterRecorded):
            rows[ev.encounter_id] = {
                "encounter_id": ev.encounter_id,
                "patient_id": ev.patient_id,
                "class_code": ev.class_code,
                "status": ev.status,
                "period_start": ev.start,
                "period_end": ev.end,
                "service_provider": ev.service_provider,
                "source_version": ev.source.version,
            }
    return list(rows.values())


class SqlSink:
    """Writes batches of events in one transaction; replaying a batch changes nothing."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def write(self, events: Sequence[CanonicalEvent]) -> int:
        """Upsert the rows derived from `events`; returns how many rows were written."""
        rows = encounter_rows(events)
        if rows:
            with self.engine.begin() as conn:
                upsert(conn, EncounterRow.__table__, rows, key=["encounter_id"])  # type: ignore[arg-type]
        return len(rows)
