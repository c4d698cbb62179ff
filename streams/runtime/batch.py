"""Folding a batch: decode raw messages, map them to canonical events, fold each patient's events
with the pure rules, derive its SQL rows (`BatchProcessor`), and write them (`SqlSink`).

It runs in the worker (a thread) or in fold processes (`streams.runtime.fold_process`); it knows
nothing of Faust.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol

import orjson
import zstandard
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from parcours.settings import Settings
from parcours.timeutil import zone
from parcours.topics import partition_of_key
from streams.core.events import (
    CanonicalEvent,
    EncounterRecorded,
    LocationRecorded,
    OrganizationRecorded,
    PatientEvent,
)
from streams.core.fhir_map import MappingError, map_resource
from streams.core.pathway import (
    AlertRaised,
    AlertResolved,
    PathwayRules,
    PatientState,
    advance_all,
    check_timers,
    to_jsonable,
)
from streams.core.projection import patient_rows, row_changes
from streams.sink.rows import SinkBatch, SinkResult

log = logging.getLogger(__name__)

# Backoff of the retries of a write the database could not take (connection lost, timeout).
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
# A statement that timed out this many times in a row is treated as refused: a batch that can
# never pass in time must not hold the worker forever.
TIMEOUT_ATTEMPTS = 3
# PostgreSQL error classes and codes of a database that cannot answer now, but may later.
TRANSIENT_CLASSES = ("08", "53", "58")
TRANSIENT_CODES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03"})
QUERY_CANCELED = "57014"


# A state table value: `pack_state`'s bytes. Older changelogs hold `PatientState.to_json()` text
# (a JSON string record) or the state as a JSON object; `unpack_state` reads them all.
StateValue = bytes | str | Mapping[str, Any]


# The first bytes of every Zstandard frame; older changelogs hold zlib streams instead.
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_codecs = threading.local()


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    """This thread's compressor and decompressor: zstandard's are not thread-safe, and making
    one per state costs more than compressing it."""
    pair = getattr(_codecs, "pair", None)
    if pair is None:
        pair = _codecs.pair = (zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor())
    return pair


def pack_state(state: PatientState) -> bytes:
    """The table value of `state`: its JSON, compressed (Zstandard, level 1). A state's JSON is
    mostly the same field names and ids again and again, and the table holds every patient's:
    compressed, about a quarter of the memory, for a few µs per state written."""
    return _zstd()[0].compress(state.to_json().encode())


def unpack_state(value: StateValue) -> PatientState:
    """The state of a table value (`pack_state`'s, or an older changelog's)."""
    if isinstance(value, Mapping):
        return PatientState.from_dict(value)
    if isinstance(value, str):
        return PatientState.from_json(value)
    head = value[:1]
    if head == b'"':  # `to_json()` text, quoted by Faust's JSON codec
        return PatientState.from_json(orjson.loads(value))
    if head == b"{":
        return PatientState.from_json(value)
    if value[:4] == ZSTD_MAGIC:
        return PatientState.from_json(_zstd()[1].decompress(value))
    return PatientState.from_json(zlib.decompress(value))


class WorkerStopping(Exception):
    """The worker is stopping: the batch is left unwritten, to be replayed from its offsets."""


def db_error_kind(exc: BaseException) -> str:
    """`"transient"` (connection lost, database restarting, deadlock: retry), `"timeout"` (a
    statement cancelled by its timeout: retry a few times) or `"refused"` (the database will
    never take it: stack depth, bad data, constraint, or any other error)."""
    if isinstance(exc, PoolTimeout):
        return "transient"
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return "transient"
    code = getattr(orig, "pgcode", None)
    if code:
        if code == QUERY_CANCELED:
            return "timeout"
        if code in TRANSIENT_CODES or code.startswith(TRANSIENT_CLASSES):
            return "transient"
        return "refused"
    name = type(orig).__name__
    if name == "InterfaceError":
        return "transient"  # psycopg2: the connection is closed
    if name == "OperationalError":
        # psycopg2 without a code: the server went away. SQLite: locked or busy.
        text = str(orig).lower()
        if type(orig).__module__.startswith("sqlite3") and "locked" not in text:
            return "refused"
        return "transient"
    return "refused"


def describe_error(exc: BaseException) -> str:
    """A short description of a database error for logs and dead letters: its class and the
    first line of the server's message, never the statement or its parameters."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    first = (str(orig).strip().splitlines() or [""])[0][:300]
    return f"{type(orig).__name__}: {first}" if first else type(orig).__name__


