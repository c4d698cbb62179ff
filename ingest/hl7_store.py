"""SQL memory of the HL7 listener: stays' movement histories, published versions, identifiers,
message counts. Sync SQLAlchemy, called from the listener's one writer thread."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from ingest.hl7_map import EncounterState
from parcours.db import upsert
from parcours.db.hl7_models import (
    Hl7EncounterRow,
    Hl7MessageCountRow,
    Hl7ResourceRow,
    PatientIdentifierRow,
)

CHUNK = 500
# (integrator, sending facility, trigger, ack code, reason)
CountKey = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class ResourceVersion:
    """The last published version of a Patient or Location and its content digest."""

    version: int
    digest: str


class Hl7Store:
    """Reads and writes of the listener's tables."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def encounters(self, ids: Iterable[str]) -> dict[str, EncounterState]:
        """The stored states of these stays (absent ones are not in the result)."""
        wanted = sorted(set(ids))
        t = Hl7EncounterRow.__table__
        found: dict[str, EncounterState] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), CHUNK):
                chunk = wanted[start : start + CHUNK]
                for row in conn.execute(select(t.c.state).where(t.c.encounter_id.in_(chunk))):
                    state = EncounterState.from_json(row[0])
                    found[state.encounter_id] = state
        return found

    def encounters_of(self, patient_id: str) -> list[str]:
        """The stays stored for a patient."""
        t = Hl7EncounterRow.__table__
        with self.engine.connect() as conn:
            return [
                r[0]
                for r in conn.execute(select(t.c.encounter_id).where(t.c.patient_id == patient_id))
            ]

    def resources(self, keys: Iterable[str]) -> dict[str, ResourceVersion]:
        """The last published version of each `Type/id` (absent ones are not in the result)."""
        wanted = sorted(set(keys))
        t = Hl7ResourceRow.__table__
        found: dict[str, ResourceVersion] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), CHUNK):
                chunk = wanted[start : start + CHUNK]
                rows = conn.execute(
                    select(t.c.resource_key, t.c.version, t.c.digest).where(
                        t.c.resource_key.in_(chunk)
                    )
                )
                found.update({r[0]: ResourceVersion(r[1], r[2]) for r in rows})
        return found

    def commit(
        self,
        now: datetime,
        encounters: Sequence[EncounterState],
        resources: Mapping[str, ResourceVersion],
        identifiers: Sequence[tuple[str, str, str]],
        counts: Mapping[CountKey, int],
    ) -> None:
        """Store what a batch changed, in one transaction. Counts add to the stored ones."""
        with self.engine.begin() as conn:
            rows: list[dict[str, Any]] = [
                {
                    "encounter_id": s.encounter_id,
                    "patient_id": s.patient_id,
                    "version": s.version,
                    "state": s.to_json(),
                    "updated_at": now,
                }
                for s in encounters
            ]
            for start in range(0, len(rows), CHUNK):
                upsert(conn, Hl7EncounterRow, rows[start : start + CHUNK], key=["encounter_id"])
            res_rows = [
                {"resource_key": k, "version": v.version, "digest": v.digest}
                for k, v in resources.items()
            ]
            for start in range(0, len(res_rows), CHUNK):
                upsert(conn, Hl7ResourceRow, res_rows[start : start + CHUNK], key=["resource_key"])
            id_rows = [
                {"system": s[:256], "value": v[:128], "patient_id": p, "updated_at": now}
                for s, v, p in dict.fromkeys(identifiers)
            ]
            for start in range(0, len(id_rows), CHUNK):
                upsert(
                    conn,
                    PatientIdentifierRow,
                    id_rows[start : start + CHUNK],
                    key=["system", "value", "patient_id"],
                )
            self._add_counts(conn, counts, now)

    def add_counts(self, counts: Mapping[CountKey, int], now: datetime) -> None:
        """Add message counts (NACKs recorded outside a batch)."""
        if counts:
            with self.engine.begin() as conn:
                self._add_counts(conn, counts, now)

    @staticmethod
    def _add_counts(conn: Any, counts: Mapping[CountKey, int], now: datetime) -> None:
        if not counts:
            return
        t = Hl7MessageCountRow.__table__
        keys = [(k, n) for k, n in counts.items() if n]
        existing: dict[CountKey, int] = {}
        for key, _ in keys:
            row = conn.execute(
                select(t.c.count).where(
                    t.c.integrator == key[0],
                    t.c.sending_facility == key[1],
                    t.c.trigger == key[2],
                    t.c.ack_code == key[3],
                    t.c.reason == key[4],
                )
            ).first()
            if row is not None:
                existing[key] = int(row[0])
        upsert(
            conn,
            Hl7MessageCountRow,
            [
                {
                    "integrator": k[0],
                    "sending_facility": k[1],
                    "trigger": k[2],
                    "ack_code": k[3],
                    "reason": k[4],
                    "count": existing.get(k, 0) + n,
                    "last_at": now,
                }
                for k, n in keys
            ],
            key=["integrator", "sending_facility", "trigger", "ack_code", "reason"],
        )


def message_counts(engine: Engine) -> list[dict[str, Any]]:
    """Every (integrator, facility, trigger, ACK code, reason) count, for feed health."""
    t = Hl7MessageCountRow.__table__
    with engine.connect() as conn:
        rows = conn.execute(
            select(t).order_by(t.c.integrator, t.c.sending_facility, t.c.trigger, t.c.ack_code)
        )
        return [dict(r._mapping) for r in rows]
