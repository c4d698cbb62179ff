"""`parcours ingest mllp`: an asyncio MLLP listener for HL7 v2.5 ADT (IHE PAM, PAM.fr).

One ACK per message, in order, on the connection it came from:

- AA once every FHIR resource the message changes (Patient, Encounter, Location) has been
  acknowledged by Kafka (acks=all) on the raw topic, keyed by patient like the HTTP gateway's;
  a repeated message changes nothing and is answered AA at once.
- AE, with an ERR segment naming the segment and field, when the message cannot be read or
  misses what the mapping needs (and when Kafka did not acknowledge: the sender retries).
- AR for a message type, trigger or version the listener does not take, for a sending
  facility (MSH-4) no integrator is allowed to send (`PARCOURS_MLLP_SENDERS`), and for a
  patient that belongs to another integrator (`ingest.ownership`, as the gateway's 403).
- AE on MRG-1 for an A40 that merges a patient into one already merged into it, directly or
  through others (the gateway's `merge-loop`: merges from A40s and from FHIR feeds are recorded
  in the same table, the gateway's identifier index).

The connection stays open after a NACK. Bytes outside an MLLP block are skipped; a message larger
than the limit is answered AE and skipped to its end; a sender that takes longer than the frame
timeout to finish a message, or stays silent past the idle timeout, is disconnected. Nothing a
client sends stops the listener or delays other connections beyond the shared writer. When every
connection is taken, a new one closes the connection idle longest (never one reading a message or
owing ACKs), so that idle connections cannot lock real senders out.

Messages are parsed in worker processes (`PARCOURS_MLLP_PARSE_PROCESSES`, in chunks: at once
while a worker is free, else what arrived meanwhile; 0 parses here), then go, in the order they
were read, in batches (the messages parsed so far, from the oldest on) through two stages, each
in its own thread, so that a batch is prepared while the previous one is finished:

1. prepare: owners checked, the stays' histories updated (pure `hl7_map.apply_adt`) and the
   resulting resources handed to the Kafka producer; the in-memory state moves on at once;
2. finish: Kafka's acks awaited, then the histories, versions, identifiers, ingest log and
   counters written to SQL in one transaction, then each message answered.

When a finish fails, its batch and the one prepared on top of it are answered AE, their versions
are never reused, and the state is read again from SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from kafka.errors import KafkaError
from sqlalchemy import Engine

from ingest.dedupe import IngestStore, Published, RejectionRecord
from ingest.entries import canonical_bytes, content_digest
from ingest.hl7_map import (
    ERR_INTERNAL,
    ERR_LOCKED,
    ERR_UNKNOWN_KEY,
    AdtMessage,
    EncounterState,
    Hl7Rejection,
    MessageHeader,
    ack_message,
    apply_adt,
    encounter_resource,
    evolve,
    location_ids,
    location_resources,
    patient_resource,
    read_header,
    withdrawn_encounter,
)
from ingest.hl7_parsing import ParseWorker, ParseWorkerGone, parse_one, results_of
from ingest.hl7_store import CountKey, Hl7Store, ResourceVersion
from ingest.outcome import BrokerUnavailable, Issue, Rejection
from ingest.ownership import MAX_VALUE, Claim, OwnershipStore
from ingest.publish import RECORD_ERRORS, Ack, Message, Publisher, collect_acks
from ingest.references import IdentifierIndex, merged_into
from parcours.fhir_refs import merge_loops
from parcours.runtime import collect_seldom
from parcours.settings import Settings

log = logging.getLogger(__name__)

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
END = FS + CR
READ_CHUNK = 65536
# Bytes of an oversized message kept to read its MSH for the ACK.
HEADER_KEEP = 4096
MAX_BATCH = 500
MAX_IN_FLIGHT = 64
# Queued messages beyond which refusals are answered without being recorded.
MAX_QUEUED = 20_000
UNKNOWN_SENDER = "(inconnu)"


# --- Framing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One MLLP block: its payload, or the start of a payload that was too large."""

    payload: bytes
    oversized: bool = False


class FramingTimeout(Exception):
    """The sender was idle too long, or too slow to finish a message."""


class MllpReader:
    """Reads MLLP blocks (`<VT> payload <FS><CR>`) from a stream, with limits.

    Bytes before a `<VT>` are skipped. A `<VT>` inside a block restarts the block (the sender
    gave up the previous one). A block longer than `max_bytes` is returned as `oversized` with its
    first bytes once its end arrives; its content is never buffered whole.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        max_bytes: int,
        frame_timeout_s: float,
        idle_timeout_s: float,
    ) -> None:
        self.reader = reader
        self.max_bytes = max_bytes
        self.frame_timeout_s = frame_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.buffer = bytearray()
        self.skipped = 0
        # Between the start of a block and its end: the sender is in the middle of a message.
        self.in_frame = False

    async def _more(self, timeout: float) -> bool:
        try:
            # asyncio.timeout, not wait_for: no task per read.
            async with asyncio.timeout(max(timeout, 0.001)):
                chunk = await self.reader.read(READ_CHUNK)
        except TimeoutError as exc:
            raise FramingTimeout("timeout") from exc
        if not chunk:
            return False
        self.buffer += chunk
        return True

    async def next_frame(self) -> Frame | None:
        """The next block, or None at the end of the stream."""
        self.in_frame = False
        loop = asyncio.get_running_loop()
        # Wait for the start of a block.
        while True:
            start = self.buffer.find(VT)
            if start >= 0:
                self.skipped += start
                del self.buffer[:start]
                break
            self.skipped += len(self.buffer)
            self.buffer.clear()
            if not await self._more(self.idle_timeout_s):
                return None
        self.in_frame = True
        deadline = loop.time() + self.frame_timeout_s
        head = b""
        oversized = False
        scanned = 1
        while True:
            end = self.buffer.find(END, scanned)
            restart = self.buffer.find(VT, 1, end if end >= 0 else len(self.buffer))
            if restart > 0 and not oversized:
                self.skipped += restart
                del self.buffer[:restart]
                scanned = 1
                continue
            if end >= 0:
                if oversized:
                    del self.buffer[: end + 2]
                    return Frame(head, oversized=True)
                if end - 1 > self.max_bytes:
                    head = bytes(self.buffer[1 : 1 + HEADER_KEEP])
                    del self.buffer[: end + 2]
                    return Frame(head, oversized=True)
                payload = bytes(self.buffer[1:end])
                del self.buffer[: end + 2]
                return Frame(payload)
            if len(self.buffer) > self.max_bytes + 1:
                if not oversized:
                    head = bytes(self.buffer[1 : 1 + HEADER_KEEP])
                    oversized = True
                # Keep the last byte: it may be the FS of a FS CR split across reads.
                del self.buffer[: len(self.buffer) - 1]
            scanned = max(1, len(self.buffer) - 1)
            if not await self._more(deadline - loop.time()):
                return None


def frame(payload: bytes) -> bytes:
    """`payload` wrapped in an MLLP block."""
    return VT + payload + END


# --- Processing ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How a message is answered."""

    code: str
    rejection: Hl7Rejection | None = None
    text: str = ""