def rules_from_settings(settings: Settings) -> PathwayRules:
    """The pathway thresholds from the settings."""
    return PathwayRules(
        ed_boarding=timedelta(hours=settings.alert_ed_boarding_hours),
        referral_contact=timedelta(days=settings.alert_referral_days),
        follow_up=timedelta(days=settings.alert_followup_days),
        readmission=timedelta(days=settings.alert_readmission_days),
        los_p90={k: timedelta(days=v) for k, v in settings.alert_los_p90_days.items()},
        los_p90_default=timedelta(days=settings.alert_los_p90_default_days),
        timezone=settings.timezone,
    )


class RowSink(Protocol):
    """Where a folded batch's rows go: `streams.sink.writer.SqlSink` in a worker."""

    def write(self, batch: SinkBatch) -> SinkResult:
        """Write one batch's rows in one transaction."""
        ...

    def refused(self, locations: Sequence[LocationRecorded]) -> None:
        """Remember Location versions the database refused: later writes skip them."""
        ...


@dataclass(frozen=True)
class RawMessage:
    """One raw-topic message: key, payload and the partition it came from."""

    key: bytes | None
    value: bytes
    partition: int = 0


@dataclass
class BatchOutcome:
    """A folded batch: the SQL rows to write, then the table writes, alerts and dead letters."""

    # patient → (partition, `pack_state(state)`)
    states: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    alerts: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    rejects: list[tuple[bytes | None, bytes, str]] = field(default_factory=list)
    events: int = 0
    rows: int = 0
    # What `BatchProcessor.write` sends to SQL, and the raw messages of each patient, which go
    # to the dead letters if the database refuses the patient's rows.
    sink_batch: SinkBatch = field(default_factory=SinkBatch)
    raw_of: dict[str, list[RawMessage]] = field(default_factory=dict)
    location_raw: dict[str, list[RawMessage]] = field(default_factory=dict)
    organization_raw: list[RawMessage] = field(default_factory=list)
    refused: bool = False  # the database refused some patients' rows
    rules_s: float = 0.0  # decoding and folding
    sql_s: float = 0.0  # the SQL transaction


# Why a record without a value is refused: Kafka's tombstone deletes a key of a compacted topic,
# and the raw topic takes resources (a withdrawal is a version with its status).
EMPTY_RECORD = (
    "empty record (a Kafka tombstone): the raw topic takes FHIR resources; to withdraw one, send"
    " its new version (status entered-in-error or cancelled)"
)


def decode_batch(
    messages: Iterable[tuple[bytes | None, bytes]], date_zone: tzinfo = UTC
) -> tuple[list[CanonicalEvent], list[tuple[bytes | None, bytes, str]]]:
    """Map raw (key, payload) messages to events (a date without a time is its midnight in
    `date_zone`); failures come back with their reason."""
    events: list[CanonicalEvent] = []
    rejects: list[tuple[bytes | None, bytes, str]] = []
    for key, payload in messages:
        if not payload:
            rejects.append((key, payload, EMPTY_RECORD))
            continue
        try:
            resource = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            rejects.append((key, payload, f"not valid JSON: {exc}"))
            continue
        try:
            events.extend(map_resource(resource, date_zone))
        except (ValueError, MappingError) as exc:
            rejects.append((key, payload, str(exc)))
        except Exception as exc:
            # One message that breaks the mapping must not stop the batch: it is dead-lettered.
            rejects.append((key, payload, f"mapping: {type(exc).__name__}: {exc}"))
    return events, rejects


