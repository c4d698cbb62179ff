"""The gateway's SQL memory: what was published (idempotency), what was refused, and counters.

The dedupe memory is the `ingest_log` table, so it survives a restart and is shared by every
gateway process. The order is check → publish → record: a resource is recorded only after the
broker acknowledged it, so a crash in between can at worst publish it twice (downstream is
idempotent), never lose it. Each `v:` version (the integrator's `meta.versionId`) is stored with
the digest of what it holds, so that a resend of that version with other content is told apart
from a retry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update

from parcours.db import upsert
from parcours.db.bulk import keyed
from parcours.db.ingest_models import IngestLogRow, IngestRejectionRow, IntegratorRow

DedupeKey = tuple[str, str, str]
# Keep IN lists short enough for every driver and planner.
CHUNK = 500


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

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def seen(self, keys: Iterable[DedupeKey]) -> dict[DedupeKey, str | None]:
        """The keys already published (by any gateway process, before or after a restart),
        each with the digest of the content published under it (None for `h:` versions and
        for rows stored before digests were kept)."""
        wanted = set(keys)
        found: dict[DedupeKey, str | None] = {}
        t = IngestLogRow.__table__
        cols = (t.c.resource_type, t.c.resource_id, t.c.version, t.c.digest)
        with self.engine.connect() as conn:
            # By resource (all its versions), then the versions asked for.
            for where in keyed(t, ("resource_type", "resource_id"), {k[:2] for k in wanted}):
                for r in conn.execute(select(*cols).where(where)):
                    if (key := (r[0], r[1], r[2])) in wanted:
                        found[key] = r[3]
        return found

    def record(
        self,
        source: str,
        received_at: datetime,
        published: Sequence[Published],
        duplicates: int,
        rejected: Sequence[RejectionRecord],
    ) -> None:
        """Store published keys (with their digests) and rejections and bump the source's
        counters, in one transaction."""
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
        with self.engine.begin() as conn:
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