@dataclass
class Pending:
    """A message waiting for the writer thread, with the future its connection awaits."""

    msg: AdtMessage | None
    integrator: str
    header: MessageHeader
    payload: bytes
    received_at: datetime
    future: asyncio.Future[Outcome] | None
    rejection: Hl7Rejection | None = None
    parsed: asyncio.Future[AdtMessage | Hl7Rejection] | None = None
    # The Kafka headers every record of this message carries (source, received-at, hl7).
    record_headers: tuple[tuple[str, bytes], ...] | None = None


@dataclass
class _Batch:
    """What processing a batch produced, before it is published and stored."""

    # (record, dedupe key, integrator, content digest as the gateway computes it)
    records: list[tuple[Message, tuple[str, str, str], str, str]] = field(default_factory=list)
    encounters: dict[str, EncounterState] = field(default_factory=dict)
    resources: dict[str, ResourceVersion] = field(default_factory=dict)
    # (system, value, patient id, integrator)
    identifiers: list[tuple[str, str, str, str]] = field(default_factory=list)
    places: set[Any] = field(default_factory=set)
    # A40 merges: merged patient id → (surviving patient id, integrator)
    merges: dict[str, tuple[str, str]] = field(default_factory=dict)
    outcomes: dict[int, Outcome] = field(default_factory=dict)


@dataclass
class Prepared:
    """A batch between `AdtProcessor.prepare` and `AdtProcessor.finish`."""

    pendings: list[Pending]
    now: datetime
    outcomes: list[Outcome] = field(default_factory=list)
    good: list[int] = field(default_factory=list)
    batch: _Batch | None = None
    # Per record, what the producer returned for it (a future, or the error that stopped it).
    sent: list[Any] = field(default_factory=list)
    producer: Any = None
    failed: bool = False


def _digest(resource: dict[str, Any]) -> str:
    body = {k: v for k, v in resource.items() if k != "meta"}
    return hashlib.sha256(canonical_bytes(body)).hexdigest()


