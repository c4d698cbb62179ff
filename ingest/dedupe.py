"""The gateway's SQL memory: what was published (idempotency), what was refused, and counters.

The dedupe memory is the `ingest_log` table, so it survives a restart and is shared by every
gateway process. The order is check → publish → record: a resource is recorded only after the
broker acknowledged it, so a crash in between can at worst publish it twice (downstream is
idempotent), never lose it. Each `v:` version (the integrator's `meta.versionId`) is stored with
the digest of what it holds, so that a resend of that version with other content is told apart
from a retry; `versions_locked` keeps two requests from publishing one version at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from ingest.outcome import IngestError
from parcours.db import upsert
from parcours.db.bulk import keyed
from parcours.db.ingest_models import IngestLogRow, IngestRejectionRow, IntegratorRow

DedupeKey = tuple[str, str, str]
# Keep IN lists short enough for every driver and planner.
CHUNK = 500
# How PostgreSQL ends a wait for advisory locks that stay held: lock_not_available
# (lock_timeout), deadlock_detected, and query_canceled (statement_timeout, which the gateway's
# engine sets equal to lock_timeout: the statement does nothing but wait for the locks).
BUSY_CODES = frozenset({"55P03", "40P01", "57014"})
# In order: the ids arrive sorted, so two requests never wait on each other in a cycle.
LOCK_VERSIONS = text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:ids AS bigint[])) AS u(k)")
# How long a process waits for its own locks where the database has no advisory locks.
LOCAL_WAIT_S = 10.0


@dataclass(frozen=True)
class Published:
    """A resource version the broker acknowledged."""

    key: DedupeKey
    kafka_key: str
    partition: int
    offset: int
    # `ingest.entries.content_digest` of a `v:` version; None for `h:` versions, whose name
    # is already a hash of their content.
    digest: str | None = None


class VersionBusy(IngestError):
    """Another request holds one of these locks (versions it is publishing, or the merge lock)
    and did not finish in time."""


def lock_id(key: DedupeKey) -> int:
    """A signed 64-bit advisory lock id for a resource version."""
    name = "\x1f".join(("parcours-ingest-version", *key)).encode()
    return int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)


class KeyLocks:
    """This process's locks on lock ids, for databases without advisory locks (SQLite, a
    single process). A set of ids is taken whole or not at all, so holders never wait on each
    other in a cycle."""

    def __init__(self) -> None:
        self._held: set[int] = set()
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, ids: Iterable[int], wait_s: float) -> Iterator[None]:
        """Hold `ids` for the block; VersionBusy after `wait_s` if another holder keeps one."""
        wanted = set(ids)
        with self._changed:
            if not self._changed.wait_for(lambda: not self._held & wanted, timeout=wait_s):
                raise VersionBusy(f"{len(wanted)} version(s) still held after {wait_s:g} s")
            self._held |= wanted
        try:
            yield
        finally:
            with self._changed:
                self._held -= wanted
                self._changed.notify_all()


# One per process: every store of the process shares it.
LOCAL_LOCKS = KeyLocks()


@contextlib.contextmanager
def locks_held(
    engine: Engine, lock_ids: Iterable[int], wait_s: float = LOCAL_WAIT_S
) -> Iterator[Connection | None]:
    """Hold `lock_ids` against every other holder for the block.

    On PostgreSQL, transaction-level advisory locks on a connection yielded to the block:
    committing it (`IngestStore.record(…, conn=)`) releases them, as does the end of the block.
    On other databases, this process's own locks, and None is yielded. Raises VersionBusy when
    another holder keeps one for longer than the lock timeout (the engine's `lock_timeout`,
    else `wait_s`)."""
    ids = sorted(set(lock_ids))
    if not ids:
        yield None
        return
    if engine.dialect.name != "postgresql":
        with LOCAL_LOCKS.hold(ids, wait_s):
            yield None
        return
    with engine.connect() as conn:
        try:
            for start in range(0, len(ids), CHUNK):
                conn.execute(LOCK_VERSIONS, {"ids": ids[start : start + CHUNK]})
        except DBAPIError as exc:
            if getattr(exc.orig, "pgcode", None) in BUSY_CODES:
                raise VersionBusy(f"{len(ids)} lock(s) held by another request") from exc
            raise
        try:
            yield conn
        finally:
            if conn.in_transaction():
                with contextlib.suppress(Exception):
                    conn.rollback()


@dataclass(frozen=True)
class RejectionRecord:
    """One refused request or entry, as stored for the feed-health page."""

    source: str | None
    received_at: datetime
    http_status: int
    reason: str
    resource_type: str | None
    resource_id: str | None
    expression: str | None
    diagnostics: str | None
    operation_outcome: dict[str, Any]
    # How many refusals the row stands for: 1, or the rest of a request's refusals beyond the
    # rows it may store (see ingest.service.cap_rejections).
    count: int = 1


class IngestStore:
    """SQL access of the gateway (sync; called from worker threads)."""

    def __init__(self, engine: Engine, lock_wait_s: float = LOCAL_WAIT_S) -> None:
        self.engine = engine
        self.lock_wait_s = lock_wait_s

    def seen(
        self, keys: Iterable[DedupeKey], conn: Connection | None = None
    ) -> dict[DedupeKey, str | None]:
        """The keys already published (by any gateway process, before or after a restart),
        each with the digest of the content published under it (None for `h:` versions and
        for rows stored before digests were kept). Read on `conn` when given."""
        wanted = set(keys)
        return self._read(self._seen, wanted, conn) if wanted else {}

    def _read(
        self, read: Callable[[Connection, Any], Any], wanted: Any, conn: Connection | None
    ) -> Any:
        """`read(conn, wanted)`, on a connection of its own when `conn` is None."""
        if conn is None:
            with self.engine.connect() as own:
                return read(own, wanted)
        return read(conn, wanted)

    @staticmethod
    def _seen(conn: Connection, wanted: set[DedupeKey]) -> dict[DedupeKey, str | None]:
        found: dict[DedupeKey, str | None] = {}
        t = IngestLogRow.__table__
        cols = (t.c.resource_type, t.c.resource_id, t.c.version, t.c.digest)
        # By resource (all its versions), then the versions asked for.
        for where in keyed(t, ("resource_type", "resource_id"), {k[:2] for k in wanted}):
            for r in conn.execute(select(*cols).where(where)):
                if (key := (r[0], r[1], r[2])) in wanted:
                    found[key] = r[3]
        return found

    def current_versions(
        self, resources: Iterable[tuple[str, str]], conn: Connection | None = None
    ) -> dict[tuple[str, str], str]:
        """The version published last of each (type, id) that has one: the one received last
        (of one request, the one Kafka acknowledged last). Read on `conn` when given."""
        wanted = set(resources)
        return self._read(self._current, wanted, conn) if wanted else {}

    @staticmethod
    def _current(conn: Connection, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
        t = IngestLogRow.__table__
        cols = (t.c.resource_type, t.c.resource_id, t.c.version, t.c.received_at, t.c.offset)
        latest: dict[tuple[str, str], tuple[Any, int, str]] = {}
        for where in keyed(t, ("resource_type", "resource_id"), wanted):
            for r in conn.execute(select(*cols).where(where)):
                key, order = (r[0], r[1]), (r[3], r[4], r[2])
                if key in wanted and (key not in latest or order > latest[key]):
                    latest[key] = order
        return {key: order[2] for key, order in latest.items()}

    @contextlib.contextmanager
    def versions_locked(self, keys: Iterable[DedupeKey]) -> Iterator[Connection | None]:
        """Hold the versions `keys` against every other writer of them (any gateway process,
        `push --direct`) for the block: between the last look at the ingest log and the
        record of what was published, nobody else publishes them (`locks_held`)."""
        with locks_held(self.engine, [lock_id(k) for k in keys], self.lock_wait_s) as conn:
            yield conn

    def record(
        self,
        source: str,
        received_at: datetime,
        published: Sequence[Published],
        duplicates: int,
        rejected: Sequence[RejectionRecord],
        conn: Connection | None = None,
    ) -> None:
        """Store published keys (with their digests) and rejections and bump the source's
        counters, in one transaction: on `conn` (from `versions_locked`), which it commits,
        else on a connection of its own."""
        if conn is None:
            with self.engine.begin() as own:
                self._record(own, source, received_at, published, duplicates, rejected)
        else:
            self._record(conn, source, received_at, published, duplicates, rejected)
            conn.commit()

    @staticmethod
    def _record(
        conn: Connection,
        source: str,
        received_at: datetime,
        published: Sequence[Published],
        duplicates: int,
        rejected: Sequence[RejectionRecord],
    ) -> None:
        t = IngestLogRow.__table__
        rows = [
            {
                "resource_type": p.key[0],
                "resource_id": p.key[1],
                "version": p.key[2],
                "kafka_key": p.kafka_key[:160],
                "source": source,
                "received_at": received_at,
                "partition": p.partition,
                "offset": p.offset,
                "digest": p.digest,
            }
            for p in published
        ]
        for start in range(0, len(rows), CHUNK):
            # A concurrent request may have published the same version: keep the first row.
            upsert(
                conn,
                t,  # type: ignore[arg-type]
                rows[start : start + CHUNK],
                key=["resource_type", "resource_id", "version"],
                update=[],
            )
        if rejected:
            conn.execute(
                insert(IngestRejectionRow.__table__),  # type: ignore[arg-type]
                [_rejection_row(r) for r in rejected],
            )
        it = IntegratorRow
        conn.execute(
            update(it)
            .where(it.name == source)
            .values(
                accepted_total=it.accepted_total + len(published),
                duplicate_total=it.duplicate_total + duplicates,
                rejected_total=it.rejected_total + sum(r.count for r in rejected),
                last_seen_at=received_at,
            )
        )

    def record_rejections(self, rejected: Sequence[RejectionRecord]) -> None:
        """Store rejections of a request that published nothing (counters included)."""
        if not rejected:
            return
        source = rejected[0].source
        with self.engine.begin() as conn:
            conn.execute(
                insert(IngestRejectionRow.__table__),  # type: ignore[arg-type]
                [_rejection_row(r) for r in rejected],
            )
            if source is not None:
                it = IntegratorRow
                conn.execute(
                    update(it)
                    .where(it.name == source)
                    .values(
                        rejected_total=it.rejected_total + sum(r.count for r in rejected),
                        last_seen_at=rejected[0].received_at,
                    )
                )


def _rejection_row(r: RejectionRecord) -> dict[str, Any]:
    return {
        "source": r.source,
        "received_at": r.received_at,
        "http_status": r.http_status,
        "reason": r.reason[:64],
        "resource_type": (r.resource_type or None) and str(r.resource_type)[:64],
        "resource_id": (r.resource_id or None) and str(r.resource_id)[:128],
        "expression": r.expression[:512] if r.expression else None,
        "diagnostics": r.diagnostics,
        "operation_outcome": r.operation_outcome,
    }
