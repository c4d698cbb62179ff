"""Thin Faust adapters around the pure rules: decode, fold, write SQL, then the table and topics.

One handler reads the raw topic a batch at a time (`ParcoursApp.batch_handler`). For each batch:

1. decode every message and map it to canonical events (`fhir_map`); failures are dead-lettered;
2. group the patient events by patient (the raw topic is keyed by patient, so the state table is
   co-partitioned with it and no re-keying is needed), read each patient's state from the table
   once, fold its events with `pathway.transition` in offset order, and derive its SQL rows;
3. write the whole batch to SQL in one transaction (`SqlSink`: pathway rows, locations, census);
4. only then write each changed patient's new state to the table (one changelog record per patient
   per batch) and send the alerts, wait for the broker to hold them, and acknowledge the batch's
   messages: Faust commits acknowledged offsets only.

The steps overlap (`FoldWritePipeline`): while steps 1–2 (fold) of a batch run, the consumer
gathers the next batch, step 3 (write) of the previous batch runs, and step 4 (finish) of the one
before. A fold reads the states the folds before it made; writes, and finishes, keep the order of
the batches.

A crash anywhere replays the batch from the last committed offset. Transitions are idempotent on
the resource version and the SQL rows are whole derived state, so the replay converges to the same
rows. Location messages (keyed `Location/<id>`) carry no patient and go to the sink as they are.

Timers: `check_timers` needs a time. A live feed wants the wall clock (a discharge with no
follow-up after 7 days raises an alert even though no event arrives), so the worker's timer passes
the wall time; it is off when `pathway_timer_interval_s` is 0, which replays of old data want.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import orjson
from faust import Topic
from faust.serializers import codecs
from faust.types import TP, Message
from kafka.partitioner import murmur2
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from parcours.settings import Settings
from parcours.topics import Topics
from streams.events import CanonicalEvent, EncounterRecorded, LocationRecorded, PatientEvent
from streams.fhir_map import MappingError, map_resource
from streams.pathway import (
    AlertRaised,
    AlertResolved,
    PathwayRules,
    PatientState,
    check_timers,
    to_jsonable,
    transition,
)
from streams.projection import patient_rows
from streams.sink import SinkBatch, SinkResult, SqlSink

if TYPE_CHECKING:
    from streams.app import ParcoursApp

log = logging.getLogger(__name__)

RETRY_S = 2.0


def rules_from_settings(settings: Settings) -> PathwayRules:
    """The pathway thresholds from the settings."""
    return PathwayRules(
        ed_boarding=timedelta(hours=settings.alert_ed_boarding_hours),
        referral_contact=timedelta(days=settings.alert_referral_days),
        follow_up=timedelta(days=settings.alert_followup_days),
        readmission=timedelta(days=settings.alert_readmission_days),
        los_p90={k: timedelta(days=v) for k, v in settings.alert_los_p90_days.items()},
        los_p90_default=timedelta(days=settings.alert_los_p90_default_days),
    )


@dataclass(frozen=True)
class RawMessage:
    """One raw-topic message: key, payload and the partition it came from."""

    key: bytes | None
    value: bytes
    partition: int = 0


@dataclass
class BatchOutcome:
    """A folded batch: the SQL rows to write, then the table writes, alerts and dead letters."""

    # patient → (partition, `PatientState.to_json()`)
    states: dict[str, tuple[int, str]] = field(default_factory=dict)
    alerts: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    rejects: list[tuple[bytes | None, bytes, str]] = field(default_factory=list)
    events: int = 0
    rows: int = 0
    # What `BatchProcessor.write` sends to SQL, and the raw messages of each patient, which go
    # to the dead letters if the database refuses the patient's rows.
    sink_batch: SinkBatch = field(default_factory=SinkBatch)
    raw_of: dict[str, list[RawMessage]] = field(default_factory=dict)
    refused: bool = False  # the database refused some patients' rows
    rules_s: float = 0.0  # decoding and folding
    sql_s: float = 0.0  # the SQL transaction


def decode_batch(
    messages: Iterable[tuple[bytes | None, bytes]],
) -> tuple[list[CanonicalEvent], list[tuple[bytes | None, bytes, str]]]:
    """Map raw (key, payload) messages to events; failures come back with their reason."""
    events: list[CanonicalEvent] = []
    rejects: list[tuple[bytes | None, bytes, str]] = []
    for key, payload in messages:
        try:
            resource = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            rejects.append((key, payload, f"not valid JSON: {exc}"))
            continue
        try:
            events.extend(map_resource(resource))
        except (ValueError, MappingError) as exc:
            rejects.append((key, payload, str(exc)))
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
    (in a thread, or in fold processes: `streams.fold_process`), `write` writes it to SQL (in a
    thread); `FoldWritePipeline` runs them."""

    CACHE_LIMIT = 200_000

    def __init__(self, sink: SqlSink, rules: PathwayRules) -> None:
        self.sink = sink
        self.rules = rules
        # patient → (the table value, its decoded state). Decoding a state costs more than the
        # transitions of a batch, so a value this worker wrote itself is not decoded again.
        self._decoded: dict[str, tuple[str, PatientState]] = {}

    def _state(self, pid: str, stored: str | None) -> PatientState | None:
        if not stored:
            return None
        cached = self._decoded.get(pid)
        # Equal, not only the same object: the fold process receives copies of the values.
        if cached is not None and cached[0] == stored:
            return cached[1]
        if isinstance(stored, Mapping):
            # A changelog written by an earlier version of the worker holds the state as an object.
            return PatientState.from_dict(stored)
        state = PatientState.from_json(stored)
        # Kept: the timer reads every state each time, and the rules never change a state.
        self._remember(pid, stored, state)
        return state

    def _remember(self, pid: str, value: str, state: PatientState) -> None:
        if len(self._decoded) >= self.CACHE_LIMIT:
            self._decoded.clear()
        self._decoded[pid] = (value, state)

    def process(
        self,
        messages: list[RawMessage],
        get_state: Callable[[str], str | None],
    ) -> BatchOutcome:
        """Fold a batch into the patients' states and write it to SQL in one transaction."""
        outcome = self.fold(messages, get_state)
        self.write(outcome)
        return outcome

    def fold(
        self,
        messages: list[RawMessage],
        get_state: Callable[[str], str | None],
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
        raw_of = outcome.raw_of
        batch = outcome.sink_batch
        for msg in messages:
            events, rejects = decode_batch([(msg.key, msg.value)])
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
                elif isinstance(ev, EncounterRecorded):
                    batch.encounters.append(ev)
        return outcome, grouped

    def fold_grouped(
        self, outcome: BatchOutcome, grouped: Grouped, stored: Mapping[str, str | None]
    ) -> None:
        """Fold each patient's events onto its stored state; fills in `outcome`."""
        batch = outcome.sink_batch
        for pid, patient_events in grouped.events.items():
            alert_outs: list[AlertRaised | AlertResolved] = []
            try:
                before = self._state(pid, stored.get(pid))
                state = before
                for pev in patient_events:
                    state, outputs = transition(state, pev, self.rules)
                    alert_outs.extend(
                        o for o in outputs if isinstance(o, AlertRaised | AlertResolved)
                    )
                if state is None or state is before:
                    continue
                rows = patient_rows(state, alert_outs)
            except Exception as exc:
                # A rule that breaks on one patient's messages must not stop everyone's pathway:
                # they go to the dead letters with the reason, the state stays as it was.
                log.exception("pathway rules failed for patient %s", pid)
                reason = f"pathway: {type(exc).__name__}: {exc}"
                raw = outcome.raw_of.get(pid, [])
                outcome.rejects.extend((m.key, m.value, reason) for m in raw)
                continue
            batch.patients.append(rows)
            value = state.to_json()
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
        self, states: Iterable[tuple[str, str]], now: datetime, partitions: int
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
            value = new.to_json()
            outcome.states[pid] = (partition_for(pid, partitions), value)
            self._remember(pid, value, new)
            outcome.alerts.extend((pid.encode(), alert_message(o)) for o in alert_outs)
        if batch.patients:
            self.write(outcome)
        return outcome

    def _write(self, outcome: BatchOutcome) -> SinkResult:
        """One transaction; transient database errors are retried until they pass. Rows the
        database refuses (a value too long…) send their patient's messages to the dead letters
        and the rest of the batch is written."""
        while True:
            try:
                return self.sink.write(outcome.sink_batch)
            except (OperationalError, InterfaceError) as exc:
                log.warning("database unavailable, retrying in %ss: %s", RETRY_S, exc)
                time.sleep(RETRY_S)
            except DBAPIError as exc:
                batch = outcome.sink_batch
                if len(batch.patients) <= 1 and not batch.locations and not batch.encounters:
                    raise
                log.warning("batch refused by the database, writing patient by patient: %s", exc)
                return self._write_one_by_one(outcome)

    def _write_one_by_one(self, outcome: BatchOutcome) -> SinkResult:
        batch, total = outcome.sink_batch, SinkResult()
        parts: list[SinkBatch] = [SinkBatch(locations=batch.locations, encounters=batch.encounters)]
        parts += [SinkBatch(patients=[p]) for p in batch.patients]
        for part in parts:
            try:
                result = self.sink.write(part)
            except DBAPIError as exc:
                reason = f"sql: {str(exc).splitlines()[0]}"
                for p in part.patients:
                    outcome.refused = True
                    outcome.states.pop(p.patient_id, None)
                    key = p.patient_id.encode()
                    outcome.alerts = [a for a in outcome.alerts if a[0] != key]
                    outcome.rejects.extend(
                        (m.key, m.value, reason) for m in outcome.raw_of.get(p.patient_id, [])
                    )
                if not part.patients:
                    log.error("locations/encounters of a batch refused: %s", reason)
                continue
            total.rows += result.rows
            total.alerts.extend(result.alerts)
        return total


class FoldWritePipeline:
    """Batches in three steps that overlap: fold (the rules, in fold processes or a thread),
    write (SQL in a thread) and `finish` (the table, topics and acks). While batch N folds, the
    consumer gathers batch N+1, batch N-1 is written and batch N-2 finishes: `submit` returns as
    soon as its batch's fold has started.

    - A fold reads the states the folds before it made (`get_state`), not yet in the table.
    - Writes keep the order of the batches, one at a time; so do finishes, each after its own
      write. A batch's topics may still be on their way while the next batch is written: were
      the worker killed then, the next start replays both batches from their offsets, and the
      rows they wrote again are equal.
    - If the database refused some patients' rows, the fold that read their states is done
      again, on the states that were written.
    - A failed step exits the process: the supervisor restarts the worker from the committed
      offsets, as after a kill -9. Nothing may wait for the last batch of a burst, so its
      failure must not pass unseen.
    """

    def __init__(
        self,
        fold: Callable[[list[RawMessage], Callable[[str], str | None]], BatchOutcome],
        write: Callable[[BatchOutcome], None],
        table: Mapping[str, str | None],
        finish: Callable[[BatchOutcome, list[Message]], Awaitable[None]],
    ) -> None:
        self.fold = fold
        self.write = write
        self.table = table
        self.finish = finish
        self.lock = asyncio.Lock()  # held by `submit`, and by whoever needs every state written
        # The states of the batches folded but not finished, oldest first (`outcome.states`:
        # a write drops the patients whose rows were refused).
        self._layers: list[dict[str, tuple[int, str]]] = []
        self._folding: asyncio.Task[None] | None = None
        self._writing: asyncio.Task[bool] | None = None  # True: rows were refused
        self._finishing: list[asyncio.Task[None]] = []

    def get_state(self, pid: str) -> str | None:
        for states in reversed(self._layers):
            found = states.get(pid)
            if found is not None:
                return found[1]
        return self.table.get(pid)

    def busy(self) -> bool:
        """Whether `submit` would wait for the previous batch's fold."""
        return self._folding is not None and not self._folding.done()

    async def submit(self, messages: list[RawMessage], batch: list[Message]) -> None:
        """Start folding a batch, once the previous batch's fold is done."""
        async with self.lock:
            if self._folding is not None:
                await self._folding
            self._folding = self._task(self._fold_then_write(messages, batch))

    async def written(self) -> bool:
        """Wait until every batch submitted is written and finished, with the lock held; True
        if the last write refused rows. Afterwards the table holds every state."""
        if self._folding is not None:
            await self._folding
        refused = await self._writing if self._writing is not None else False
        for task in self._finishing:
            await task
        self._folding = self._writing = None
        self._finishing = []
        return refused

    async def _fold_then_write(self, messages: list[RawMessage], batch: list[Message]) -> None:
        outcome = await self._in_thread(self.fold, messages, self.get_state)
        if self._writing is not None and await self._writing:
            outcome = await self._in_thread(self.fold, messages, self.get_state)
        while len(self._finishing) > 1:  # at most one batch's topics behind the writes
            await self._finishing[0]
            self._finishing.pop(0)
        self._layers.append(outcome.states)
        previous = self._finishing[-1] if self._finishing else None
        self._writing = self._task(self._write(outcome))
        self._finishing.append(self._task(self._finish(outcome, batch, self._writing, previous)))

    async def _write(self, outcome: BatchOutcome) -> bool:
        await self._in_thread(self.write, outcome)
        return outcome.refused

    async def _finish(
        self,
        outcome: BatchOutcome,
        batch: list[Message],
        writing: asyncio.Task[bool],
        previous: asyncio.Task[None] | None,
    ) -> None:
        await writing
        if previous is not None:
            await previous
        await self.finish(outcome, batch)
        assert self._layers[0] is outcome.states, "batches finish in order"
        self._layers.pop(0)

    def _task(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(self._exit_if_failed)
        return task

    @staticmethod
    async def _in_thread(step: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(step, *args)
        except Exception:
            log.exception("the pathway handler failed on a batch; exiting")
            os._exit(70)

    @staticmethod
    def _exit_if_failed(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("a step of the batch pipeline failed; exiting", exc_info=task.exception())
            os._exit(70)


def forget_partitions(
    states: MutableMapping[str, Any], partition_of: MutableMapping[str, int], gone: set[int]
) -> int:
    """Drop the states of the patients whose partition is in `gone`; returns how many."""
    dropped = [pid for pid, partition in partition_of.items() if partition in gone]
    for pid in dropped:
        states.pop(pid, None)
        del partition_of[pid]
    return len(dropped)


def progress_row(
    topic: str,
    partition: int,
    worker: str,
    next_offset: int | None,
    highwater: int | None,
    now: datetime,
) -> dict[str, Any]:
    """A `stream_progress` row: `next_offset` is the first offset not yet applied, `highwater`
    the partition's end as last fetched (one past its last record)."""
    lag = None
    if next_offset is not None and highwater is not None:
        lag = max(highwater - next_offset, 0)
    return {
        "topic": topic,
        "partition": partition,
        "worker": worker,
        "processed_offset": None if next_offset is None else next_offset - 1,
        "highwater": highwater,
        "lag": lag,
        "reported_at": now,
    }


def partition_for(patient_id: str, partitions: int) -> int:
    """The partition a producer with the default partitioner sends `patient_id` to."""
    return (murmur2(patient_id.encode()) & 0x7FFFFFFF) % partitions


def register_agents(app: ParcoursApp, topics: Topics, sink: SqlSink, settings: Settings) -> None:
    """Declare the topics, the pathway state table, the batch handler and the timers of `app`."""
    raw = app.topic(topics.raw, key_type=bytes, value_type=bytes, value_serializer="raw")
    dead = app.topic(topics.deadletter, key_type=bytes, value_type=bytes, value_serializer="raw")
    alerts = app.topic(topics.alerts, key_type=bytes, value_type=bytes, value_serializer="raw")
    # Values are `PatientState.to_json()` text: the worker serialises each state once, with
    # orjson, and Faust's JSON codec only quotes that text for the changelog.
    states = app.Table("pathway-state", default=None, partitions=settings.topic_partitions)
    processor = BatchProcessor(sink, rules_from_settings(settings))

    # The changelog records are sent as Faust's table would send them, in its codecs.
    changelog_topic = cast(Topic, states.changelog_topic)

    def dumps_key(pid: str) -> bytes:
        return codecs.dumps(changelog_topic.key_serializer, pid)

    def dumps_value(value: str) -> bytes:
        return codecs.dumps(changelog_topic.value_serializer, value)

    known_partition: dict[str, int] = {}
    # raw partition → the offset after the last message whose batch this worker applied.
    applied: dict[int, int] = {}

    async def apply(outcome: BatchOutcome) -> None:
        changelog = []
        for pid, (partition, value) in outcome.states.items():
            partition = known_partition.setdefault(pid, partition)
            # One changelog record per patient per batch, on the partition of its events: the
            # table's own setter would take the partition of whichever event came last.
            states.data[pid] = value
            changelog.append((partition, dumps_key(pid), dumps_value(value)))
        # futures of the records sent for this batch
        sent: list[Any] = await app.send_batched(changelog_topic.get_topic_name(), changelog)
        for alert_key, alert in outcome.alerts:
            sent.append(await alerts.send(key=alert_key, value=json.dumps(alert).encode()))
        for raw_key, payload, reason in outcome.rejects:
            log.warning("dead-lettered a raw message: %s", reason)
            sent.append(
                await dead.send(
                    key=raw_key,
                    value=payload,
                    headers={"reason": reason.encode(), "stage": b"pathway"},
                )
            )
        # The batch's offsets may be committed as soon as this returns. Faust's flush before a
        # commit gives up on its changelog buffer after 0.1 s without a send, so wait for the
        # broker to hold every record: a kill -9 must not find a committed offset whose state is
        # missing from the changelog. Shielded: a worker that stops meanwhile must not cancel the
        # records the producer is still sending.
        await asyncio.shield(asyncio.gather(*sent))

    async def finish(outcome: BatchOutcome, batch: list[Message]) -> None:
        """Once SQL holds the batch: the table, topics and acks."""
        sent = time.perf_counter()
        await apply(outcome)
        for m in batch:
            app.consumer.ack(m)
            applied[m.partition] = max(applied.get(m.partition, 0), m.offset + 1)
        log.debug(
            "batch of %d messages, %d events: rules %.3f s, SQL %.3f s (%d rows), sends %.3f s",
            len(batch),
            outcome.events,
            outcome.rules_s,
            outcome.sql_s,
            outcome.rows,
            time.perf_counter() - sent,
        )

    fold = processor.fold
    if settings.worker_fold_processes > 0:
        from streams.fold_process import FoldProcesses  # it imports this module

        folders = FoldProcesses(processor.rules, settings.worker_fold_processes)
        fold = folders.fold
        # Started with the worker: their imports take a second or two, while the group forms.
        app.before_start.append(folders.start)
    pipeline = FoldWritePipeline(fold, processor.write, states.data, finish)

    # mode types a receiver as a union of two callables, which mypy cannot match to a function.
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        # A revoked partition's patients now belong to another worker. Faust's memory store
        # forgets only the states it recovered from the changelog, not those this worker wrote:
        # its timers would raise alerts on those stale copies and write them back to SQL and to
        # the changelog, over the new owner's. What comes back is recovered from the changelog.
        revoked: set[TP] = args[0]
        gone = {tp.partition for tp in revoked if tp.topic == raw.get_topic_name()}
        async with pipeline.lock:
            await pipeline.written()
            dropped = forget_partitions(states.data, known_partition, gone)
            for partition in gone:
                applied.pop(partition, None)
        log.info("forgot %d patient states of revoked partitions %s", dropped, sorted(gone))

    @app.batch_handler(raw, busy=pipeline.busy)
    async def pathway(batch: list[Message]) -> None:
        messages = [RawMessage(m.key, m.value, m.partition) for m in batch if m.value is not None]
        await pipeline.submit(messages, batch)

    if settings.worker_progress_interval_s > 0:
        worker = f"{socket.gethostname()}:{os.getpid()}"

        @app.timer(settings.worker_progress_interval_s)
        async def report_progress() -> None:
            """Tell the Feed health page how far this worker is on each of its partitions."""
            topic = raw.get_topic_name()
            held = sorted(tp for tp in app.consumer.assignment() if tp.topic == topic)
            if not held:
                return
            now = datetime.now(UTC)
            try:
                ends = await app.consumer.highwaters(*held)
                # Before its first batch on a partition, the worker is where its fetch is: at
                # the committed offset, unless a fetch is already on its way to the agent.
                nexts = {
                    tp: applied[tp.partition]
                    if tp.partition in applied
                    else await app.consumer.position(tp)
                    for tp in held
                }
            except Exception as exc:  # a rebalance took a partition away meanwhile
                log.debug("no progress report this time: %s", exc)
                return
            rows = [
                progress_row(topic, tp.partition, worker, nexts[tp], ends.get(tp), now)
                for tp in held
            ]
            await asyncio.to_thread(sink.write_progress, rows)

    if settings.pathway_timer_interval_s > 0:

        @app.timer(settings.pathway_timer_interval_s)
        async def pathway_timers() -> None:
            async with pipeline.lock:
                await pipeline.written()
                snapshot = [(k, v) for k, v in states.data.items() if v]
                outcome = await asyncio.to_thread(
                    processor.tick, snapshot, datetime.now(UTC), settings.topic_partitions
                )
                await apply(outcome)