class AdtProcessor:
    """Applies ADT messages to the stays, publishes the resources, stores the result.

    Used from one thread at a time (the listener's writer thread): its caches are the stored
    state plus what this process committed since.
    """

    def __init__(
        self,
        engine: Engine,
        publisher: Publisher,
        cache_size: int = 200_000,
        publish_locations: bool = True,
        ownership: bool = True,
    ) -> None:
        self.store = Hl7Store(engine)
        # The HTTP gateway's rule: a patient belongs to the integrator that first wrote it.
        self.owners = OwnershipStore(engine) if ownership else None
        # The merges recorded so far, by A40s and by FHIR feeds (`Patient.link` replaced-by).
        self.index = IdentifierIndex(engine)
        self.publish_locations = publish_locations
        self.ingest_store = IngestStore(engine)
        self.publisher = publisher
        self.cache_size = cache_size
        self._encounters: dict[str, EncounterState] = {}
        self._resources: dict[str, ResourceVersion] = {}
        # Places whose Locations are published as they are now, and identifiers already stored:
        # most messages name a known bed of a known patient.
        self._places: set[Any] = set()
        self._identifiers: set[tuple[str, str, str]] = set()
        # Versions tried in a batch that failed are never reused: a record may have reached
        # Kafka even though its ack did not come back.
        self._burnt: dict[str, int] = {}
        # The last prepared batch, which may not be in SQL yet: kept when the caches are cut.
        self._unstored: _Batch | None = None

    # -- caches

    def _load(self, pendings: list[Pending]) -> None:
        enc_ids = {p.msg.visit.encounter_id for p in pendings if p.msg and p.msg.visit}
        missing = [e for e in enc_ids if e not in self._encounters]
        if len(self._encounters) + len(missing) > self.cache_size:
            self._encounters = dict(self._unstored.encounters) if self._unstored else {}
            missing = [e for e in enc_ids if e not in self._encounters]
        if missing:
            self._encounters.update(self.store.encounters(missing))
        for p in pendings:
            if p.msg is not None and p.msg.merged_patient is not None:
                ids = self.store.encounters_of(p.msg.merged_patient.patient_id)
                ids = [e for e in ids if e not in self._encounters]
                self._encounters.update(self.store.encounters(ids))
        keys: set[str] = set()
        for p in pendings:
            if p.msg is None:
                continue
            keys.add(f"Patient/{p.msg.patient.patient_id}")
            if p.msg.merged_patient is not None:
                keys.add(f"Patient/{p.msg.merged_patient.patient_id}")
            place = p.msg.visit.place if p.msg.visit is not None else None
            if self.publish_locations and place is not None and place not in self._places:
                keys.update(f"Location/{r['id']}" for r in location_resources(place))
        missing_keys = [k for k in keys if k not in self._resources]
        if len(self._resources) + len(missing_keys) > self.cache_size:
            self._resources = dict(self._unstored.resources) if self._unstored else {}
            missing_keys = [k for k in keys if k not in self._resources]
        if missing_keys:
            self._resources.update(self.store.resources(missing_keys))

    # -- one message

    def _emit(
        self,
        batch: _Batch,
        resource: dict[str, Any],
        key: str,
        pending: Pending,
    ) -> None:
        rtype, rid = resource["resourceType"], resource["id"]
        version = resource["meta"]["versionId"]
        if pending.record_headers is None:
            pending.record_headers = (
                ("source", pending.integrator.encode()),
                ("received-at", pending.received_at.isoformat().encode()),
                # The message a record comes from: `ADT^A02 <MSH-10>`.
                ("hl7", f"ADT^{pending.header.trigger} {pending.header.control_id}".encode()),
            )
        source, received, origin = pending.record_headers
        headers = [
            source,
            received,
            ("resource-type", rtype.encode()),
            ("version", f"v:{version}".encode()),
            origin,
        ]
        batch.records.append(
            (
                Message(key=key.encode(), value=canonical_bytes(resource), headers=headers),
                (rtype, rid, f"v:{version}"),
                pending.integrator,
                # In the ingest log, so that a FHIR resend of this version with other content
                # gets the gateway's 409 rather than a duplicate's 200.
                content_digest(resource),
            )
        )

    def _versioned(self, batch: _Batch, rkey: str, resource: dict[str, Any]) -> bool:
        """Give `resource` its next version when its content changed; False when unchanged."""
        digest = _digest(resource)
        known = batch.resources.get(rkey) or self._resources.get(rkey)
        if known is not None and known.digest == digest:
            return False
        version = max(known.version if known else 0, self._burnt.get(rkey, 0)) + 1
        resource.setdefault("meta", {})["versionId"] = str(version)
        batch.resources[rkey] = ResourceVersion(version, digest)
        return True

    def _encounter(self, batch: _Batch, enc_id: str) -> EncounterState | None:
        return batch.encounters.get(enc_id) or self._encounters.get(enc_id)

    def _publish_encounter(
        self, batch: _Batch, old: EncounterState | None, new: EncounterState, pending: Pending
    ) -> None:
        """Publish `new` if it differs from `old`; when the stay changed patient, withdraw it from
        the previous one first."""
        if old is not None and old.content() == new.content():
            return
        version = max(
            old.version if old else 0, self._burnt.get(f"Encounter/{new.encounter_id}", 0)
        )
        if old is not None and old.patient_id != new.patient_id:
            version += 1
            gone = withdrawn_encounter(evolve(old, version=version))
            self._emit(batch, gone, old.patient_id, pending)
        version += 1
        new = evolve(new, version=version)
        self._emit(batch, encounter_resource(new), new.patient_id, pending)
        batch.encounters[new.encounter_id] = new

    def _apply(self, batch: _Batch, pending: Pending) -> None:
        msg = pending.msg
        assert msg is not None
        patient = msg.patient
        if msg.merged_patient is not None:
            old_id = msg.merged_patient.patient_id
            for state in [*self._encounters.values(), *batch.encounters.values()]:
                if state.patient_id != old_id:
                    continue
                current = self._encounter(batch, state.encounter_id)
                if current is None or current.patient_id != old_id:
                    continue
                self._publish_encounter(
                    batch, current, replace(current, patient_id=patient.patient_id), pending
                )
            old_patient = patient_resource(msg.merged_patient, 0, replaced_by=patient.patient_id)
            if self._versioned(batch, f"Patient/{old_id}", old_patient):
                self._emit(batch, old_patient, old_id, pending)
            survivor: dict[str, Any] | None = patient_resource(patient, 0, replaces=(old_id,))
            batch.merges[old_id] = (patient.patient_id, pending.integrator)
        else:
            pkey = f"Patient/{patient.patient_id}"
            known = batch.resources.get(pkey) or self._resources.get(pkey)
            # Movements repeat PID; only A08 (and A40) change the patient's record, so a
            # movement does not drop a merge link an earlier A40 added.
            survivor = (
                None if known is not None and msg.trigger != "A08" else patient_resource(patient, 0)
            )
        if survivor is not None and self._versioned(
            batch, f"Patient/{patient.patient_id}", survivor
        ):
            self._emit(batch, survivor, patient.patient_id, pending)
        batch.identifiers.extend(
            (i.system, i.value, patient.patient_id, pending.integrator)
            for i in patient.identifiers
            if i.system and (i.system, i.value, patient.patient_id) not in self._identifiers
        )
        visit = msg.visit
        if visit is None:
            return
        old = self._encounter(batch, visit.encounter_id)
        if old is None and msg.trigger == "A08":
            return  # an update of a stay never admitted here: nothing to say on the pathway
        if self.publish_locations and visit.place is not None and visit.place not in self._places:
            for loc in location_resources(visit.place):
                if self._versioned(batch, f"Location/{loc['id']}", loc):
                    self._emit(batch, loc, f"Location/{loc['id']}", pending)
            batch.places.add(visit.place)
        new = apply_adt(old, msg)
        self._publish_encounter(batch, old, new, pending)

    # -- a batch

    def _check_owners(self, pendings: list[Pending]) -> None:
        """Refuse (AR, ERR on PID-3 or MRG-1) each message about a patient, or carrying an
        identifier system, that its integrator may not write; free patients are claimed for it
        on the way, before anything is published."""
        if self.owners is None:
            return
        needs: dict[int, list[tuple[Claim, str, int]]] = {}
        by_source: dict[str, set[Claim]] = {}
        for i, p in enumerate(pendings):
            msg = p.msg
            if msg is None:
                continue
            found: list[tuple[Claim, str, int]] = [
                (("patient", msg.patient.patient_id[:MAX_VALUE]), "PID", 3)
            ]
            found += [
                (("system", ident.system[:MAX_VALUE]), "PID", 3)
                for ident in msg.patient.identifiers
                if ident.system
            ]
            if msg.merged_patient is not None:
                found.append((("patient", msg.merged_patient.patient_id[:MAX_VALUE]), "MRG", 1))
            if msg.visit is not None and msg.visit.encounter_id:
                # The stay of this visit number (PV1-19) is another integrator's if it wrote it
                # first, whatever patient this message names.
                found.append(
                    (("resource", f"Encounter/{msg.visit.encounter_id}"[:MAX_VALUE]), "PV1", 19)
                )
            place = msg.visit.place if msg.visit is not None else None
            if self.publish_locations and place is not None:
                # The Locations PV1-3 names are published too: each belongs to its first writer,
                # as at the gateway.
                found += [
                    (("resource", f"Location/{lid}"[:MAX_VALUE]), "PV1", 3)
                    for lid in location_ids(place).values()
                ]
            needs[i] = found
            by_source.setdefault(p.integrator, set()).update(c for c, _, _ in found)
        denied = {source: self.owners.forbidden(source, c) for source, c in by_source.items()}
        self._refuse_foreign(pendings, needs, denied)
        # What nobody owns is claimed by the messages that go on (a refused one claims nothing);
        # one that another integrator claimed first meanwhile is refused after all.
        kept: dict[str, set[Claim]] = {}
        for i, found in needs.items():
            if pendings[i].msg is not None:
                kept.setdefault(pendings[i].integrator, set()).update(c for c, _, _ in found)
        lost = {source: self.owners.claim(source, c) for source, c in kept.items()}
        self._refuse_foreign(pendings, needs, lost)

    @staticmethod
    def _refuse_foreign(
        pendings: list[Pending],
        needs: dict[int, list[tuple[Claim, str, int]]],
        denied: Mapping[str, Mapping[Claim, str]],
    ) -> None:
        for i, found in needs.items():
            p = pendings[i]
            refused = [(c, seg, f) for c, seg, f in found if c in denied.get(p.integrator, {})]
            if p.msg is None or not refused:
                continue
            (kind, value), segment, field_no = refused[0]
            what = {
                "patient": "le patient",
                "resource": "le lieu" if value.startswith("Location/") else "le séjour",
            }.get(kind, "le système d'identifiants")
            p.msg = None
            p.rejection = Hl7Rejection(
                "AR",
                "forbidden",
                f"{what} {value[:80]} appartient à un autre intégrateur ; un administrateur peut "
                f"l'accorder (parcours ingest grant {p.integrator} --{kind} {value[:80]})",
                segment,
                field_no,
                error_code=ERR_LOCKED,
            )

    def _check_merges(self, pendings: list[Pending]) -> None:
        """Refuse (AE, ERR on MRG-1) an A40 that merges a patient into one already merged into
        it, directly or through others, by earlier messages of this batch, the batch before it
        (maybe not stored yet) or what SQL recorded (A40s and FHIR feeds alike)."""
        merges: dict[str, str] = {}
        unstored = self._unstored.merges if self._unstored is not None else {}

        def replacement(pid: str) -> str | None:
            if pid in merges:
                return merges[pid]
            if pid in unstored:
                return unstored[pid][0]
            return merged_into(self.index.lookup, pid)

        for p in pendings:
            msg = p.msg
            if msg is None or msg.merged_patient is None:
                continue
            merged, into = msg.merged_patient.patient_id, msg.patient.patient_id
            if not merge_loops(merged, into, replacement):
                merges[merged] = into
                continue
            p.msg = None
            p.rejection = Hl7Rejection(
                "AE",
                "merge-loop",
                f"le patient {into[:80]} est déjà fusionné dans le patient {merged[:80]} "
                "(directement ou par d'autres) : les fusionner ferait une boucle",
                "MRG",
                1,
                error_code=ERR_UNKNOWN_KEY,
            )

    def prepare(self, pendings: list[Pending]) -> Prepared:
        """First half of a batch: check owners, record NACKs, apply the messages to the stays
        and hand their resources to the producer. The caches take the batch's result at once,
        so that the next batch can be prepared while this one is acknowledged and stored;
        `invalidate` undoes that when `finish` fails."""
        now = datetime.now(UTC)
        prep = Prepared(pendings, now)
        try:
            self._check_owners(pendings)
            self._check_merges(pendings)
        except Exception as exc:
            log.exception("could not check who owns the patients, or their merges")
            for p in pendings:
                if p.msg is not None:
                    p.msg = None
                    p.rejection = _internal(
                        f"base de données indisponible: {type(exc).__name__}"
                    ).rejection
        prep.outcomes = [
            Outcome(p.rejection.ack_code, p.rejection) if p.rejection else Outcome("AA")
            for p in pendings
        ]
        nacks = [p for p in pendings if p.msg is None]
        prep.good = [i for i, p in enumerate(pendings) if p.msg is not None]
        self._record_nacks(nacks, now)
        if not prep.good:
            return prep
        batch = _Batch()
        try:
            self._load([pendings[i] for i in prep.good])
        except Exception as exc:
            log.exception("could not read the stays from SQL")
            for i in prep.good:
                prep.outcomes[i] = _internal(f"base de données indisponible: {type(exc).__name__}")
            return prep
        for i in prep.good:
            mark = (
                len(batch.records),
                dict(batch.encounters),
                dict(batch.resources),
                set(batch.places),
                len(batch.identifiers),
                dict(batch.merges),
            )
            try:
                self._apply(batch, pendings[i])
            except Exception as exc:
                # A bug on one message must not fail the others: undo what it added.
                log.exception("could not apply an ADT message")
                del batch.records[mark[0] :]
                batch.encounters, batch.resources, batch.places = mark[1], mark[2], mark[3]
                del batch.identifiers[mark[4] :]
                batch.merges = mark[5]
                prep.outcomes[i] = _internal(f"erreur interne: {type(exc).__name__}")
        prep.batch = batch
        if batch.records:
            prep.producer, prep.sent = send_all(self.publisher, [r[0] for r in batch.records])
        self._encounters.update(batch.encounters)
        self._resources.update(batch.resources)
        if len(self._places) > self.cache_size or len(self._identifiers) > self.cache_size:
            self._places.clear()
            self._identifiers.clear()
        self._places.update(batch.places)
        self._identifiers.update(i[:3] for i in batch.identifiers)
        self._unstored = batch
        return prep

    def finish(self, prep: Prepared) -> list[Outcome]:
        """Second half: wait for Kafka's acks of the batch's records, then store the batch in
        SQL; returns how to answer each message (AE for all when either fails, and then
        `prep.failed` is set). Touches no cache, so it can run beside the next `prepare`."""
        outcomes = prep.outcomes
        batch = prep.batch
        counts: Counter[CountKey] = Counter()
        if batch is None or not batch.records:
            if batch is not None:
                # Nothing changed (repeats): answered as they are, stored with the counts.
                return self._store(prep, counts, {})
            return self._counted(prep, outcomes)
        acks = wait_all(self.publisher, prep.producer, prep.sent)
        if any(isinstance(a, Exception) for a in acks):
            prep.failed = True
            outcomes = self._failed(prep, "Kafka n'a pas acquitté; renvoyer le message")
            self._count(prep.pendings, outcomes, counts)
            with contextlib.suppress(Exception):
                self.store.add_counts(counts, prep.now)
            return outcomes
        by_source: dict[str, list[Published]] = {}
        for (message, dedupe, source, digest), ack in zip(batch.records, acks, strict=True):
            assert isinstance(ack, Ack)
            by_source.setdefault(source, []).append(
                Published(dedupe, message.key.decode(), ack.partition, ack.offset, digest)
            )
        return self._store(prep, counts, by_source)

    def _store(
        self,
        prep: Prepared,
        counts: Counter[CountKey],
        by_source: dict[str, list[Published]],
    ) -> list[Outcome]:
        batch = prep.batch
        assert batch is not None
        self._count(prep.pendings, prep.outcomes, counts)
        try:
            self.store.commit(
                prep.now,
                list(batch.encounters.values()),
                batch.resources,
                batch.identifiers,
                counts,
                by_source,
                batch.merges,
            )
        except Exception as exc:
            # Published but not stored: `invalidate` burns the versions, so that the sender's
            # retry publishes the same content under new ones.
            log.exception("could not store a published batch")
            prep.failed = True
            return self._failed(prep, f"base de données: {type(exc).__name__}")
        return prep.outcomes

    @staticmethod
    def _failed(prep: Prepared, text: str) -> list[Outcome]:
        good = set(prep.good)
        return [
            _internal(text) if i in good and o.code == "AA" else o
            for i, o in enumerate(prep.outcomes)
        ]

    def invalidate(self, preps: list[Prepared]) -> None:
        """Forget what these batches put in the caches (their `finish` failed, or was built on
        one that did): their versions are never reused (a record may have reached Kafka though
        its ack did not come back), and the stays are read again from SQL."""
        for prep in preps:
            if prep.batch is None:
                continue
            for key, known in prep.batch.resources.items():
                self._burnt[key] = max(self._burnt.get(key, 0), known.version)
            for enc in prep.batch.encounters.values():
                key = f"Encounter/{enc.encounter_id}"
                self._burnt[key] = max(self._burnt.get(key, 0), enc.version)
        self._encounters.clear()
        self._resources.clear()
        self._places.clear()
        self._identifiers.clear()
        self._unstored = None

    def abandon(self, prep: Prepared) -> list[Outcome]:
        """How to answer a batch prepared on top of one whose finish failed: AE (counted)."""
        outcomes = self._failed(prep, "le lot précédent n'a pas abouti; renvoyer le message")
        return self._counted(prep, outcomes)

    def _counted(self, prep: Prepared, outcomes: list[Outcome]) -> list[Outcome]:
        """`outcomes`, once counted for feed health (a failure to store the counts is logged)."""
        counts: Counter[CountKey] = Counter()
        self._count(prep.pendings, outcomes, counts)
        try:
            self.store.add_counts(counts, prep.now)
        except Exception:
            log.exception("could not store HL7 message counts")
        return outcomes

    def process(self, pendings: list[Pending]) -> list[Outcome]:
        """Prepare and finish one batch (no overlap with another)."""
        prep = self.prepare(pendings)
        outcomes = self.finish(prep)
        if prep.failed:
            self.invalidate([prep])
        return outcomes

    def _count(
        self, pendings: list[Pending], outcomes: list[Outcome], counts: Counter[CountKey]
    ) -> None:
        for p, o in zip(pendings, outcomes, strict=True):
            reason = o.rejection.reason if o.rejection else ""
            facility = (
                p.header.sending_facility[:64] if p.integrator != UNKNOWN_SENDER else UNKNOWN_SENDER
            )
            counts[(p.integrator, facility, p.header.trigger[:16], o.code, reason)] += 1

    def _record_nacks(self, nacks: list[Pending], now: datetime) -> None:
        """Dead-letter refused messages with their reason and keep them for feed health."""
        records: list[RejectionRecord] = []
        if nacks:
            # Dead letters need a producer, even before any message was accepted.
            with contextlib.suppress(BrokerUnavailable):
                self.publisher.producer()
        for p in nacks:
            rej = p.rejection
            if rej is None:
                continue
            source = p.integrator if p.integrator != UNKNOWN_SENDER else None
            kind = p.header.message_code or "ADT"
            rtype = f"{kind}^{p.header.trigger}" if p.header.trigger else "HL7v2"
            self.publisher.dead_letter(
                (source or UNKNOWN_SENDER).encode(),
                p.payload,
                {
                    "reason": rej.summary,
                    "reason-code": rej.reason,
                    "hl7-ack-code": rej.ack_code,
                    "stage": "ingest-mllp",
                    "source": source or "",
                    "sending-facility": p.header.sending_facility[:64],
                    "received-at": p.received_at.isoformat(),
                    "resource-type": rtype,
                },
            )
            if source is None:
                continue  # anyone can connect: unknown senders are counted, not stored
            # The gateway's statuses: 400 a message that cannot be read (AE), 422 a merge loop
            # (a rule, as the gateway's) and what the listener does not take (AR).
            if rej.reason == "forbidden":
                status = 403
            elif rej.ack_code == "AR" or rej.reason == "merge-loop":
                status = 422
            else:
                status = 400
            outcome = Rejection(
                status,
                rej.reason,
                [Issue("invalid", rej.text, (rej.location,) if rej.location else ())],
                resource_type=rtype,
                resource_id=p.header.control_id[:128] or None,
            )
            records.append(
                RejectionRecord(
                    source=source,
                    received_at=p.received_at,
                    http_status=outcome.status,
                    reason=rej.reason,
                    resource_type=rtype,
                    resource_id=p.header.control_id[:128] or None,
                    expression=rej.location or None,
                    diagnostics=rej.summary,
                    operation_outcome=outcome.outcome(),
                )
            )
        if records:
            try:
                self.ingest_store.record_rejections(records)
            except Exception:
                log.exception("could not store %d HL7 rejections", len(records))


