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

Reference data. Organizations, Locations, Practitioners and HealthcareServices arrive on the
directory topic (one compacted partition). At start the worker reads it to its end and writes its
Locations before it folds any patient event, so a stay is placed in a ward it knows whatever the
partition order of the raw topic; then it follows the topic, each new batch of it taking its
turn in the pipeline like a raw batch.

Errors are data. A message the rules cannot map or fold, or whose rows the database refuses, goes
to the dead-letter topic with its reason, is recorded for the Feed health page
(`ingest_rejections`, under the integrator its headers name, else `stream-worker`) and counted
on `/metrics`; the rest of its batch is written. A database that cannot answer is waited for,
with backoff.

Stopping. On SIGTERM the statement under way is cancelled, the fold processes are ended, and the
batch not yet finished is left to be replayed from its offsets at the next start.

Idle. Once a backfill is over (no large batch for `IDLE_S`), the worker stops its fold processes
(the next batch starts them again), collects its garbage, gives free memory back to the system and
vacuums the tables the backfill rewrote.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import orjson
from faust import Topic
from faust.serializers import codecs
from faust.types import TP, Message

from parcours.settings import Settings
from parcours.topics import Topics
from streams.runtime.batch import (
    BatchOutcome,
    BatchProcessor,
    RawMessage,
    StateValue,
    WorkerStopping,
    describe_error,
    rules_from_settings,
)
from streams.runtime.fold_process import FoldProcesses
from streams.runtime.gc_tuning import IDLE_S, give_back_memory
from streams.sink.writer import SqlSink

if TYPE_CHECKING:
    from streams.runtime.faust_compat import ParcoursApp

log = logging.getLogger(__name__)

