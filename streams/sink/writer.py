"""Batched, idempotent SQL writes: one transaction per batch, whole derived state, no increments.

What one `SqlSink.write` does, in one transaction (each job in its own module of `streams.sink`):

1. `locations`: upsert the Locations of the batch; the in-memory hierarchy follows them. A change
   of the tree (a bed moved to another ward…) re-resolves the stored periods that point there and
   marks their hours for recomputation.
2. `patients`: per patient touched by the batch, make its rows in `stays`, `stay_locations`,
   `ed_visits`, `community_visits`, `referrals`, `appointments` equal the rows derived from its
   new state (upsert those that differ, delete those no longer derived) and upsert
   `pathway_states` and its alerts (never touching `acknowledged_by/at`). When `pathway_states`
   holds the digest of the records the patient's previous state derived, the fold's changes are
   written as they are; otherwise the stored rows are read back and compared.
3. `census`: per hospital whose periods or ED visits changed, recompute `census_hourly` for the
   hours from the earliest point where a row changed (or the hospital's old watermark, up to
   which open periods were counted) to its latest known time, from the periods now in SQL, and
   write the hours that differ; recompute `location_occupancy` of the hospital; and
   (`capacity_alerts`) recompute the "ward above capacity" alerts from the same periods.
   A backlog's batch may leave this step to a later write (`census_pending`, below).

The bulk statements themselves (bounded, JSON rows on PostgreSQL) are `parcours.db.bulk`'s.
Every step rewrites rows as a function of the stored state, so a replayed, duplicated or restarted
batch leaves the tables as a clean run does. Offsets are committed by the agent after this returns.

**The census of a backlog.** A backlog's batches follow each partition at its own pace, so each
batch brings periods that reach days back into hours the batch before already counted: recomputed
at every batch, most of a hospital's recent hours would be rewritten again and again. A batch
marked `backlog` therefore records the hours it changed in `census_pending` (in its own
transaction, so nothing is lost to a crash) and leaves step 3 to the first write that is not a
backlog's, or that comes `census_every_s` (a minute) after the last recomputation, or to
`flush_census` (the worker calls it once idle). That write recomputes its own hours and every
pending one together.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

from parcours.db import upsert
from parcours.db.bulk import bulk_write, table_of
from parcours.db.ingest_models import IngestRejectionRow
from parcours.db.models import EncounterRow
from parcours.db.pathway_models import StreamProgressRow
from streams.core.census import Hierarchy
from streams.core.events import (
    CanonicalEvent,
    EncounterRecorded,
    LocationRecorded,
    OrganizationRecorded,
)
from streams.sink.census import (
    HORIZON,
    LOOKBACK,
    recompute_hospital,
    take_pending,
    widen_pending,
)
from streams.sink.locations import LocationTree, remember_refused
from streams.sink.patients import (
    changed_windows,
    plan_write,
    refuse_merge_loops,
    replace_patients,
)
from streams.sink.rows import SinkBatch, SinkResult, Window, encounter_rows

log = logging.getLogger(__name__)

# The PostgreSQL advisory lock that sink transactions take in turn (any fixed 64-bit number).
SINK_LOCK_KEY = 0x70617263  # "parc"
# The tables whose rows a backfill rewrites most (`vacuum`).
CHURNED = ("census_hourly", "location_occupancy", "pathway_states", "stays", "stay_locations")
# How long a backlog's batches may leave the census to a later write.
CENSUS_EVERY_S = 60.0


class SqlSink:
    """Writes batches in one transaction each; replaying a batch changes nothing."""

    def __init__(
        self,
        engine: Engine,
        capacity: Mapping[str, int] | None = None,
        census_every_s: float = CENSUS_EVERY_S,
        horizon: timedelta = HORIZON,
        lookback: timedelta = LOOKBACK,
    ) -> None:
        self.engine = engine
        # No census hour later than this past the clock is counted, and no hour earlier than
        # `lookback` before it of a stay that goes on past that (`recompute_hospital`).
        self.horizon = horizon
        self.lookback = lookback
        self.tree = LocationTree(capacity)
        # The DBAPI connection of the transaction under way (`cancel` interrupts it).
        self._active: Any = None
        self.census_every_s = census_every_s
        # When this sink last recomputed the census (monotonic seconds); a backlog's first
        # batches wait for the next recomputation as the later ones do.
        self.census_at = time.monotonic()
        # Whether `census_pending` may hold hours (at start, another run may have left some).
        self.census_pending = True

    @property
    def hierarchy(self) -> Hierarchy:
        """The Location tree as this sink last read or wrote it."""
        return self.tree.hierarchy

    def load_hierarchy(self, conn: Connection | None = None) -> Hierarchy:
        """(Re)read the Location tree from SQL."""
        if conn is None:
            with self.engine.connect() as own:
                return self.tree.load(own)
        return self.tree.load(conn)

    # --- Progress -----------------------------------------------------------------------------

    def write_progress(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Record how far this worker is on its partitions (`StreamProgressRow` fields)."""
        if rows:
            with self.engine.begin() as conn:
                upsert(conn, StreamProgressRow, rows, key=["topic", "partition"])

    def write_rejections(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Record messages the worker dead-lettered (`IngestRejectionRow` fields) for the Feed
        health page; a row whose `dedupe_key` is there already (a replay) is left as it is."""
        if rows:
            with self.engine.begin() as conn:
                upsert(conn, IngestRejectionRow, rows, key=["dedupe_key"], update=[])

    def refused(self, locations: Sequence[LocationRecorded]) -> None:
        """Record Location versions the database refused, so that `write` skips them from now
        on (the worker reads the directory topic again at every start)."""
        with self.engine.begin() as conn:
            remember_refused(conn, locations)

    def vacuum(self) -> None:
        """Vacuum and analyse the tables a backfill rewrote most, on PostgreSQL: after a backfill
        their old row versions are reclaimed now, even where autovacuum is off or far behind."""
        if self.engine.dialect.name != "postgresql":
            return
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            self._active = conn.connection.dbapi_connection
            try:
                for table in CHURNED:
                    # A fixed table name from the list above: no parameter to bind.
                    conn.execute(text(f'VACUUM (ANALYZE) "{table}"'))
            finally:
                self._active = None

    # --- The batch ----------------------------------------------------------------------------

    def write(self, batch: SinkBatch | Sequence[CanonicalEvent]) -> SinkResult:
        """Write one batch in one transaction; returns rows written and changed census alerts."""
        if not isinstance(batch, SinkBatch):
            events = list(batch)
            batch = SinkBatch(
                locations=[e for e in events if isinstance(e, LocationRecorded)],
                organizations=[e for e in events if isinstance(e, OrganizationRecorded)],
                encounters=[e for e in events if isinstance(e, EncounterRecorded)],
            )
        try:
            with self.engine.begin() as conn:
                self._active = conn.connection.dbapi_connection
                if conn.dialect.name == "postgresql":
                    # Workers that share the partitions write at once, but the census of a
                    # hospital counts every worker's patients: a batch that recomputed hours
                    # without seeing another's uncommitted rows would overwrite them. Writers
                    # take turns (the lock ends with the transaction); the rules of the next
                    # batch run meanwhile.
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SINK_LOCK_KEY})
                self.tree.fresh(conn)
                return self._write(conn, batch)
        except Exception:
            # The in-memory tree may be ahead of what was rolled back: read it again next time.
            self.tree.forget()
            self.census_pending = True
            raise
        finally:
            self._active = None

    def cancel(self) -> None:
        """Interrupt the statement under way, if any (from another thread): its transaction
        rolls back and `write` raises. A stopping worker leaves the batch to its next start."""
        active = self._active
        if active is None:
            return
        try:
            if hasattr(active, "cancel"):  # psycopg2
                active.cancel()
            elif hasattr(active, "interrupt"):  # sqlite3
                active.interrupt()
        except Exception as exc:
            log.debug("could not cancel the statement under way: %s", type(exc).__name__)

    def _write(self, conn: Connection, batch: SinkBatch) -> SinkResult:
        result = SinkResult()
        windows: dict[str, Window] = {}
        self.tree.apply_organizations(conn, batch.organizations, result)
        hierarchy = self.tree.apply(conn, batch.locations, windows, result)

        enc = encounter_rows(batch.encounters)
        if enc:
            bulk_write(conn, table_of(EncounterRow), enc, key=["encounter_id"])
            result.rows += len(enc)

        patients = list({p.patient_id: p for p in batch.patients}.values())
        if patients:
            refuse_merge_loops(conn, patients)
            plan = plan_write(conn, patients)
            self.tree.resolve_places(hierarchy, *plan.placed())
            changed_windows(conn, plan, windows)
            result.rows += replace_patients(conn, patients, plan)
        if batch.backlog and time.monotonic() - self.census_at < self.census_every_s:
            if windows:
                widen_pending(conn, windows)
                self.census_pending = True
            return result
        if self.census_pending:
            take_pending(conn, windows)
            self.census_pending = False
        now = datetime.now(UTC)
        for hospital in sorted(windows):
            result.rows += recompute_hospital(
                conn,
                hierarchy,
                hospital,
                windows[hospital],
                result,
                horizon=now + self.horizon,
                counted_from=now - self.lookback,
            )
        self.census_at = time.monotonic()
        return result

    def flush_census(self) -> SinkResult:
        """Recompute the census hours that backlog batches left pending, in one transaction."""
        return self.write(SinkBatch())