def _parsed(pending: Pending) -> bool:
    return pending.parsed is None or pending.parsed.done()


def _answer(pendings: list[Pending], outcomes: list[Outcome]) -> None:
    for p, o in zip(pendings, outcomes, strict=True):
        if p.future is not None and not p.future.done():
            p.future.set_result(o)


def send_all(publisher: Publisher, messages: list[Message]) -> tuple[Any, list[Any]]:
    """Hand every message to the producer (each to its topic, `Topics.for_key`) without waiting;
    returns the producer and, per message, its future or the error that stopped it."""
    try:
        producer = publisher.producer()
    except BrokerUnavailable as exc:
        return None, [exc] * len(messages)
    topic_of = publisher.topics.for_key
    sent: list[Any] = []
    for m in messages:
        try:
            sent.append(producer.send(topic_of(m.key), value=m.value, key=m.key, headers=m.headers))
        except (KafkaError, OSError, ValueError) as exc:
            sent.append(exc)
    return producer, sent


def wait_all(publisher: Publisher, producer: Any, sent: list[Any]) -> list[Ack | Exception]:
    """Per message `send_all` handed over, its Ack (acks=all) or the error; waits at most the
    publish timeout in total. After a connection failure the producer is rebuilt."""
    deadline = time.monotonic() + publisher.timeout_s + 1.0
    if producer is not None and any(not isinstance(f, Exception) for f in sent):
        # Sends what lingers at once (and anything handed over since: harmless).
        with contextlib.suppress(KafkaError):
            producer.flush(timeout=max(0.0, deadline - time.monotonic()))
    results = collect_acks(sent, deadline)
    if any(isinstance(r, Exception) and not isinstance(r, RECORD_ERRORS) for r in results):
        publisher.reset()
    return results