LARGE_BATCH = 1000  # messages: such a batch is logged at INFO, and memory is given back after it
# Seconds without a batch after which the census hours a backlog left pending are recomputed.
CENSUS_IDLE_S = 1.0


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
        fold: Callable[[list[RawMessage], Callable[[str], StateValue | None]], BatchOutcome],
        write: Callable[[BatchOutcome], None],
        table: Mapping[str, StateValue | None],
        finish: Callable[[BatchOutcome, list[Message]], Awaitable[None]],
    ) -> None:
        self.fold = fold
        self.write = write
        self.table = table
        self.finish = finish
        self.lock = asyncio.Lock()  # held by `submit`, and by whoever needs every state written
        # Set when the worker stops: a step that fails then leaves its batch to be replayed.
        self.stopping = threading.Event()
        # The states of the batches folded but not finished, oldest first (`outcome.states`:
        # a write drops the patients whose rows were refused).
        self._layers: list[dict[str, tuple[int, bytes]]] = []
        self._folding: asyncio.Task[None] | None = None
        self._writing: asyncio.Task[bool] | None = None  # True: rows were refused
        self._finishing: list[asyncio.Task[None]] = []

    def get_state(self, pid: str) -> StateValue | None:
        for states in reversed(self._layers):
            found = states.get(pid)
            if found is not None:
                return found[1]
        return self.table.get(pid)

    def busy(self) -> bool:
        """Whether `submit` would wait for the previous batch's fold."""
        return self._folding is not None and not self._folding.done()

    async def submit(
        self, messages: list[RawMessage], batch: list[Message], backlog: bool = False
    ) -> None:
        """Start folding a batch, once the previous batch's fold is done. A `backlog` batch has
        more messages behind it: it may leave the census to a later write (`SqlSink`)."""
        async with self.lock:
            if self._folding is not None:
                await self._folding
            self._folding = self._task(self._fold_then_write(messages, batch, backlog))

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

    async def _fold_then_write(
        self, messages: list[RawMessage], batch: list[Message], backlog: bool
    ) -> None:
        outcome = await self._in_thread(self.fold, messages, self.get_state)
        if self._writing is not None and await self._writing:
            outcome = await self._in_thread(self.fold, messages, self.get_state)
        outcome.sink_batch.backlog = backlog
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
        return await asyncio.to_thread(step, *args)

    def _exit_if_failed(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        if self.stopping.is_set() or isinstance(task.exception(), WorkerStopping):
            log.info("stopping: the batch under way will be replayed at the next start")
            return
        # Data never gets here (it is dead-lettered); a fold process gone or a bug does.
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
        # A broker's end offset can run behind what was read (Tansu reports the last produce
        # batch's base offset + 1): the end is at least what the worker has applied.
        highwater = max(highwater, next_offset)
        lag = highwater - next_offset
    return {
        "topic": topic,
        "partition": partition,
        "worker": worker,
        "processed_offset": None if next_offset is None else next_offset - 1,
        "highwater": highwater,
        "lag": lag,
        "reported_at": now,
    }


class Worker:
    """A stream worker's handlers on its Faust app: the topics, the pathway state table, the batch
    handler, the directory reader, the timers and the `/metrics` page.

    `register` declares them on the app; the collaborators (the sink, the folder, the pipeline)
    are built here from the settings, and the fold processes start with the app."""

    def __init__(self, app: ParcoursApp, topics: Topics, sink: SqlSink, settings: Settings) -> None:
        self.app = app
        self.topics = topics
        self.sink = sink
        self.settings = settings
        self.raw = app.topic(topics.raw, key_type=bytes, value_type=bytes, value_serializer="raw")
        self.dead = app.topic(
            topics.deadletter, key_type=bytes, value_type=bytes, value_serializer="raw"
        )
        self.alerts = app.topic(
            topics.alerts, key_type=bytes, value_type=bytes, value_serializer="raw"
        )
        # Values are `pack_state` bytes: the worker serialises each state once, and the table
        # and its changelog hold those bytes as they are.
        self.states = app.Table(
            "pathway-state", default=None, partitions=settings.topic_partitions, value_type=bytes
        )
        self.processor = BatchProcessor(sink, rules_from_settings(settings))
        self.metrics = WorkerMetrics()
        # The changelog records are sent as Faust's table would send them, in its codecs.
        self.changelog_topic = cast(Topic, self.states.changelog_topic)
        self.known_partition: dict[str, int] = {}
        # raw partition → the offset after the last message whose batch this worker applied.
        self.applied: dict[int, int] = {}
        fold = self.processor.fold
        self.folders: FoldProcesses | None = None
        if settings.worker_fold_processes > 0:
            self.folders = FoldProcesses(self.processor.rules, settings.worker_fold_processes)
            fold = self.folders.fold
        self.pipeline = FoldWritePipeline(fold, self.processor.write, self.states.data, self.finish)
        self.pipeline.stopping = self.processor.stopping
        self.directory_loaded = asyncio.Event()
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        # When the last large batch finished, until the memory is given back (`collect_when_idle`).
        self.large_batch_at: float | None = None
        # When the last batch finished (`flush_census_when_idle`).
        self.batch_at = time.monotonic()
        # When the last batch submitted had more messages behind it (None: it had not).
        self.backlog_at: float | None = None

    def register(self) -> None:
        """Declare the handlers, timers and pages on the app."""
        app, settings = self.app, self.settings
        if self.folders is not None:
            # Started with the worker: their imports take a second or two, while the group forms.
            app.before_start.append(self.folders.start)
        app.on_stop_requested.append(self.stop_now)
        app.task(self.follow_directory)
        if settings.worker_web_port > 0:

            @app.page("/metrics")
            async def metrics_page(web: Any, request: Any) -> Any:
                return web.text(self.render_metrics(), content_type="text/plain; version=0.0.4")

        # mode types a receiver as a union of two callables, which mypy cannot match to a method.
        app.on_partitions_revoked.connect(self.forget_revoked)  # type: ignore[arg-type]
        app.batch_handler(self.raw, busy=self.pipeline.busy)(self.pathway)
        if settings.worker_progress_interval_s > 0:
            app.timer(settings.worker_progress_interval_s)(self.report_progress)
        if settings.pathway_timer_interval_s > 0:
            app.timer(settings.pathway_timer_interval_s)(self.pathway_timers)
        app.timer(1.0)(self.collect_when_idle)
        app.timer(CENSUS_IDLE_S)(self.flush_census_when_idle)

    def dumps_key(self, pid: str) -> bytes:
        return codecs.dumps(self.changelog_topic.key_serializer, pid)

    def dumps_value(self, value: bytes) -> bytes:
        return codecs.dumps(self.changelog_topic.value_serializer, value)

    async def apply(self, outcome: BatchOutcome, batch: Sequence[Message] = ()) -> None:
        """The table, the changelog, the alerts and the dead letters of a written batch (each
        dead letter carries the headers that say who sent its message, from `batch`)."""
        metrics = self.metrics
        changelog = []
        for pid, (partition, value) in outcome.states.items():
            partition = self.known_partition.setdefault(pid, partition)
            # One changelog record per patient per batch, on the partition of its events: the
            # table's own setter would take the partition of whichever event came last.
            self.states.data[pid] = value
            changelog.append((partition, self.dumps_key(pid), self.dumps_value(value)))
        # futures of the records sent for this batch
        sent: list[Any] = await self.app.send_batched(
            self.changelog_topic.get_topic_name(), changelog
        )
        for alert_key, alert in outcome.alerts:
            sent.append(await self.alerts.send(key=alert_key, value=json.dumps(alert).encode()))
        origin = senders(batch) if outcome.rejects else {}
        for raw_key, payload, reason in outcome.rejects:
            stage = dead_letter_stage(reason)
            log.warning("dead-lettered a raw message (%s)", stage)
            metrics.dead_lettered[stage] = metrics.dead_lettered.get(stage, 0) + 1
            sent.append(
                await self.dead.send(
                    key=raw_key,
                    value=payload,
                    headers={
                        **origin.get(payload, {}),
                        "reason": reason[:2000].encode(),
                        "stage": stage.encode(),
                    },
                )
            )
        if outcome.rejects:
            now = datetime.now(UTC)
            try:
                rows = [
                    rejection_row(k, v, r, now, origin.get(v, {}).get("source"))
                    for k, v, r in outcome.rejects
                ]
                await asyncio.to_thread(self.sink.write_rejections, rows)
            except Exception as exc:  # the dead letters are sent; the page can miss a row
                log.warning("dead letters not recorded for Feed health: %s", type(exc).__name__)
        # The batch's offsets may be committed as soon as this returns. Faust's flush before a
        # commit gives up on its changelog buffer after 0.1 s without a send, so wait for the
        # broker to hold every record: a kill -9 must not find a committed offset whose state is
        # missing from the changelog. Shielded: a worker that stops meanwhile must not cancel the
        # records the producer is still sending.
        await asyncio.shield(asyncio.gather(*sent))

    async def finish(self, outcome: BatchOutcome, batch: list[Message]) -> None:
        """Once SQL holds the batch: the table, topics and acks."""
        metrics = self.metrics
        sent = time.perf_counter()
        await self.apply(outcome, batch)
        for m in batch:
            self.app.consumer.ack(m)
            self.applied[m.partition] = max(self.applied.get(m.partition, 0), m.offset + 1)
        if len(batch) >= LARGE_BATCH:
            # A backlog's batch leaves hundreds of MB free in the C heap: give it back.
            await asyncio.to_thread(give_back_memory)
            self.large_batch_at = time.monotonic()
        self.batch_at = time.monotonic()
        metrics.batches += 1
        metrics.messages += len(batch)
        metrics.events += outcome.events
        metrics.db_retries = self.processor.db_retries
        # A backlog's batches are worth a line each; a live feed's small ones are not.
        log.log(
            logging.INFO if len(batch) >= LARGE_BATCH else logging.DEBUG,
            "batch of %d messages, %d events: rules %.3f s, SQL %.3f s (%d rows), sends %.3f s",
            len(batch),
            outcome.events,
            outcome.rules_s,
            outcome.sql_s,
            outcome.rows,
            time.perf_counter() - sent,
        )

    async def collect_when_idle(self) -> None:
        """After a backfill: stop the fold processes (the next batch starts them again), collect
        the garbage, give the free memory back and vacuum the tables the backfill rewrote, once."""
        # The collector runs seldom (`tune_gc`): cycles left by a backfill's batches would stay.
        if self.large_batch_at is None or time.monotonic() - self.large_batch_at < IDLE_S:
            return
        if self.pipeline.busy():
            return
        self.large_batch_at = None
        async with self.pipeline.lock:
            await self.pipeline.written()
            if self.folders is not None:
                # They hold decoded states and a heap the size of a backfill's batches.
                await asyncio.to_thread(self.folders.stop)
                log.info("fold processes stopped until the next batch")
            gc.collect()
            await asyncio.to_thread(give_back_memory)
            try:
                await asyncio.to_thread(self.sink.vacuum)
            except Exception as exc:  # the next backfill, or autovacuum, will do it
                log.warning("tables not vacuumed after the backfill: %s", describe_error(exc))

    async def flush_census_when_idle(self) -> None:
        """Once no batch has come for `CENSUS_IDLE_S`, recompute the census hours that a
        backlog's batches left pending (`SqlSink`), and send the census alerts that changed."""
        if not (self.sink.census_pending and self.directory_loaded.is_set()):
            return
        if self.pipeline.busy():
            return
        if time.monotonic() - self.batch_at < CENSUS_IDLE_S:
            return
        backlog_at = self.backlog_at
        if backlog_at is not None and time.monotonic() - backlog_at < self.sink.census_every_s:
            # The last batch had more behind it: the next is on its way, and the pause is the
            # consumer gathering it (a backlog's last batch recomputes the census itself).
            return
        async with self.pipeline.lock:
            await self.pipeline.written()
            outcome = BatchOutcome()
            try:
                await asyncio.to_thread(self.processor.write, outcome)
            except WorkerStopping:
                return
            await self.apply(outcome)
        if outcome.rows:
            log.info("census recomputed after the backlog (%d rows)", outcome.rows)

    def stop_now(self) -> None:
        """On SIGTERM: give up retries, cancel the statement under way, end the folds."""
        self.processor.stopping.set()
        self.sink.cancel()
        if self.folders is not None:
            self.folders.terminate()

    async def follow_directory(self) -> None:
        """Read the directory topic to its end before any patient event, then follow it."""
        while True:
            try:
                await read_directory(
                    self.settings.bootstrap,
                    self.topics.directory,
                    self.pipeline,
                    self.directory_loaded,
                    self.metrics,
                    max(1, self.settings.worker_batch_size),
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("directory topic not readable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(2.0)

    def render_metrics(self) -> str:
        """The `/metrics` page."""
        self.metrics.db_retries = self.processor.db_retries
        return self.metrics.render()

    async def forget_revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        """Forget the states of the raw partitions taken from this worker."""
        # A revoked partition's patients now belong to another worker. Faust's memory store
        # forgets only the states it recovered from the changelog, not those this worker wrote:
        # its timers would raise alerts on those stale copies and write them back to SQL and to
        # the changelog, over the new owner's. What comes back is recovered from the changelog.
        revoked: set[TP] = args[0]
        gone = {tp.partition for tp in revoked if tp.topic == self.raw.get_topic_name()}
        async with self.pipeline.lock:
            await self.pipeline.written()
            dropped = forget_partitions(self.states.data, self.known_partition, gone)
            for partition in gone:
                self.applied.pop(partition, None)
        log.info("forgot %d patient states of revoked partitions %s", dropped, sorted(gone))

    async def pathway(self, batch: list[Message]) -> None:
        """The batch handler of the raw topic: into the pipeline, once the directory is read."""
        if not self.directory_loaded.is_set():
            await self.directory_loaded.wait()
        # A record without a value (a tombstone) reads as empty: it goes to the dead letters.
        messages = [RawMessage(m.key, m.value or b"", m.partition) for m in batch]
        backlog = self.behind(batch)
        self.backlog_at = time.monotonic() if backlog else None
        await self.pipeline.submit(messages, batch, backlog)

    def behind(self, batch: list[Message]) -> bool:
        """Whether a large batch has more messages behind it on one of its partitions, as far as
        the consumer's last fetch knows (an end offset it does not know counts as none)."""
        if len(batch) < LARGE_BATCH:
            return False
        last: dict[TP, int] = {}
        for m in batch:
            last[m.tp] = max(last.get(m.tp, -1), m.offset)
        consumer = self.app.consumer
        for tp, offset in last.items():
            try:
                end = consumer.highwater(tp)
            except Exception:  # the partition was just revoked, or the consumer is stopping
                end = None
            if end is not None and end > offset + 1:
                return True
        return False

    async def report_progress(self) -> None:
        """Tell the Feed health page how far this worker is on each of its partitions."""
        app = self.app
        topic = self.raw.get_topic_name()
        held = sorted(tp for tp in app.consumer.assignment() if tp.topic == topic)
        if not held:
            return
        now = datetime.now(UTC)
        try:
            ends = await app.consumer.highwaters(*held)
            # Before its first batch on a partition, the worker is where its fetch is: at
            # the committed offset, unless a fetch is already on its way to the agent.
            nexts = {
                tp: self.applied[tp.partition]
                if tp.partition in self.applied
                else await app.consumer.position(tp)
                for tp in held
            }
        except Exception as exc:  # a rebalance took a partition away meanwhile
            log.debug("no progress report this time: %s", exc)
            return
        rows = [
            progress_row(topic, tp.partition, self.worker_name, nexts[tp], ends.get(tp), now)
            for tp in held
        ]
        await asyncio.to_thread(self.sink.write_progress, rows)

    async def pathway_timers(self) -> None:
        """Move every patient's clock to the wall time; write and send the alerts that changed."""
        async with self.pipeline.lock:
            await self.pipeline.written()
            snapshot = [(k, v) for k, v in self.states.data.items() if v]
            outcome = await asyncio.to_thread(
                self.processor.tick, snapshot, datetime.now(UTC), self.settings.topic_partitions
            )
            await self.apply(outcome)


async def read_directory(
    bootstrap: str,
    topic: str,
    pipeline: FoldWritePipeline,
    loaded: asyncio.Event,
    metrics: WorkerMetrics,
    batch_size: int,
) -> None:
    """Read the directory topic whole into `pipeline`, wait until it is written, set `loaded`,
    then follow the topic for good (each fetch is a batch of the pipeline)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.runtime.faust_compat import log_ends

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=8 * 1024**2,
    )
    await consumer.start()
    try:
        await consumer.topics()  # metadata
        partitions = sorted(consumer.partitions_for_topic(topic) or [])
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        reported = await consumer.end_offsets(tps) if tps else {}
        # The broker's end can fall short of the last record (`log_ends`).
        ends = await log_ends(
            bootstrap,
            [TP(tp.topic, tp.partition) for tp in tps],
            {TP(tp.topic, tp.partition): end for tp, end in reported.items()},
        )
        pending: list[RawMessage] = []

        async def behind() -> bool:
            for tp in tps:
                if await consumer.position(tp) < ends.get(TP(tp.topic, tp.partition), 0):
                    return True
            return False

        while await behind():
            fetched = await consumer.getmany(timeout_ms=500, max_records=batch_size)
            for records in fetched.values():
                pending += [RawMessage(r.key, r.value, 0) for r in records if r.value is not None]
            if len(pending) >= batch_size:
                metrics.directory += len(pending)
                await pipeline.submit(pending, [])
                pending = []
        if pending:
            metrics.directory += len(pending)
            await pipeline.submit(pending, [])
        async with pipeline.lock:
            await pipeline.written()
        if not loaded.is_set():
            log.info("directory read: %d reference resources", metrics.directory)
        loaded.set()
        while True:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=batch_size)
            news = [
                RawMessage(r.key, r.value, 0)
                for records in fetched.values()
                for r in records
                if r.value is not None
            ]
            if news:
                metrics.directory += len(news)
                await pipeline.submit(news, [])
    finally:
        await consumer.stop()


class WorkerMetrics:
    """Counters of a worker, shown on its `/metrics` page (Prometheus text format)."""

    def __init__(self) -> None:
        self.batches = 0
        self.messages = 0
        self.events = 0
        self.directory = 0
        self.db_retries = 0
        self.dead_lettered: dict[str, int] = {}

    def render(self) -> str:
        """The counters in Prometheus' text exposition format."""
        lines = [
            "# HELP parcours_worker_batches_total Raw batches applied.",
            "# TYPE parcours_worker_batches_total counter",
            f"parcours_worker_batches_total {self.batches}",
            "# HELP parcours_worker_messages_total Raw messages applied.",
            "# TYPE parcours_worker_messages_total counter",
            f"parcours_worker_messages_total {self.messages}",
            "# HELP parcours_worker_events_total Canonical events folded.",
            "# TYPE parcours_worker_events_total counter",
            f"parcours_worker_events_total {self.events}",
            "# HELP parcours_worker_directory_messages_total Directory messages read.",
            "# TYPE parcours_worker_directory_messages_total counter",
            f"parcours_worker_directory_messages_total {self.directory}",
            "# HELP parcours_worker_db_retries_total Writes retried on a database not answering.",
            "# TYPE parcours_worker_db_retries_total counter",
            f"parcours_worker_db_retries_total {self.db_retries}",
            "# HELP parcours_worker_dead_lettered_total Messages sent to the dead-letter topic.",
            "# TYPE parcours_worker_dead_lettered_total counter",
        ]
        stages = self.dead_lettered or {"mapping": 0}
        lines += [
            f'parcours_worker_dead_lettered_total{{stage="{stage}"}} {n}'
            for stage, n in sorted(stages.items())
        ]
        return "\n".join(lines) + "\n"


def dead_letter_stage(reason: str) -> str:
    """The stage a dead-letter reason comes from: `sql`, `pathway` or `mapping`."""
    head = reason.split(":", 1)[0]
    return head if head in ("sql", "pathway") else "mapping"


# The headers the gateway and the MLLP listener put on a raw message that say who sent it; the
# worker copies them onto the message's dead letter.
ORIGIN_HEADERS = ("source", "received-at", "resource-type", "version")


def senders(batch: Sequence[Message]) -> dict[bytes, dict[str, bytes]]:
    """The origin headers of each message of `batch` that has some, by payload."""
    found: dict[bytes, dict[str, bytes]] = {}
    for m in batch:
        headers = m.headers.items() if isinstance(m.headers, Mapping) else (m.headers or ())
        kept = {
            str(k): bytes(v) for k, v in headers if k in ORIGIN_HEADERS and isinstance(v, bytes)
        }
        if kept and m.value is not None:
            found[m.value] = kept
    return found


def rejection_row(
    key: bytes | None,
    payload: bytes,
    reason: str,
    now: datetime,
    source: bytes | None = None,
) -> dict[str, Any]:
    """An `ingest_rejections` row for a message the worker dead-lettered (no HTTP status: 0),
    under the integrator that sent it when its headers say so."""
    kind = rid = None
    try:
        # orjson: nesting too deep for the json module's recursion is a plain error here.
        resource = orjson.loads(payload)
    except orjson.JSONDecodeError:  # whatever the payload is, its row is written
        resource = None
    if isinstance(resource, dict):
        kind = str(resource.get("resourceType") or "")[:64] or None
        rid = str(resource.get("id") or "")[:128] or None
    if rid is None and key:
        rid = key.decode("utf-8", "replace")[:128]

    def clean(text: str | None) -> str | None:
        # PostgreSQL text refuses NUL and lone surrogates, which is what put some of these
        # messages here.
        if not text:
            return text
        return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")

    # The same message dead-lettered again (a replay, the directory read at the next start, by
    # every worker) is the same row.
    digest = hashlib.blake2b(digest_size=16)
    for part in (source or b"", key or b"", payload, reason.encode("utf-8", "replace")):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return {
        "source": clean(source.decode("utf-8", "replace")[:64]) if source else "stream-worker",
        "received_at": now,
        "http_status": 0,
        "reason": f"worker-{dead_letter_stage(reason)}",
        "resource_type": clean(kind),
        "resource_id": clean(rid),
        "expression": None,
        "diagnostics": clean(reason[:2000]),
        "operation_outcome": {},
        "dedupe_key": digest.hexdigest(),
    }
