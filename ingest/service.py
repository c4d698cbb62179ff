"""The gateway's core, independent of HTTP: dedupe, publish, record, count.

Both `parcours ingest serve` (behind FastAPI) and `parcours ingest push --direct` go through
`IngestService.ingest`, so a file pushed directly gets the same validation, keys, headers and
idempotency as one pushed over HTTP.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine

from ingest.bundle import patient_key
from ingest.dedupe import DedupeKey, IngestStore, Published, RejectionRecord, VersionBusy
from ingest.entries import Item, if_match_issue, refuse_unusable_patient
from ingest.metrics import IngestMetrics
from ingest.outcome import (
    MAX_ISSUES,
    BrokerUnavailable,
    Issue,
    Rejection,
    busy_rejection,
    operation_outcome,
    safe_text,
)
from ingest.ownership import Claim, OwnershipStore, claims_of
from ingest.publish import RECORD_ERRORS, Ack, Message, Publisher
from parcours.identity import TopicIdentityError

log = logging.getLogger(__name__)

# How a 403 names what the integrator may not write.
WHAT = {
    "patient": "This patient",
    "resource": "This resource",
    "system": "This identifier system",
    "owner": "This integrator's data",
}
# A request that met another one publishing the same version retries after this (seconds).
BUSY_RETRY_AFTER_S = 1


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
    """The HTTP status of a refused atomic Bundle: 403 if an entry writes what the integrator
    may not, 409 if one gives other content for a version already received, 412 if one's
    If-Match names another version than its resource's, 413 if one is too large, 400 if one
    is malformed, else 422."""
    statuses = {i.status for i in items}
    for status in (403, 409, 412, 413, 400):
        if status in statuses:
            return status
    return 422


def conflicting(item: Item, stored: str | None) -> bool:
    """True when `item` gives other content for an integrator's version already published
    with `stored` as its digest. A version stored without digest (an `h:` one, or one stored
    before digests were kept) conflicts with nothing."""
    return bool(item.digest) and stored is not None and stored != item.digest


def split_stored(
    items: Sequence[Item],
    positions: Sequence[int],
    stored: Mapping[DedupeKey, str | None],
    results: dict[int, EntryResult],
) -> tuple[list[int], list[int]]:
    """Of the items at `positions`: those not published yet, and those that give other content
    for a version published before (`conflicting`). The others are duplicates, answered 200
    in `results`."""
    new: list[int] = []
    conflicts: list[int] = []
    for pos in positions:
        key = items[pos].dedupe_key
        if key not in stored:
            new.append(pos)
        elif conflicting(items[pos], stored[key]):
            conflicts.append(pos)
        else:
            results[pos] = EntryResult(items[pos], 200)
    return new, conflicts


def version_conflict(item: Item) -> None:
    """Refuse (409) an item that gives other content for a version already received: FHIR's
    answer to a version conflict that no If-Match header asked about (a 412 would say that a
    precondition of the request failed)."""
    version = item.version.removeprefix("v:")
    what = f"{item.resource_type}/{item.resource_id}"
    item.reject(
        409,
        "version-conflict",
        [
            Issue(
                "conflict",
                f"La version {version!r} de {what} a déjà été reçue avec un autre contenu ; "
                "ce contenu n'a pas été publié. Envoyez-le comme une nouvelle version (un autre "
                "meta.versionId), ou sans meta.versionId. / Version "
                f"{version!r} of {what} was already received with other content; this content "
                "was not published. Send it as a new version (another meta.versionId), or "
                "without meta.versionId.",
                (f"{item.root or item.resource_type}.meta.versionId",),
            )
        ],
    )


def guard_key(item: Item) -> DedupeKey:
    """The lock key of a resource whose update an If-Match guards (no version is named `*`)."""
    return (item.resource_type or "", item.resource_id or "", "*")


def precondition_holds(item: Item, current: str | None) -> bool:
    """Whether `item`'s If-Match names `current`, the version its resource is at (`v:3` is
    `W/"3"`; `*` names any version, not none)."""
    if item.if_match == "*":
        return current is not None
    return current is not None and current.startswith("v:") and current[2:] == item.if_match


def precondition_failed(item: Item, current: str | None) -> None:
    """Refuse (412) an item whose If-Match does not name its resource's current version."""
    what = f"{item.resource_type}/{item.resource_id}"
    if current is None:
        now_fr, now_en = "n'a encore aucune version", "has no version yet"
    elif current.startswith("v:"):
        tag = f'W/"{current[2:]}"'
        now_fr, now_en = f"est à la version {tag}", f"is at version {tag}"
    else:
        now_fr = "est à une version sans meta.versionId"
        now_en = "is at a version without meta.versionId"
    message = (
        f"If-Match {item.if_match!r} : {what} {now_fr} ; rien n'a été publié. Relisez la "
        "ressource et fondez la mise à jour sur sa version actuelle. / "
        f"If-Match {item.if_match!r}: {what} {now_en}; nothing was published. Read the "
        "resource again and base the update on its current version."
    )
    item.reject(412, "precondition-failed", [if_match_issue(item, "conflict", message)])