def alert_message(out: AlertRaised | AlertResolved) -> dict[str, Any]:
    """The alerts-topic value of a pathway alert output."""
    raised = isinstance(out, AlertRaised)
    return {
        "alert_id": out.alert_id,
        "alert_type": out.kind,
        "patient_id": out.patient_id,
        "status": "open" if raised else "resolved",
        "at": out.at.isoformat(),
        "subject_id": out.subject_id,
        "details": to_jsonable(out.details) if isinstance(out, AlertRaised) else {},
    }


def census_alert_message(row: Mapping[str, Any]) -> dict[str, Any]:
    """The alerts-topic value of a census alert row."""
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


@dataclass
class Grouped:
    """A batch's patient events by patient (in offset order), and each patient's partition."""

    events: dict[str, list[PatientEvent]] = field(default_factory=dict)
    partition_of: dict[str, int] = field(default_factory=dict)


class BatchProcessor:
    """The body of the batch handler, without Faust: `fold` decodes a batch and runs the rules
    (in a thread, or in fold processes: `streams.runtime.fold_process`), `write` writes it to SQL
    (in a thread); `FoldWritePipeline` runs them."""

    # Decoded states kept, the most recently used ones: a backfill moves through time, so the
    # patients of the next batch are mostly those of the last ones, and memory stays bounded
    # whatever the number of patients.
    CACHE_LIMIT = 10_000

    def __init__(
        self, sink: RowSink, rules: PathwayRules, stopping: threading.Event | None = None
    ) -> None:
        self.sink = sink
        self.rules = rules
        # Set when the worker stops: retries give up and the batch is replayed at the next start.
        self.stopping = stopping or threading.Event()
        self.db_retries = 0
        # patient → (the table value, its decoded state). Decoding a state costs more than the
        # transitions of a batch, so a value this worker wrote itself is not decoded again.
        self._decoded: dict[str, tuple[StateValue, PatientState]] = {}

    def _state(self, pid: str, stored: StateValue | None) -> PatientState | None:
        if not stored:
            return None
        cached = self._decoded.pop(pid, None)
        # Equal, not only the same object: the fold process receives copies of the values.
        if cached is not None and cached[0] == stored:
            self._decoded[pid] = cached  # now the most recently used
            return cached[1]
        if isinstance(stored, Mapping):
            # A changelog written by an earlier version of the worker holds the state as an object.
            return unpack_state(stored)
        state = unpack_state(stored)
        # Kept: the timer reads every state each time, and the rules never change a state.
        self._remember(pid, stored, state)
        return state

    def forget(self) -> None:
        """Drop the decoded states kept (they are decoded again from the table when needed)."""
        self._decoded.clear()

    def _remember(self, pid: str, value: StateValue, state: PatientState) -> None:
        self._decoded.pop(pid, None)
        self._decoded[pid] = (value, state)
        if len(self._decoded) > self.CACHE_LIMIT:
            # Dicts keep insertion order: the first key is the least recently used.
            del self._decoded[next(iter(self._decoded))]

    def process(
        self,
        messages: list[RawMessage],
        get_state: Callable[[str], StateValue | None],
    ) -> BatchOutcome:
        """Fold a batch into the patients' states and write it to SQL in one transaction."""
        outcome = self.fold(messages, get_state)
        self.write(outcome)
        return outcome

    def fold(
        self,
        messages: list[RawMessage],
        get_state: Callable[[str], StateValue | None],
    ) -> BatchOutcome:
        """Decode a batch, fold it into the patients' states and derive their SQL rows."""
        started = time.perf_counter()
        outcome, grouped = self.group(messages)
        stored = {pid: get_state(pid) for pid in grouped.events}
        self.fold_grouped(outcome, grouped, stored)
        outcome.rules_s = time.perf_counter() - started
        return outcome

    def group(self, messages: list[RawMessage]) -> tuple[BatchOutcome, Grouped]:
        """Decode a batch and group its patient events by patient, in offset order."""
        outcome = BatchOutcome()
        grouped = Grouped()
        date_zone = zone(self.rules.timezone)
        raw_of = outcome.raw_of
        batch = outcome.sink_batch
        for msg in messages:
            events, rejects = decode_batch([(msg.key, msg.value)], date_zone)
            outcome.rejects.extend(rejects)
            outcome.events += len(events)
            for ev in events:
                if isinstance(ev, PatientEvent):
                    grouped.events.setdefault(ev.patient_id, []).append(ev)
                    grouped.partition_of.setdefault(ev.patient_id, msg.partition)
                    raw_of.setdefault(ev.patient_id, [])
                    if not raw_of[ev.patient_id] or raw_of[ev.patient_id][-1] is not msg:
                        raw_of[ev.patient_id].append(msg)
                elif isinstance(ev, LocationRecorded):
                    batch.locations.append(ev)
                    outcome.location_raw.setdefault(ev.location_id, []).append(msg)
                elif isinstance(ev, OrganizationRecorded):
                    batch.organizations.append(ev)
                    outcome.organization_raw.append(msg)
                elif isinstance(ev, EncounterRecorded):
                    batch.encounters.append(ev)
                    found = raw_of.setdefault(ev.patient_id, [])
                    if not found or found[-1] is not msg:
                        found.append(msg)
        return outcome, grouped

    def fold_grouped(
        self, outcome: BatchOutcome, grouped: Grouped, stored: Mapping[str, StateValue | None]
    ) -> None:
        """Fold each patient's events onto its stored state; fills in `outcome`."""
        batch = outcome.sink_batch
        for pid, patient_events in grouped.events.items():
            alert_outs: list[AlertRaised | AlertResolved] = []
            try:
                before = self._state(pid, stored.get(pid))
                state, alert_outs = advance_all(before, patient_events, self.rules)
                if state is None or state is before:
                    continue
                rows = patient_rows(state, alert_outs)
                rows.changes = row_changes(before, rows)
            except Exception as exc:
                # A rule that breaks on one patient's messages must not stop everyone's pathway:
                # they go to the dead letters with the reason, the state stays as it was.
                log.exception("pathway rules failed for patient %s", pid)
                reason = f"pathway: {type(exc).__name__}: {exc}"
                raw = outcome.raw_of.get(pid, [])
                outcome.rejects.extend((m.key, m.value, reason) for m in raw)
                continue
            batch.patients.append(rows)
            value = pack_state(state)
            outcome.states[pid] = (grouped.partition_of[pid], value)
            self._remember(pid, value, state)
            outcome.alerts.extend((pid.encode(), alert_message(o)) for o in alert_outs)

    def write(self, outcome: BatchOutcome) -> None:
        """Write a folded batch to SQL in one transaction; adds the census alerts it changed."""
        started = time.perf_counter()
        result = self._write(outcome)
        outcome.sql_s = time.perf_counter() - started
        outcome.rows = result.rows
        outcome.alerts.extend(
            (str(a["unit_id"]).encode(), census_alert_message(a)) for a in result.alerts
        )

    def tick(
        self, states: Iterable[tuple[str, StateValue]], now: datetime, partitions: int
    ) -> BatchOutcome:
        """Move every patient's clock to `now` and write the alerts that changed."""
        outcome = BatchOutcome()
        batch = outcome.sink_batch
        for pid, stored in states:
            state = self._state(pid, stored)
            if state is None:
                continue
            new, outputs = check_timers(state, now, self.rules)
            alert_outs = [o for o in outputs if isinstance(o, AlertRaised | AlertResolved)]
            if not alert_outs:
                continue
            rows = patient_rows(new, alert_outs)
            batch.patients.append(rows)
            value = pack_state(new)
            outcome.states[pid] = (partition_for(pid, partitions), value)
            self._remember(pid, value, new)
            outcome.alerts.extend((pid.encode(), alert_message(o)) for o in alert_outs)
        if batch.patients:
            self.write(outcome)
        return outcome

    def _write(self, outcome: BatchOutcome) -> SinkResult:
        """One transaction, retried while the database cannot answer. If the database refuses
        the batch, it is written again in parts (`_write_parts`) and what it refuses goes to the
        dead letters with the reason; the rest of the batch is written."""
        try:
            return self._attempt(outcome.sink_batch)
        except _Refused as refused:
            log.warning(
                "the database refused a batch (%s); writing it in parts", refused.description
            )
        batch, total = outcome.sink_batch, SinkResult()
        by_location: dict[str, list[LocationRecorded]] = {}
        for loc in batch.locations:
            by_location.setdefault(loc.location_id, []).append(loc)
        encounters: dict[str, list[EncounterRecorded]] = {}
        for enc in batch.encounters:
            encounters.setdefault(enc.patient_id, []).append(enc)
        # The tree first: the patients' rows are placed in it.
        places = [_Part(SinkBatch(locations=evs), location=lid) for lid, evs in by_location.items()]
        if batch.organizations:
            places.append(_Part(SinkBatch(organizations=batch.organizations)))
        people = [
            _Part(
                SinkBatch(patients=[p], encounters=encounters.pop(p.patient_id, [])), p.patient_id
            )
            for p in batch.patients
        ]
        people += [_Part(SinkBatch(encounters=evs), pid) for pid, evs in encounters.items()]
        self._write_parts(places, outcome, total)
        self._write_parts(people, outcome, total)
        return total

    def _attempt(self, batch: SinkBatch) -> SinkResult:
        """`sink.write`, retried with backoff while the error is transient; raises `_Refused`."""
        delay, timeouts = RETRY_FIRST_S, 0
        while True:
            if self.stopping.is_set():
                raise WorkerStopping
            try:
                return self.sink.write(batch)
            except Exception as exc:
                if self.stopping.is_set():
                    raise WorkerStopping from exc
                kind = db_error_kind(exc)
                description = describe_error(exc)
                if kind == "timeout":
                    timeouts += 1
                    if timeouts >= TIMEOUT_ATTEMPTS:
                        raise _Refused(description) from exc
                elif kind != "transient":
                    raise _Refused(description) from exc
                self.db_retries += 1
                log.warning("database unavailable (%s); retrying in %.1f s", description, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _write_parts(self, parts: list[_Part], outcome: BatchOutcome, total: SinkResult) -> None:
        """Write `parts` together; if the database refuses them, each half on its own, down
        to the one part it refuses, whose messages go to the dead letters."""
        if not parts:
            return
        merged = SinkBatch(
            patients=[p for part in parts for p in part.batch.patients],
            locations=[loc for part in parts for loc in part.batch.locations],
            encounters=[e for part in parts for e in part.batch.encounters],
        )
        try:
            result = self._attempt(merged)
        except _Refused as refused:
            if len(parts) > 1:
                middle = len(parts) // 2
                self._write_parts(parts[:middle], outcome, total)
                self._write_parts(parts[middle:], outcome, total)
                return
            self._refuse(parts[0], f"sql: {refused.description}", outcome)
            return
        total.rows += result.rows
        total.alerts.extend(result.alerts)

    def _refuse(self, part: _Part, reason: str, outcome: BatchOutcome) -> None:
        """Send the messages of a part the database refused to the dead letters; a Location
        version is remembered as refused, so that it goes there once."""
        if part.location is not None:
            log.error("the database refused a Location: %s", reason)
            raw = outcome.location_raw.get(part.location, [])
            try:
                self.sink.refused(part.batch.locations)
            except Exception as exc:  # then it is dead-lettered again at the next start
                log.warning("refused Location not recorded: %s", describe_error(exc))
        elif part.patient is None:
            log.error("the database refused the batch's Organizations: %s", reason)
            raw = outcome.organization_raw
        else:
            log.error("the database refused a patient's rows: %s", reason)
            outcome.refused = True
            outcome.states.pop(part.patient, None)
            key = part.patient.encode()
            outcome.alerts = [a for a in outcome.alerts if a[0] != key]
            raw = outcome.raw_of.get(part.patient, [])
        outcome.rejects.extend((m.key, m.value, reason) for m in raw)


class _Refused(Exception):
    """The database refused a write (not a transient error)."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


@dataclass
class _Part:
    """What the database may refuse on its own: one Location, one patient's rows, or (neither
    named) the batch's Organizations."""

    batch: SinkBatch
    patient: str | None = None
    location: str | None = None


def partition_for(patient_id: str, partitions: int) -> int:
    """The partition a producer with the default partitioner sends `patient_id` to."""
    return partition_of_key(patient_id.encode(), partitions)
