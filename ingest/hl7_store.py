"""SQL memory of the HL7 listener: stays' movement histories, published versions, identifiers,
message counts. Sync SQLAlchemy, called from the listener's one writer thread."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ingest.dedupe import Published
from ingest.hl7_map import EncounterState
from ingest.references import MERGED_SYSTEM
from parcours.db.hl7_models import (
    Hl7EncounterRow,
    Hl7MessageCountRow,
    Hl7ResourceRow,
    PatientIdentifierRow,
)
from parcours.db.ingest_models import IngestLogRow, IntegratorRow
from parcours.db.reference_models import IdentifierIndexRow

CHUNK = 500
# (integrator, sending facility, trigger, ack code, reason)
CountKey = tuple[str, str, str, str, str]


@lru_cache(maxsize=64)
def _upsert_statement(
    dialect: str, table: Table, key: tuple[str, ...], cols: tuple[str, ...]
) -> Any:
    """`INSERT … ON CONFLICT (key) DO UPDATE SET cols` (DO NOTHING without cols), built once:
    building it is a visible share of a batch's CPU."""
    stmt: Any = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    if cols:
        return stmt.on_conflict_do_update(
            index_elements=list(key), set_={c: stmt.excluded[c] for c in cols}
        )
    return stmt.on_conflict_do_nothing(index_elements=list(key))


def upsert(
    conn: Any,
    model: Any,
    rows: Sequence[Mapping[str, Any]],
    key: list[str],
    update: list[str] | None = None,
) -> None:
    """`parcours.db.upsert` (insert, or overwrite `update` — by default every non-key column in
    the rows — on a conflict on `key`), with the statement built once per shape."""
    if not rows:
        return
    table: Table = model.__table__
    cols = (
        tuple(update)
        if update is not None
        else tuple(c.name for c in table.columns if c.name not in key and c.name in rows[0])
    )
    conn.execute(_upsert_statement(conn.dialect.name, table, tuple(key), cols), list(rows))


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
        identifiers: Sequence[tuple[str, str, str, str]],
        counts: Mapping[CountKey, int],
        published: Mapping[str, Sequence[Published]] | None = None,
        merges: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        """Store what a batch changed, in one transaction: the stays, versions, identifiers,
        counts (added to the stored ones), per integrator the records Kafka acknowledged in
        `ingest_log` with the integrator's counters, as the HTTP gateway records its own, and
        the A40 merges (merged id → (surviving id, integrator)) where the gateway records its
        own."""
        with self.engine.begin() as conn:
            for source, records in (published or {}).items():
                log_rows = [
                    {
                        "resource_type": p.key[0],
                        "resource_id": p.key[1],
                        "version": p.key[2],
                        "kafka_key": p.kafka_key[:160],
                        "source": source,
                        "received_at": now,
                        "partition": p.partition,
                        "offset": p.offset,
                        "digest": p.digest,
                    }
                    for p in records
                ]
                for start in range(0, len(log_rows), CHUNK):
                    upsert(
                        conn,
                        IngestLogRow,
                        log_rows[start : start + CHUNK],
                        key=["resource_type", "resource_id", "version"],
                        update=[],
                    )
                it = IntegratorRow
                conn.execute(
                    update(it)
                    .where(it.name == source)
                    .values(accepted_total=it.accepted_total + len(records), last_seen_at=now)
                )
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
            unique = list(dict.fromkeys(identifiers))
            id_rows = [
                {"system": s[:256], "value": v[:128], "patient_id": p, "updated_at": now}
                for s, v, p, _ in unique
            ]
            for start in range(0, len(id_rows), CHUNK):
                upsert(
                    conn,
                    PatientIdentifierRow,
                    id_rows[start : start + CHUNK],
                    key=["system", "value", "patient_id"],
                )
            # The gateway's identifier index too, so that `Patient?identifier=…` in a FHIR feed
            # finds a patient the hospital's ADT feed introduced.
            index_rows = [
                {
                    "resource_type": "Patient",
                    "system": sys_[:256],
                    "value": v[:256],
                    "resource_id": p,
                    "source": src[:64],
                    "recorded_at": now,
                }
                for sys_, v, p, src in unique
            ]
            # The gateway's merge rows: a FHIR feed's records for the merged patient follow the
            # merge, and neither side accepts a merge back (`merge-loop`).
            index_rows += [
                {
                    "resource_type": "Patient",
                    "system": MERGED_SYSTEM,
                    "value": merged,
                    "resource_id": into,
                    "source": src[:64],
                    "recorded_at": now,
                }
                for merged, (into, src) in (merges or {}).items()
            ]
            for start in range(0, len(index_rows), CHUNK):
                upsert(
                    conn,
                    IdentifierIndexRow,
                    index_rows[start : start + CHUNK],
                    key=["resource_type", "system", "value", "resource_id"],
                    update=[],
                )
            self._add_counts(conn, counts, now)

    def add_counts(self, counts: Mapping[CountKey, int], now: datetime) -> None:
        """Add message counts (NACKs recorded outside a batch)."""
        if counts:
            with self.engine.begin() as conn:
                self._add_counts(conn, counts, now)

    @staticmethod
    def _add_counts(conn: Any, counts: Mapping[CountKey, int], now: datetime) -> None:
        rows = [
            {
                "integrator": k[0],
                "sending_facility": k[1],
                "trigger": k[2],
                "ack_code": k[3],
                "reason": k[4],
                "count": n,
                "last_at": now,
            }
            for k, n in counts.items()
            if n
        ]
        if rows:
            conn.execute(_count_statement(conn.dialect.name), rows)


@lru_cache(maxsize=4)
def _count_statement(dialect: str) -> Any:
    """Insert a count, or add it to the stored one."""
    t: Any = Hl7MessageCountRow.__table__
    stmt: Any = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(t)
    return stmt.on_conflict_do_update(
        index_elements=["integrator", "sending_facility", "trigger", "ack_code", "reason"],
        set_={"count": t.c.count + stmt.excluded.count, "last_at": stmt.excluded.last_at},
    )


def message_counts(engine: Engine) -> list[dict[str, Any]]:
    """Every (integrator, facility, trigger, ACK code, reason) count, for feed health."""
    t = Hl7MessageCountRow.__table__
    with engine.connect() as conn:
        rows = conn.execute(
            select(t).order_by(t.c.integrator, t.c.sending_facility, t.c.trigger, t.c.ack_code)
        )
        return [dict(r._mapping) for r in rows]