def cap_rejections(rejected: list[RejectionRecord]) -> list[RejectionRecord]:
    """At most `MAX_ISSUES` rejection rows per request, then one that counts the rest."""
    if len(rejected) <= MAX_ISSUES:
        return rejected
    first = rejected[0]
    more = len(rejected) - MAX_ISSUES
    summary = RejectionRecord(
        source=first.source,
        received_at=first.received_at,
        http_status=first.http_status,
        reason="more-rejections",
        resource_type=None,
        resource_id=None,
        expression=None,
        diagnostics=f"… and {more} more refused entries in the same request",
        operation_outcome=operation_outcome(
            [Issue("too-costly", f"{more} more refused entries are not stored", ())]
        ),
        count=more,
    )
    return [*rejected[:MAX_ISSUES], summary]


def dead_letter_key(raw: Any) -> str | None:
    """The patient a refused resource names, when it names one plainly (dead letters of one
    patient then share a partition with its records)."""
    if not isinstance(raw, dict):
        return None
    try:
        key = patient_key(raw)
    except (TypeError, AttributeError, KeyError, ValueError):
        return None
    return safe_text(key, 160) if key else None


def payload_of(item: Item) -> bytes:
    """The bytes of a refused item for the dead-letter topic."""
    if isinstance(item.raw, str):
        return item.raw.encode("utf-8", "replace")
    try:
        return orjson.dumps(item.raw)
    except (TypeError, orjson.JSONEncodeError):
        # Nested beyond what the encoder takes: the reason says so, the payload cannot.
        return b'{"not-serialisable": "nested too deep"}'


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
        expression=safe_text(first.expression[0]) if first and first.expression else None,
        diagnostics=rej.summary,
        operation_outcome=rej.outcome(),
    )


