"""The gateway's core, independent of HTTP: dedupe, publish, record, count.

Both `parcours ingest serve` (behind FastAPI) and `parcours ingest push --direct` go through
`IngestService.ingest`, so a file pushed directly gets the same validation, keys, headers and
idempotency as one pushed over HTTP.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from ingest.bundle import patient_key
from ingest.dedupe import IngestStore, Published, RejectionRecord
from ingest.entries import Item
from ingest.metrics import IngestMetrics
from ingest.outcome import BrokerUnavailable, Issue, Rejection, operation_outcome
from ingest.publish import Ack, Message, Publisher

log = logging.getLogger(__name__)


@dataclass
class EntryResult:
    """What happened to one item: 201 published, 200 duplicate, 4xx refused, 503 not delivered."""

    item: Item
    status: int
    outcome: dict[str, Any] | None = None


@dataclass
class IngestResult:
    """Per-item results of one request, in request order."""

    entries: list[EntryResult] = field(default_factory=list)

    def count(self, status: int) -> int:
        """How many items ended with `status`."""
        return sum(1 for e in self.entries if e.status == status)


def merge_status(items: Sequence[Item]) -> int:
    """The HTTP status of a refused atomic Bundle: 400 if any entry is malformed, else 422."""
    return 400 if any(i.status == 400 for i in items) else 422


def rejection_record(source: str | None, received_at: datetime, rej: Rejection) -> RejectionRecord:
    """A Rejection as stored in `ingest_rejections`."""
    first = rej.issues[0] if rej.issues else None
    return RejectionRecord(
        source=source,
        received_at=received_at,
        http_status=rej.status,
        reason=rej.reason,
        resource_type=rej.resource_type,
        resource_id=rej.resource_id,
        expression=first.expression[0] if first and first.expression else None,
        diagnostics=rej.summary,
        operation_outcome=rej.outcome(),
    )


class IngestService:
    """Dedupe → publish (acks=all) → record, for one gateway process."""

    def __init__(self, engine: Engine, publisher: Publisher, metrics: IngestMetrics) -> None:
        self.store = IngestStore(engine)
        self.publisher = publisher
        self.metrics = metrics

    def _headers(self, source: str, received_at: datetime, item: Item) -> list[tuple[str, bytes]]:
        return [
            ("source", source.encode()),
            ("received-at", received_at.isoformat().encode()),
            ("resource-type", (item.resource_type or "").encode()),
            ("version", item.version.encode()),
        ]

    def _dead_letter(
        self,
        source: str | None,
        received_at: datetime,
        key: str | None,
        payload: bytes,
        rej: Rejection,
    ) -> None:
        self.publisher.dead_letter(
            key.encode() if key else None,
            payload,
            {
                "reason": rej.summary,
                "reason-code": rej.reason,
                "http-status": str(rej.status),
                "stage": "ingest",
                "source": source or "",
                "received-at": received_at.isoformat(),
                "resource-type": rej.resource_type or "",
            },
        )

    def reject(
        self, source: str | None, received_at: datetime, rej: Rejection, payload: bytes
    ) -> None:
        """Record a refused request: SQL row, dead letter (raw payload + reason), counters."""
        self.metrics.rejections.labels(source or "unknown", rej.reason).inc()
        if source is not None:
            # Anonymous requests are neither stored nor dead-lettered: anyone could flood them.
            self._dead_letter(source, received_at, source, payload, rej)
            try:
                self.store.record_rejections([rejection_record(source, received_at, rej)])
            except Exception:
                log.exception("could not store a rejection (%s)", rej.summary)

    def ingest(
        self, source: str, received_at: datetime, items: Sequence[Item], atomic: bool
    ) -> IngestResult:
        """Publish the valid, new items and say what happened to each.

        Atomic requests (transaction, message, single resource) raise Rejection if any item is
        invalid, and BrokerUnavailable unless every new item was acknowledged. Other requests
        get per-item statuses; they raise BrokerUnavailable only if nothing got through.
        """
        invalid = [i for i in items if not i.valid]
        if atomic and invalid:
            issues = [issue for i in invalid for issue in i.issues]
            first = invalid[0]
            raise Rejection(
                merge_status(invalid),
                first.reason,
                issues,
                resource_type=first.resource_type if len(items) == 1 else "Bundle",
                resource_id=first.resource_id if len(items) == 1 else None,
            )
        results: dict[int, EntryResult] = {}
        rejected: list[RejectionRecord] = []
        for pos, item in enumerate(items):
            if not item.valid:
                rej = Rejection(
                    item.status, item.reason, item.issues, item.resource_type, item.resource_id
                )
                results[pos] = EntryResult(item, item.status, rej.outcome())
                rejected.append(rejection_record(source, received_at, rej))
                payload = (
                    json.dumps(item.raw).encode()
                    if not isinstance(item.raw, str)
                    else item.raw.encode()
                )
                key = patient_key(item.raw) if isinstance(item.raw, dict) else None
                self._dead_letter(source, received_at, key or source, payload, rej)
                self.metrics.rejections.labels(source, item.reason).inc()
                self.metrics.resources.labels(source, "rejected", item.resource_type or "").inc()

        # The same version twice in one request is published once.
        first_pos: dict[tuple[str, str, str], int] = {}
        candidates: list[int] = []
        for pos, item in enumerate(items):
            if not item.valid:
                continue
            if item.dedupe_key in first_pos:
                results[pos] = EntryResult(item, 200)
            else:
                first_pos[item.dedupe_key] = pos
                candidates.append(pos)
        seen = self.store.seen(items[p].dedupe_key for p in candidates) if candidates else set()
        to_publish = [p for p in candidates if items[p].dedupe_key not in seen]
        for pos in candidates:
            if items[pos].dedupe_key in seen:
                results[pos] = EntryResult(items[pos], 200)

        acks: list[Ack | Exception] = []
        if to_publish:
            try:
                self.publisher.check()
            except BrokerUnavailable:
                self.metrics.broker_up.set(0)
                if rejected:
                    self.store.record_rejections(rejected)
                raise
            started = time.perf_counter()
            acks = self.publisher.publish(
                [
                    Message(
                        key=items[p].key.encode(),
                        value=items[p].value,
                        headers=self._headers(source, received_at, items[p]),
                    )
                    for p in to_publish
                ]
            )
            self.metrics.publish_seconds.observe(time.perf_counter() - started)
        published: list[Published] = []
        failed: list[int] = []
        for pos, ack in zip(to_publish, acks, strict=True):
            item = items[pos]
            if isinstance(ack, Ack):
                published.append(Published(item.dedupe_key, item.key, ack.partition, ack.offset))
                results[pos] = EntryResult(item, 201)
            else:
                failed.append(pos)
                results[pos] = EntryResult(
                    item,
                    503,
                    operation_outcome(
                        [Issue("transient", f"Kafka did not acknowledge: {ack}", ())],
                        "broker-unavailable",
                    ),
                )
        duplicates = sum(1 for r in results.values() if r.status == 200)
        # Acknowledged records are remembered even when others failed, so a retry of the same
        # request publishes only what is missing.
        self.store.record(source, received_at, published, duplicates, rejected)
        self.metrics.broker_up.set(0 if failed else 1)
        tally = Counter(
            ("accepted" if r.status == 201 else "duplicate", r.item.resource_type or "")
            for r in results.values()
            if r.status in (200, 201)
        )
        for (outcome, rtype), n in tally.items():
            self.metrics.resources.labels(source, outcome, rtype).inc(n)
        if failed and (atomic or not published):
            raise BrokerUnavailable(
                f"Kafka acknowledged {len(published)} of {len(to_publish)} records; "
                "retry the same request (acknowledged records will be answered as duplicates)"
            )
        return IngestResult([results[p] for p in range(len(items))])