def _internal(text: str) -> Outcome:
    return Outcome("AE", Hl7Rejection("AE", "internal", text, error_code=ERR_INTERNAL))


# --- Parsing beside the listener -----------------------------------------------------------------

PARSE_CHUNK_MIN = 32
PARSE_CHUNK_MAX = 128


def parse_chunk_size(unparsed: int) -> int:
    """How many messages to gather into a chunk while the parse processes still have `unparsed`
    messages to parse: as many, within PARSE_CHUNK_MIN and PARSE_CHUNK_MAX. The processes cannot
    start a new chunk before they are through those, so a smaller one would only wait there, and
    each chunk costs a round trip and gives the listener a smaller batch."""
    return min(PARSE_CHUNK_MAX, max(PARSE_CHUNK_MIN, unparsed))


# --- Listener -----------------------------------------------------------------------------------


def sender_map(senders: Mapping[str, list[str]]) -> dict[str, str]:
    """MSH-4 sending facility → integrator, from `PARCOURS_MLLP_SENDERS`."""
    out: dict[str, str] = {}
    for integrator, facilities in senders.items():
        for facility in facilities:
            out[facility] = integrator
    return out


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A server TLS context when a certificate and key are configured."""
    if settings.mllp_tls_cert is None or settings.mllp_tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.mllp_tls_cert, settings.mllp_tls_key)
    if settings.mllp_tls_client_ca is not None:
        ctx.load_verify_locations(settings.mllp_tls_client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclass(eq=False)
class Connection:
    """One open MLLP connection, as the listener sees it when it must make room for another."""

    peer: Any
    writer: asyncio.StreamWriter
    mllp: MllpReader
    # Loop time of its last ACK, else of its opening: bytes outside a block are no activity.
    idle_since: float
    # Messages read and not answered yet.
    unanswered: int = 0

    @property
    def busy(self) -> bool:
        """In the middle of a message, or owed ACKs: never closed to make room."""
        return self.mllp.in_frame or self.unanswered > 0


def idlest(connections: list[Connection], now: float, min_idle_s: float) -> Connection | None:
    """The connection idle longest, if it has been idle at least `min_idle_s` (else None); a
    busy one never is. The first opened wins a tie."""
    idle = [c for c in connections if not c.busy and now - c.idle_since >= min_idle_s]
    return min(idle, key=lambda c: c.idle_since, default=None)


class MllpListener:
    """The asyncio server: connections, framing, ACKs; a writer thread does the I/O."""

    def __init__(
        self,
        settings: Settings,
        processor: AdtProcessor,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.tz = ZoneInfo(settings.timezone)
        self.senders = sender_map(settings.mllp_senders)
        self.clock = clock
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        # In the order they were opened.
        self.open_connections: list[Connection] = []
        self.server: asyncio.Server | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._finishing: asyncio.Task[bool] | None = None
        self._ack_seq = 0
        self.handled = 0
        self.unrecorded = 0
        self._workers: list[ParseWorker] = []
        self._to_parse: list[
            tuple[bytes, MessageHeader, asyncio.Future[AdtMessage | Hl7Rejection]]
        ] = []
        self._parse_tasks: set[asyncio.Task[None]] = set()
        # Chunks, and messages, sent to the workers and not back yet.
        self._parsing = 0
        self._unparsed = 0

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        """Bind and start serving; returns the port (useful with port 0)."""
        # The workers start now, so that the first messages do not wait for them.
        for _ in range(self.settings.mllp_parse_processes):
            worker = ParseWorker(self.settings.timezone)
            await worker.start()
            self._workers.append(worker)
        self._writer_task = asyncio.create_task(self._writer())
        self.server = await asyncio.start_server(
            self._serve,
            host or self.settings.mllp_host,
            self.settings.mllp_port if port is None else port,
            ssl=tls_context(self.settings),
            limit=READ_CHUNK * 2,
        )
        sock = self.server.sockets[0]
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, finish the queued messages, stop the writer."""
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)
        if self._writer_task is not None:
            self._writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
        if self._finishing is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._finishing, 15)
        for worker in self._workers:
            await worker.stop()

    def _parse_later(
        self, payload: bytes, header: MessageHeader
    ) -> asyncio.Future[AdtMessage | Hl7Rejection]:
        """The future of `payload` parsed, by the worker processes or here when there are none.

        Messages go to the workers in chunks: at once while a worker is free, else gathered
        until one is, or until the chunk is as large as what the workers have yet to parse
        (`parse_chunk_size`)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AdtMessage | Hl7Rejection] = loop.create_future()
        if not self._workers:
            future.set_result(parse_one(payload, header, self.tz))
            return future
        self._to_parse.append((payload, header, future))
        if len(self._to_parse) >= parse_chunk_size(self._unparsed):
            self._flush_parse()
        elif len(self._to_parse) == 1 and self._parsing <= self.settings.mllp_parse_processes:
            loop.call_soon(self._flush_parse)
        return future

    def _flush_parse(self) -> None:
        chunk, self._to_parse = self._to_parse, []
        if chunk:
            self._parsing += 1
            self._unparsed += len(chunk)
            task = asyncio.create_task(self._parse_chunk(chunk))
            self._parse_tasks.add(task)
            task.add_done_callback(self._parse_tasks.discard)

    async def _parse_chunk(
        self, chunk: list[tuple[bytes, MessageHeader, asyncio.Future[AdtMessage | Hl7Rejection]]]
    ) -> None:
        payloads = [c[0] for c in chunk]
        headers = [c[1] for c in chunk]
        results: list[AdtMessage | Hl7Rejection]
        # The worker with the fewest chunks under way.
        worker = min(self._workers, key=ParseWorker.load, default=None)
        failed = False
        try:
            if worker is None:
                raise ParseWorkerGone("no parse worker is running (one is starting)")
            results = results_of(await worker.parse(payloads, headers))
        except Exception:
            log.exception("HL7 parse worker failed; parsing in the listener meanwhile")
            results = [parse_one(p, h, self.tz) for p, h in zip(payloads, headers, strict=True)]
            failed = True
        for (_, _, future), result in zip(chunk, results, strict=True):
            if not future.done():
                future.set_result(result)
        self._parsing -= 1
        self._unparsed -= len(chunk)
        if self._to_parse:
            self._flush_parse()
        if failed and worker is not None and worker in self._workers:
            await self._replace(worker)

    async def _replace(self, worker: ParseWorker) -> None:
        """Stop a parse worker that failed and start another in its place."""
        self._workers.remove(worker)
        await worker.stop()
        replacement = ParseWorker(self.settings.timezone)
        try:
            await replacement.start()
        except Exception:
            log.exception("could not start an HL7 parse worker; parsing in the listener")
            return
        self._workers.append(replacement)

    async def _writer(self) -> None:
        """Take what is queued and parsed (up to MAX_BATCH) and prepare it in a thread while the
        previous batch is acknowledged by Kafka and stored (`finish`, in another thread); each
        message is answered once its batch is finished. A batch prepared on top of one whose
        finish failed is refused too (AE), and the caches are read again from SQL."""
        previous: tuple[Prepared, asyncio.Task[bool]] | None = None
        # Taken from the queue, in order, and not in a batch yet.
        waiting: list[Pending] = []
        while True:
            if not waiting:
                try:
                    waiting.append(await asyncio.wait_for(self.queue.get(), 2.0))
                except TimeoutError:
                    continue
            while len(waiting) < MAX_BATCH and not self.queue.empty():
                waiting.append(self.queue.get_nowait())
            # The batch is what is parsed already, from the first message on (waiting for the
            # first if need be): the workers parse the rest meanwhile, instead of the batch
            # waiting for its last message while the messages before it sit idle.
            if waiting[0].parsed is not None:
                await waiting[0].parsed
            ready = 1
            while ready < len(waiting) and _parsed(waiting[ready]):
                ready += 1
            batch, waiting = waiting[:ready], waiting[ready:]
            for p in batch:
                if p.parsed is not None:
                    got = await p.parsed
                    if isinstance(got, Hl7Rejection):
                        p.rejection = got
                    else:
                        p.msg = got
            if previous is not None and previous[1].done():
                if previous[1].result():
                    self.processor.invalidate([previous[0]])
                previous = None
            try:
                prep = await asyncio.to_thread(self.processor.prepare, batch)
            except Exception as exc:  # the writer must outlive any failure
                log.exception("ADT batch failed")
                if previous is not None and await previous[1]:
                    self.processor.invalidate([previous[0]])
                previous = None
                self.processor.invalidate([])
                _answer(batch, [_internal(f"erreur interne: {type(exc).__name__}")] * len(batch))
                continue
            if previous is not None and await previous[1]:
                self.processor.invalidate([previous[0], prep])
                previous = None
                _answer(batch, await asyncio.to_thread(self.processor.abandon, prep))
                continue
            previous = (prep, asyncio.create_task(self._finish(prep)))
            self._finishing = previous[1]

    async def _finish(self, prep: Prepared) -> bool:
        """Finish a prepared batch in a thread and answer its messages; True if it failed."""
        try:
            outcomes = await asyncio.to_thread(self.processor.finish, prep)
        except Exception as exc:
            log.exception("ADT batch failed")
            prep.failed = True
            outcomes = [_internal(f"erreur interne: {type(exc).__name__}")] * len(prep.pendings)
        _answer(prep.pendings, outcomes)
        return prep.failed

    def _ack(self, header: MessageHeader, outcome: Outcome) -> bytes:
        self._ack_seq += 1
        now = self.clock().astimezone(self.tz)
        text = ack_message(
            header,
            outcome.code,
            now,
            f"PRC{now:%Y%m%d%H%M%S}{self._ack_seq:06d}",
            outcome.rejection,
            outcome.text,
        )
        codec = {"8859/1": "latin-1", "8859/15": "iso8859-15"}.get(header.charset.upper(), "utf-8")
        return frame(text.encode(codec, "replace"))

    def submit(
        self, payload: bytes, oversized: bool = False
    ) -> tuple[MessageHeader, asyncio.Future[Outcome]]:
        """Check one message and queue it for the writer; returns its header and the future of
        its answer (already set for a NACK). Messages are queued in the order submitted."""
        received_at = self.clock()
        header = read_header(payload)
        integrator = self.senders.get(header.sending_facility)
        rejection: Hl7Rejection | None = None
        if oversized:
            rejection = Hl7Rejection(
                "AE",
                "too-large",
                f"message de plus de {self.settings.mllp_max_message_bytes} octets",
                error_code="100",
            )
        elif not payload.lstrip(b"\r\n ").startswith(b"MSH"):
            rejection = Hl7Rejection(
                "AE",
                "not-hl7",
                "le message ne commence pas par un segment MSH",
                "MSH",
                error_code="100",
            )
        elif integrator is None:
            rejection = Hl7Rejection(
                "AR",
                "unknown-sender",
                f"établissement émetteur {header.sending_facility[:64]!r} non autorisé",
                "MSH",
                4,
                error_code=ERR_INTERNAL,
            )
        source = integrator or UNKNOWN_SENDER
        if rejection is not None:
            # Recorded by the writer in the background: the NACK goes out now. A sender flooding
            # refused messages faster than they can be recorded gets its NACKs, unrecorded.
            if self.queue.qsize() < MAX_QUEUED:
                self.queue.put_nowait(
                    Pending(None, source, header, payload, received_at, None, rejection)
                )
            else:
                self.unrecorded += 1
                if self.unrecorded % 1000 == 1:
                    log.warning(
                        "%d refused HL7 messages not recorded (writer backlog)", self.unrecorded
                    )
            done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            done.set_result(Outcome(rejection.ack_code, rejection))
            return header, done
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        parsed = self._parse_later(payload, header)
        self.queue.put_nowait(
            Pending(None, source, header, payload, received_at, future, parsed=parsed)
        )
        return header, future

    async def handle(
        self, payload: bytes, oversized: bool = False
    ) -> tuple[MessageHeader, Outcome]:
        """Check, queue and await one message; returns the header and how to answer it."""
        header, future = self.submit(payload, oversized)
        return header, await future

    def _make_room(self, peer: Any, now: float) -> bool:
        """Whether a new connection from `peer` may be served: there is room, or the connection
        idle longest (for at least `mllp_evict_idle_s`) is closed to make some."""
        if len(self.open_connections) < self.settings.mllp_max_connections:
            return True
        victim = idlest(self.open_connections, now, self.settings.mllp_evict_idle_s)
        if victim is None:
            log.warning(
                "MLLP connection from %s refused: %d open, none idle",
                peer,
                len(self.open_connections),
            )
            return False
        log.warning(
            "MLLP connection from %s closed after %.0f s idle, to make room for %s",
            victim.peer,
            now - victim.idle_since,
            peer,
        )
        self.open_connections.remove(victim)
        # Its reader then meets the end of the stream, and its `_serve` ends as for any close.
        victim.writer.close()
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        now = asyncio.get_running_loop().time()
        if not self._make_room(peer, now):
            writer.close()
            return
        mllp = MllpReader(
            reader,
            self.settings.mllp_max_message_bytes,
            self.settings.mllp_frame_timeout_s,
            self.settings.mllp_idle_timeout_s,
        )
        conn = Connection(peer, writer, mllp, now)
        self.open_connections.append(conn)
        # Most senders wait for each ACK; one that sends ahead gets its ACKs in order, with at
        # most MAX_IN_FLIGHT messages read before their ACK is written.
        inflight: asyncio.Queue[tuple[MessageHeader, asyncio.Future[Outcome]] | None] = (
            asyncio.Queue(MAX_IN_FLIGHT)
        )
        acks = asyncio.create_task(self._write_acks(inflight, conn))
        try:
            while True:
                try:
                    got = await mllp.next_frame()
                except FramingTimeout:
                    log.info("MLLP connection from %s closed: timeout", peer)
                    break
                if got is None:
                    break
                conn.unanswered += 1
                await inflight.put(self.submit(got.payload, got.oversized))
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            log.info("MLLP connection from %s lost: %s", peer, exc)
        except Exception:
            log.exception("MLLP connection from %s failed", peer)
        finally:
            if not acks.done():
                await inflight.put(None)
            with contextlib.suppress(Exception):
                await acks
            if conn in self.open_connections:
                self.open_connections.remove(conn)
            if mllp.skipped:
                log.info(
                    "MLLP connection from %s: %d bytes outside blocks skipped", peer, mllp.skipped
                )
            with contextlib.suppress(Exception):
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def _write_acks(
        self,
        inflight: asyncio.Queue[tuple[MessageHeader, asyncio.Future[Outcome]] | None],
        conn: Connection,
    ) -> None:
        """Write each message's ACK, in the order the messages came, as answers arrive; the
        ACKs of messages answered together are written together."""
        writer, peer = conn.writer, conn.peer
        loop = asyncio.get_running_loop()
        ended = False
        # ACKs ready together go out in one write: the transport sends each write at once.
        ready: list[bytes] = []

        def write_ready() -> None:
            writer.write(b"".join(ready))
            conn.unanswered -= len(ready)
            conn.idle_since = loop.time()
            ready.clear()

        try:
            while not ended:
                item = await inflight.get()
                while item is not None:
                    header, future = item
                    if not future.done():
                        if ready:
                            write_ready()
                        await writer.drain()
                    outcome = await future
                    self.handled += 1
                    ready.append(self._ack(header, outcome))
                    if inflight.empty():
                        break
                    item = inflight.get_nowait()
                ended = item is None
                if ready:
                    write_ready()
                await writer.drain()
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            log.info("MLLP connection from %s lost while answering: %s", peer, exc)
            writer.close()
            # Keep taking what the reader hands over until it stops, so it never blocks.
            while not ended:
                ended = await inflight.get() is None


async def serve_forever(settings: Settings, host: str | None, port: int | None) -> None:
    """Run the listener until cancelled (Ctrl-C)."""
    from parcours.db import make_engine

    engine = make_engine(settings.db_url)
    publisher = Publisher(settings)
    processor = AdtProcessor(
        engine,
        publisher,
        publish_locations=settings.mllp_locations,
        ownership=settings.ingest_ownership,
    )
    listener = MllpListener(settings, processor)
    # Each message allocates hundreds of short-lived objects, while the stays' histories stay
    # cached: the collector would walk them several times per message.
    collect_seldom()
    bound = await listener.start(host, port)
    log.info("MLLP listener on %s:%d", host or settings.mllp_host, bound)
    try:
        await asyncio.Event().wait()
    finally:
        await listener.stop()
        await asyncio.to_thread(publisher.close)
        engine.dispose()