class IngestService:
    """Dedupe → publish (acks=all) → record, for one gateway process."""

    def __init__(
        self,
        engine: Engine,
        publisher: Publisher,
        metrics: IngestMetrics,
        ownership: bool = True,
        guard: Callable[[bool], None] | None = None,
    ) -> None:
        self.store = IngestStore(engine)
        # Raises TopicIdentityError while the broker's raw topic is not the database's; its
        # argument forces a check now (after the connection to the broker was lost).
        self.guard = guard
        self._verified_epoch = -1
        self.owners = OwnershipStore(engine) if ownership else None
        self.publisher = publisher
        self.metrics = metrics
        # Records the broker acknowledged but SQL did not take (the database failed in
        # between): kept here, answered as duplicates, and written on a later request.
        self._pending: list[tuple[str, datetime, list[Published], int]] = []
        self._pending_keys: dict[DedupeKey, str | None] = {}
        self._pending_lock = threading.Lock()

    def _headers(self, source: str, received_at: datetime, item: Item) -> list[tuple[str, bytes]]:
        return [
            ("source", source.encode()),
            ("received-at", received_at.isoformat().encode()),
            ("resource-type", str(item.resource_type or "").encode()),
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
                "reason": safe_text(rej.summary, 1000),
                "reason-code": rej.reason,
                "http-status": str(rej.status),
                "stage": "ingest",
                "source": source or "",
                "received-at": received_at.isoformat(),
                "resource-type": safe_text(str(rej.resource_type or ""), 64),
            },
        )

    def _dead_letter_rest(self, source: str, received_at: datetime, refused: int) -> None:
        """One dead letter that counts a request's refusals beyond the first `MAX_ISSUES`."""
        more = refused - MAX_ISSUES
        if more <= 0:
            return
        summary = Rejection(
            400,
            "more-rejections",
            [Issue("too-costly", f"… and {more} more refused entries in the same request", ())],
        )
        payload = orjson.dumps({"refused": refused, "dead-lettered": MAX_ISSUES, "more": more})
        self._dead_letter(source, received_at, source, payload, summary)

    def reject(
        self, source: str | None, received_at: datetime, rej: Rejection, payload: bytes
    ) -> None:
        """Record a refused request: SQL row, dead letter (raw payload + reason), counters.
        Refusals that are not about content (`rej.record` false) are only counted."""
        self.metrics.rejections.labels(source or "unknown", rej.reason).inc()
        if source is not None and rej.record:
            # Anonymous requests are neither stored nor dead-lettered: anyone could flood them.
            self._dead_letter(source, received_at, source, payload, rej)
            try:
                self.store.record_rejections([rejection_record(source, received_at, rej)])
            except Exception as exc:
                log.warning("could not store a rejection: %s", type(exc).__name__)

    def check_ownership(
        self,
        source: str,
        items: Sequence[Item],
        positions: list[int],
        atomic: bool,
        unclaimed: Sequence[int] = (),
    ) -> list[int]:
        """Refuse (403) each item at `positions` that writes a patient, a resource or an
        identifier system that `source` may not write; return their positions. Then the
        patients and resources nobody owns are claimed for `source`, except by the items at
        `unclaimed` (to be refused for another reason), and not at all when the request is
        all-or-nothing and something was or will be refused (then nothing will be published)."""
        if self.owners is None:
            return []
        needs: dict[int, list[tuple[Claim, str]]] = {}
        for pos in positions:
            item = items[pos]
            if item.valid and item.resource is not None:
                root = item.root or item.resource_type or "Resource"
                needs[pos] = list(claims_of(item.resource, root))
        wanted = {claim for found in needs.values() for claim, _ in found}
        if not wanted:
            return []
        refused = self._refuse(source, items, needs, self.owners.forbidden(source, wanted))
        if (refused or unclaimed) and atomic:
            return refused
        kept = {
            claim
            for pos, found in needs.items()
            if pos not in refused and pos not in unclaimed
            for claim, _ in found
        }
        lost = self.owners.claim(source, kept)
        if lost:
            refused += self._refuse(
                source, items, {p: f for p, f in needs.items() if p not in refused}, lost
            )
        return refused

    @staticmethod
    def _refuse(
        source: str,
        items: Sequence[Item],
        needs: dict[int, list[tuple[Claim, str]]],
        denied: dict[Claim, str],
    ) -> list[int]:
        refused = []
        for pos, found in needs.items():
            issues = [
                Issue(
                    "forbidden",
                    f"{WHAT[claim[0]]} belongs to another integrator; an admin can grant access "
                    f"(parcours ingest grant {source} --{claim[0]} …)",
                    (where,),
                )
                for claim, where in found
                if claim in denied
            ]
            if issues:
                items[pos].reject(403, "forbidden", issues)
                refused.append(pos)
        return refused

    def _record_rejected(
        self,
        source: str,
        received_at: datetime,
        items: Sequence[Item],
        positions: list[int],
        earlier: int = 0,
    ) -> tuple[dict[int, EntryResult], list[RejectionRecord]]:
        """Results, rejection rows and dead letters of the invalid items at `positions`; the
        request already refused `earlier` items. Only the first `MAX_ISSUES` refusals of a
        request are dead-lettered (see `_dead_letter_rest`)."""
        results: dict[int, EntryResult] = {}
        rejected: list[RejectionRecord] = []
        for n, pos in enumerate(positions):
            item = items[pos]
            rej = Rejection(
                item.status, item.reason, item.issues, item.resource_type, item.resource_id
            )
            results[pos] = EntryResult(item, item.status, rej.outcome())
            rejected.append(rejection_record(source, received_at, rej))
            if earlier + n < MAX_ISSUES:
                key = item.key or dead_letter_key(item.raw) or source
                self._dead_letter(source, received_at, key, payload_of(item), rej)
            self.metrics.rejections.labels(source, item.reason).inc()
            self.metrics.resources.labels(source, "rejected", item.resource_type or "").inc()
        return results, rejected

    def _broker_ready(self, rejected: list[RejectionRecord]) -> None:
        """Raise BrokerUnavailable unless the broker answers now and its raw topic is the one
        the dedupe log speaks for. The topic is verified again whenever the connection to the
        broker was lost or its cluster id changed: a broker restarted empty must not be
        published to, nor answered "duplicate" for, before that check."""
        try:
            self.publisher.check()
            if self.guard is not None:
                epoch = self.publisher.epoch
                try:
                    self.guard(epoch != self._verified_epoch)
                except TopicIdentityError as exc:
                    raise BrokerUnavailable(str(exc)) from exc
                self._verified_epoch = epoch
        except BrokerUnavailable:
            self.metrics.broker_up.set(0)
            if rejected:
                self.store.record_rejections(cap_rejections(rejected))
            raise

    def _seen(self, keys: list[DedupeKey]) -> dict[DedupeKey, str | None]:
        """Keys already published, with their digests: in SQL, or acknowledged and not yet
        written there."""
        self._flush_pending()
        return self._stored(keys)

    def _stored(
        self, keys: list[DedupeKey], conn: Connection | None = None
    ) -> dict[DedupeKey, str | None]:
        found = self.store.seen(keys, conn) if keys else {}
        with self._pending_lock:
            found.update({k: self._pending_keys[k] for k in keys if k in self._pending_keys})
        return found

    def _flush_pending(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, []
        for n, entry in enumerate(pending):
            try:
                self.store.record(entry[0], entry[1], entry[2], entry[3], [])
            except Exception as exc:
                log.warning("the ingest log is still unavailable: %s", type(exc).__name__)
                with self._pending_lock:
                    self._pending[:0] = pending[n:]
                return
            with self._pending_lock:
                for p in entry[2]:
                    self._pending_keys.pop(p.key, None)

    def _record_published(
        self,
        source: str,
        received_at: datetime,
        published: list[Published],
        duplicates: int,
        rejected: list[RejectionRecord],
        conn: Connection | None = None,
    ) -> None:
        """Write what was published (on `conn`, which holds its versions, when given); never
        raises, since the broker already acknowledged it and the answer must be a 2xx. What
        SQL does not take is kept and retried."""
        try:
            self.store.record(source, received_at, published, duplicates, rejected, conn=conn)
        except Exception as exc:
            log.error(
                "could not write %d published keys to the ingest log (%s); kept in memory "
                "and retried with the next request",
                len(published),
                type(exc).__name__,
            )
            if published:
                with self._pending_lock:
                    self._pending.append((source, received_at, published, duplicates))
                    self._pending_keys.update({p.key: p.digest for p in published})

    @staticmethod
    def _refuse_if_atomic(items: Sequence[Item], atomic: bool) -> None:
        """Raise the Rejection of an all-or-nothing request that holds an invalid item."""
        invalid = [i for i in items if not i.valid]
        if atomic and invalid:
            issues = [issue for i in invalid for issue in i.issues]
            status = merge_status(invalid)
            # The reason of the first entry refused with the status the request gets.
            first = next((i for i in invalid if i.status == status), invalid[0])
            raise Rejection(
                status,
                first.reason,
                issues,
                resource_type=first.resource_type if len(items) == 1 else "Bundle",
                resource_id=first.resource_id if len(items) == 1 else None,
            )

    def ingest(
        self, source: str, received_at: datetime, items: Sequence[Item], atomic: bool
    ) -> IngestResult:
        """Publish the valid, new items and say what happened to each.

        Everything that can fail (validation, the broker probe and topic check, the dedupe
        lookup, ownership, version conflicts) runs before the first record is sent; after the
        broker acknowledged, nothing can turn the answer into an error. Atomic requests
        (transaction, message, single resource) raise Rejection if any item is invalid,
        forbidden or conflicts with a version already received, and BrokerUnavailable unless
        every new item was acknowledged. Other requests get per-item statuses; they raise
        BrokerUnavailable only if nothing got through.
        """
        for item in items:
            refuse_unusable_patient(item)
        self._refuse_if_atomic(items, atomic)
        results, rejected = self._record_rejected(
            source, received_at, items, [p for p, i in enumerate(items) if not i.valid]
        )

        # The same version twice in one request is published once (prepare_bundle and
        # parse_ndjson refused a second content for it).
        first_pos: dict[DedupeKey, int] = {}
        candidates: list[int] = []
        for pos, item in enumerate(items):
            if not item.valid:
                continue
            if item.dedupe_key in first_pos:
                results[pos] = EntryResult(item, 200)
            else:
                first_pos[item.dedupe_key] = pos
                candidates.append(pos)
        if candidates:
            # Before the dedupe log answers "duplicate" and before anything is published.
            self._broker_ready(rejected)
        stored = self._seen([items[p].dedupe_key for p in candidates])
        to_publish, conflicts = split_stored(items, candidates, stored, results)
        # A duplicate changes nothing, but answering it 200 (or 409) when the resource is
        # another integrator's would tell the sender what that integrator holds: it needs
        # ownership too, and a 403 comes first.
        forbidden = self.check_ownership(source, items, candidates, atomic, unclaimed=conflicts)
        for pos in conflicts:
            if pos not in forbidden:
                version_conflict(items[pos])
        refused = sorted({*forbidden, *conflicts})
        if refused:
            self._refuse_more(source, received_at, items, refused, results, rejected, atomic)
            dropped = set(refused)
            to_publish = [p for p in to_publish if p not in dropped]

        # Versions the integrator named are held from the last look at the log to their
        # record, so that two requests never both publish one version with two contents; the
        # resources an If-Match guards, so that two updates of the same version never both
        # pass.
        versioned = [items[p].dedupe_key for p in to_publish if items[p].digest]
        guarded = [guard_key(items[p]) for p in to_publish if items[p].if_match is not None]
        try:
            with self.store.versions_locked(versioned + guarded) as conn:
                if versioned or guarded:
                    to_publish = self._recheck(
                        source, received_at, items, to_publish, results, rejected, atomic, conn
                    )
                return self._publish(
                    source, received_at, items, to_publish, results, rejected, atomic, conn
                )
        except VersionBusy as exc:
            log.info("versions busy: %s", exc)
            raise busy_rejection(
                "version-busy",
                "Une autre requête publie en ce moment la même version d'une de ces "
                "ressources (même meta.versionId) ; rien n'a été publié, renvoyez la "
                "requête. / Another request is publishing the same version of one of "
                "these resources (same meta.versionId); nothing was published, retry.",
                BUSY_RETRY_AFTER_S,
            ) from exc

    def _recheck(
        self,
        source: str,
        received_at: datetime,
        items: Sequence[Item],
        to_publish: list[int],
        results: dict[int, EntryResult],
        rejected: list[RejectionRecord],
        atomic: bool,
        conn: Connection | None,
    ) -> list[int]:
        """What is still to publish once its versions and guarded resources are held: another
        request may have published one of the versions since the first look (a duplicate, or
        a conflict), and each If-Match is compared with the version its resource is at (412
        for the others)."""
        keys = [items[p].dedupe_key for p in to_publish if items[p].digest]
        stored = self._stored(keys, conn) if keys else {}
        if stored:
            to_publish, late = split_stored(items, to_publish, stored, results)
            for pos in late:
                version_conflict(items[pos])
            if late:
                self._refuse_more(source, received_at, items, late, results, rejected, atomic)
        guarded = [p for p in to_publish if items[p].if_match is not None]
        if not guarded:
            return to_publish
        current = self.store.current_versions((items[p].dedupe_key[:2] for p in guarded), conn)
        at = {p: current.get(items[p].dedupe_key[:2]) for p in guarded}
        failed = [p for p in guarded if not precondition_holds(items[p], at[p])]
        if not failed:
            return to_publish
        for pos in failed:
            precondition_failed(items[pos], at[pos])
        self._refuse_more(source, received_at, items, failed, results, rejected, atomic)
        dropped = set(failed)
        return [p for p in to_publish if p not in dropped]

    def _refuse_more(
        self,
        source: str,
        received_at: datetime,
        items: Sequence[Item],
        refused: list[int],
        results: dict[int, EntryResult],
        rejected: list[RejectionRecord],
        atomic: bool,
    ) -> None:
        """Record the items at `refused`, found wanting after the first checks, with the rest
        (an atomic request is refused whole instead)."""
        self._refuse_if_atomic(items, atomic)
        more_results, more_rejected = self._record_rejected(
            source, received_at, items, refused, earlier=len(rejected)
        )
        results.update(more_results)
        rejected += more_rejected

    def _publish(
        self,
        source: str,
        received_at: datetime,
        items: Sequence[Item],
        to_publish: list[int],
        results: dict[int, EntryResult],
        rejected: list[RejectionRecord],
        atomic: bool,
        conn: Connection | None,
    ) -> IngestResult:
        """Publish the items at `to_publish`, record them (on `conn` when the versions are
        held through it) and give every item's result."""
        self._dead_letter_rest(source, received_at, len(rejected))
        rejected = cap_rejections(rejected)
        acks: list[Ack | Exception] = []
        if to_publish:
            started = time.perf_counter()
            messages = [
                Message(
                    key=items[p].key.encode(),
                    value=items[p].value,
                    headers=self._headers(source, received_at, items[p]),
                )
                for p in to_publish
            ]
            try:
                acks = self.publisher.publish(messages)
            except Exception as exc:
                # The client library failed in an unforeseen way: no record counts as
                # acknowledged, so the answer is a 503 and the retry sends them again.
                log.warning("publishing failed: %s", type(exc).__name__)
                self.publisher.reset()
                acks = [exc] * len(messages)
            self.metrics.publish_seconds.observe(time.perf_counter() - started)
        # From here on, records may be on the topic: nothing below raises but BrokerUnavailable
        # for records the broker did not acknowledge (their retry publishes only those).
        published: list[Published] = []
        failed: list[int] = []
        too_large: dict[int, str] = {}
        for pos, ack in zip(to_publish, acks, strict=True):
            item = items[pos]
            if isinstance(ack, Ack):
                published.append(
                    Published(
                        item.dedupe_key, item.key, ack.partition, ack.offset, item.digest or None
                    )
                )
                results[pos] = EntryResult(item, 201)
            elif isinstance(ack, RECORD_ERRORS):
                # The broker refused this record for what it is (its size): retrying cannot
                # help, so it is a 413 for this entry, not a 503.
                too_large[pos] = f"The broker refused the record: {ack}"
                results[pos] = EntryResult(
                    item,
                    413,
                    operation_outcome([Issue("too-costly", too_large[pos], ())], "too-large"),
                )
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
        self._record_published(source, received_at, published, duplicates, rejected, conn)
        self.metrics.broker_up.set(0 if failed else 1)
        tally = Counter(
            ("accepted" if r.status == 201 else "duplicate", r.item.resource_type or "")
            for r in results.values()
            if r.status in (200, 201)
        )
        for (outcome, rtype), n in tally.items():
            self.metrics.resources.labels(source, outcome, rtype).inc(n)
        if too_large and atomic and not failed:
            first = next(iter(too_large))
            raise Rejection(
                413,
                "too-large",
                [Issue("too-costly", too_large[first], ())],
                resource_type=items[first].resource_type,
            )
        if failed and (atomic or not published):
            raise BrokerUnavailable(
                f"Kafka acknowledged {len(published)} of {len(to_publish)} records; "
                "retry the same request (acknowledged records will be answered as duplicates)"
            )
        return IngestResult([results[p] for p in range(len(items))])
