"""Every override of Faust's internals, in one module: the app class, its batch consumer, recovery.

These classes patch private methods of faust-streaming, so the module refuses to import with any
other version than the one they were written and tested against (`FAUST_VERSION`). The worker is
built from them in `streams.runtime.bootstrap`. The app holds one table, `pathway-state`
(patient id → `batch.pack_state(state)`), co-partitioned with the raw topic, which is keyed by
patient; SQL is written by `streams.sink.writer` in one transaction per batch.

The raw topic is read a batch at a time (`ParcoursApp.batch_handler`), not through a Faust agent:
Faust's path from the consumer to an agent's stream costs about 100 µs of CPU per message (four
tasks and three cancellations, a queue, an event and its sensors), measured on an agent that only
counted its messages. That is more than the pathway rules cost, and ten times a bare aiokafka
loop. Faust still does the rest: the consumer group, table recovery and changelog, offset commits
of acknowledged messages, timers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import datetime
from functools import partial
from typing import Any, cast

import aiokafka
import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import LeaveGroupRequest
from aiokafka.record.default_records import DefaultRecordBatch, _DefaultRecordBatchPy
from aiokafka.record.memory_records import _MemoryRecordsPy
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, Message, TopicT

log = logging.getLogger(__name__)

FAUST_VERSION = "0.15.3"
if faust.__version__ != FAUST_VERSION:
    raise ImportError(
        f"streams.runtime.faust_compat overrides faust-streaming {FAUST_VERSION} internals; "
        f"faust {faust.__version__} is installed"
    )
AIOKAFKA_VERSION = "0.14.0"
if aiokafka.__version__ != AIOKAFKA_VERSION:
    raise ImportError(
        f"streams.runtime.faust_compat reads aiokafka {AIOKAFKA_VERSION}'s record batches "
        f"(`TolerantRecords`); aiokafka {aiokafka.__version__} is installed"
    )
if not hasattr(GroupCoordinator, "_maybe_leave_group"):
    raise ImportError(
        "streams.runtime.faust_compat replaces aiokafka's GroupCoordinator._maybe_leave_group, "
        "which the installed aiokafka does not have"
    )


async def log_ends(
    bootstrap: str, tps: Iterable[TP], reported: Mapping[TP, int], timeout_s: float = 30.0
) -> dict[TP, int]:
    """The offset after the last record of each partition, read from the records themselves.

    A broker's ListOffsets answer (`reported`) should be that already. Tansu's is the base offset
    of the partition's last record batch plus one, which is short by the rest of that batch. The
    tail from the reported offset's record on is read until every partition has answered and a
    fetch then comes back empty; on a broker that answers right, that is one record per partition.
    """
    tps = [tp for tp in tps if reported.get(tp)]
    ends = {tp: reported.get(tp, 0) for tp in tps}
    if not tps:
        return ends
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    answered: set[TP] = set()
    try:
        consumer.assign([TopicPartition(tp.topic, tp.partition) for tp in tps])
        for tp in tps:
            consumer.seek(TopicPartition(tp.topic, tp.partition), max(ends[tp] - 1, 0))
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for ktp, records in batches.items():
                if records:
                    tp = TP(ktp.topic, ktp.partition)
                    answered.add(tp)
                    ends[tp] = max(ends[tp], records[-1].offset + 1)
            # An empty fetch ends the read only once each partition has given its records: the
            # first fetches of a new consumer may come back empty before any data arrives.
            if not any(batches.values()) and answered.issuperset(tps):
                return ends
            if loop.time() > deadline:
                log.warning("changelog tails not read in %ss: %s", timeout_s, set(tps) - answered)
                return ends
    finally:
        await consumer.stop()


READY = "Worker ready; consuming"


def consumed_partitions(log_text: str, topic: str) -> list[list[int]]:
    """The partitions of `topic` that a worker consumed after each of its rebalances, read from
    its log (INFO): how tests and the bench see the partitions shared between workers."""
    line = re.compile(rf"{READY} .*{re.escape(topic)} \[([0-9, ]*)\]")
    return [[int(p) for p in m.group(1).split(",") if p.strip()] for m in line.finditer(log_text)]


def ready_at(log_text: str, topic: str) -> float | None:
    """When a worker first said it was ready to consume `topic` (epoch seconds, from the time
    stamp of the log line), or None if it has not yet."""
    line = re.compile(rf"^\[([0-9-]+ [0-9:]+,[0-9]+)\] .*{READY} .*{re.escape(topic)} ", re.M)
    found = line.search(log_text)
    if found is None:
        return None
    # Log time stamps are local time, to the millisecond.
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp()


class SeekThenResumeRecovery(Recovery):
    """Faust's table recovery, except that source partitions resume only once seeked, and that
    it reads the changelog to its true end.

    Faust 0.15.3 resumes the source partitions, then awaits their seek to the committed offsets.
    On a restart its fetcher is already running (it has just read the changelog), so records
    fetched during that await reach the agent, and the seek then rewinds the read offsets under
    them. The consumer's ack bookkeeping is left with duplicated offsets and a range of records
    that is neither processed nor acked: the commit never gets past it, and the events in it are
    lost. Seeking while the partitions are still paused makes the committed record the first one
    delivered.

    Recovery reads each changelog partition up to its highwater. Tansu reports one short of the
    end by all but the first record of the last batch: the newest states of the patients in that
    batch would be missed, and the events replayed after the committed offset would land on
    older states. `log_ends` corrects the highwaters.
    """

    async def _build_highwaters(
        self, consumer: Any, tps: set[TP], destination: Counter[TP], title: str
    ) -> None:
        await super()._build_highwaters(consumer, tps, destination, title)
        app = cast(Any, self.app)
        bootstrap = ",".join(f"{url.host}:{url.port}" for url in app.conf.broker)
        # Faust keeps "highwater" as the offset of the last record (end - 1).
        ends = await log_ends(bootstrap, tps, {tp: destination[tp] + 1 for tp in tps})
        for tp, end in ends.items():
            if end - 1 != destination[tp]:
                self.log.info("Changelog %r ends at %s, not %s", tp, end - 1, destination[tp])
                destination[tp] = end - 1

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """`Recovery.on_recovery_completed` of Faust, with the seek moved before the resume."""
        app = cast(Any, self.app)
        consumer = app.consumer
        self.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
            await self._wait(
                self._rewind_uncommitted(consumer, assignment),
                timeout=app.conf.broker_request_timeout,
            )
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        self.completed.set()
        app.flow_control.resume()
        consumer.resume_flow()
        await app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        sources: dict[str, list[int]] = {}
        for tp in sorted(assignment):
            if not self._is_changelog_tp(tp):
                sources.setdefault(tp.topic, []).append(tp.partition)
        self.log.info("%s %s", READY, ", ".join(f"{t} {p}" for t, p in sources.items()))

    async def _rewind_uncommitted(self, consumer: Any, assignment: Iterable[TP]) -> None:
        """Seek the source partitions that have no committed offset to their start.

        `perform_seek` seeks only the partitions with a committed offset. A partition without
        one stays where its fetch got to, and the records fetched there before the rebalance
        settled were dropped (their generation is gone): a kill -9 before the first commit of a
        partition lost its first records. The consumer group reads from the earliest offset.
        """
        fresh = [
            tp
            for tp in assignment
            if not self._is_changelog_tp(tp) and not consumer._committed_offset.get(tp)
        ]
        if fresh:
            await consumer._thread.seek_to_beginning(
                *(TopicPartition(tp.topic, tp.partition) for tp in fresh)
            )
            for tp in fresh:
                consumer._read_offset[tp] = None


class SeekThenResumeTableManager(TableManager):
    """Faust's table manager, recovering with `SeekThenResumeRecovery`."""

    @property
    def recovery(self) -> Recovery:
        """The recovery service of the tables."""
        if self._recovery is None:
            self._recovery = SeekThenResumeRecovery(
                self.app, self, beacon=self.beacon, loop=self.loop
            )
        return self._recovery


BatchHandler = Callable[[list[Message]], Awaitable[None]]


async def leave_group(coordinator: GroupCoordinator) -> None:
    """`GroupCoordinator._maybe_leave_group` of aiokafka, from a group's generation 0 on.

    aiokafka leaves a group only from generation 1 on, Kafka's first. Tansu numbers a group's
    first generation 0: the first worker of a group stopped without leaving it, and the next
    one's first join did not complete; it joined again once the stopped worker's session had
    expired, about 20 s after its start instead of 10.
    """
    if coordinator.generation >= 0 and coordinator._group_instance_id is None:
        request = LeaveGroupRequest(coordinator.group_id, coordinator.member_id)
        try:
            await coordinator._send_req(request)
        except KafkaError as exc:
            log.warning("could not leave consumer group %s: %s", coordinator.group_id, exc)
        else:
            log.info(
                "left consumer group %s (generation %s)",
                coordinator.group_id,
                coordinator.generation,
            )
    coordinator.reset_generation()


class FetchThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's consumer thread, with fetches that wait at most `FETCH_MAX_WAIT_MS` for data,
    that hand over nothing while every partition is paused, and that leaves its group as it
    stops (`leave_group`).

    Faust sets 1.5 s. Here a waiting fetch came back at the end of its wait rather than when a
    record arrived, so a record that found the worker idle waited 0.75 s on average: with 100 ms
    the bench's event → row latency at 200 events/s fell from p50/p99 700/1,070 ms to 213/350 ms.

    Faust asks aiokafka for the records of its active (not paused) partitions, passing its own
    set of them, and drops without a seek whatever comes back for a partition that is not active
    when the records arrive. aiokafka reads that set again while it waits, and takes an empty one
    for "every partition". At the end of table recovery every partition is paused for a while:
    the changelog ones are done, and the source ones resume only after their seek to the
    committed offsets (`SeekThenResumeRecovery`). A fetch waiting then was handed the source
    records read since the seek, and Faust dropped them. The consumer's position was past them:
    they were read again only at the next restart, and never once a later record of their
    partition had been handled, since Faust takes the offsets skipped up to it for a gap and
    commits over them. The set is copied once per fetch, and an empty one fetches nothing.
    """

    FETCH_MAX_WAIT_MS = 100

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.FETCH_MAX_WAIT_MS  # read by its fetcher at start
        return consumer

    async def on_thread_stop(self) -> None:
        coordinator = getattr(self._consumer, "_coordinator", None)
        if isinstance(coordinator, GroupCoordinator):
            # The coordinator calls it from its close, when the consumer stops.
            coordinator._maybe_leave_group = partial(leave_group, coordinator)  # type: ignore[method-assign]
        await super().on_thread_stop()

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: set[TP] | None,
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        # None: a client-only app, which reads every partition it is assigned.
        partitions = None if active_partitions is None else set(active_partitions)
        if partitions is not None and not partitions:
            return {}
        return await super()._fetch_records(
            consumer,
            partitions,  # type: ignore[arg-type]
            timeout=timeout,
            max_records=max_records,
        )


class _ReplacingText(bytes):
    """A header key's bytes whose `decode` puts U+FFFD for what is not UTF-8."""

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes.decode(self, encoding, "replace")


class _ReplacingBuffer(bytearray):
    """A record batch's buffer whose slices are `_ReplacingText`: aiokafka's Python reader
    decodes a header key as a slice of its buffer (keys and values it copies with `bytes()`)."""

    def __getitem__(self, index: Any) -> Any:
        found = super().__getitem__(index)
        return _ReplacingText(found) if isinstance(index, slice) else found


class _ReplacingBatch(_DefaultRecordBatchPy):
    """aiokafka's Python reader of a record batch, with header keys decoded leniently."""

    def __init__(self, buffer: bytes | bytearray | memoryview) -> None:
        super().__init__(buffer)
        self._buffer = _ReplacingBuffer(buffer)

    def _maybe_uncompress(self) -> None:
        super()._maybe_uncompress()
        if not isinstance(self._buffer, _ReplacingBuffer):
            self._buffer = _ReplacingBuffer(self._buffer)


class _TolerantBatch:
    """One record batch: its records as aiokafka's C reader reads them, up to one whose header
    key is not UTF-8, from which `_ReplacingBatch` reads the rest. Its other attributes are the
    C reader's."""

    def __init__(self, batch: Any, data: memoryview) -> None:
        self._batch = batch
        self._data = data
        self._records: Iterator[Any] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def _read(self) -> Iterator[Any]:
        read = 0
        try:
            for record in self._batch:
                yield record
                read += 1
        except UnicodeDecodeError:
            log.warning("a record's header key is not UTF-8; read with U+FFFD in its place")
            for i, record in enumerate(_ReplacingBatch(self._data)):
                if i >= read:
                    yield record

    def __iter__(self) -> Iterator[Any]:
        if self._records is None:
            self._records = self._read()
        return self._records

    def __next__(self) -> Any:
        return next(iter(self))


class TolerantRecords:
    """The records of one fetched partition (aiokafka's `MemoryRecords`), each batch read by
    aiokafka's C reader, except that a record whose header key is not UTF-8 is read with U+FFFD
    in place of the bytes that are not.

    Kafka does not check header keys, and aiokafka's reader decodes them strictly: one such
    record, sent by any client, raised in the consumer's fetch at every start, and the worker
    never read its partition again. Its key and value are read as sent, so the worker folds or
    dead-letters it like any other. Installed by `tolerate_header_keys`.
    """

    def __init__(self, data: bytes) -> None:
        self._slices = _MemoryRecordsPy(data)

    def size_in_bytes(self) -> int:
        return self._slices.size_in_bytes()

    def has_next(self) -> bool:
        return self._slices.has_next()

    def next_batch(self) -> Any:
        data = self._slices._next_slice
        batch = self._slices.next_batch()
        if data is None or not isinstance(batch, DefaultRecordBatch):
            return batch  # none, or a legacy (v0/v1) batch, which has no headers
        return _TolerantBatch(batch, data)


def tolerate_header_keys() -> None:
    """Make every consumer of this process read fetched records with `TolerantRecords`."""
    aiokafka_fetcher.MemoryRecords = TolerantRecords  # type: ignore[misc,assignment]


# While a batch handler is busy, how often the consumer asks again whether it can take the batch.
BUSY_POLL_S = 0.05


def gather_wait(
    held: int, fetched: int, batch_size: int, left_s: float, busy: Callable[[], bool]
) -> float | None:
    """How long the next fetch of a batch being gathered may wait, or None to hand it over now.

    `held` messages are in the batch, the last fetch brought `fetched`, `left_s` is what remains
    of `batch_within_s`. A full batch, an empty one, or a fetch that found nothing ends it. Past
    `batch_within_s` it ends too, unless the handler is `busy()` with the previous batch: then
    the batch fills on, as it could not start anyway.
    """
    if not held or not fetched or held >= batch_size:
        return None
    if left_s > 0:
        return left_s
    return BUSY_POLL_S if busy() else None


def balance(messages: list[Message], batch_size: int) -> tuple[list[Message], list[Message]]:
    """Split a gathered batch into what is handled now and what waits for the next batch, so
    that no partition gives more than its share (`batch_size` over the partitions present).

    The fetcher hands over one partition's buffered records before the next one's, so a backlog's
    batch could hold 8,000 messages of one partition and none of another: the partitions ahead
    then carry the hospital's latest known time days past the others, whose open stays are
    counted to it and rewritten by the next batch. Kept in offset order per partition; a live
    feed's batches, far below their size, are handled whole.
    """
    counts: Counter[int] = Counter(m.partition for m in messages)
    if len(counts) <= 1:
        return messages, []
    share = -(-batch_size // len(counts))
    if max(counts.values()) <= share:
        return messages, []
    taken: Counter[int] = Counter()
    now, later = [], []
    for m in messages:
        if taken[m.partition] < share:
            taken[m.partition] += 1
            now.append(m)
        else:
            later.append(m)
    return now, later


class BatchConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer, except that the messages of a topic with a batch handler reach
    it a batch at a time instead of one by one through an agent's stream.

    A batch is what the fetches return until it holds `app.batch_size` messages or
    `app.batch_within_s` have passed since its first one and its handler is free (a live feed's
    batch is small and quick, a backlog's is full). The handler acknowledges the messages it
    applied (`Consumer.ack`), and Faust commits the acknowledged offsets as it does for an agent.
    The messages fetched before a rebalance are dropped, not handled: their partitions may belong
    to another worker now, and they are read again from the committed offsets by whoever holds
    them. Messages of the other topics (the changelog, during recovery) take Faust's path as is.
    """

    def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
        return FetchThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover
        # Faust's loop (`Consumer._drain_messages`, faust-streaming 0.15.3), batching added.
        app = cast(ParcoursApp, self.app)
        handlers = app.batch_handlers
        read_offset = self._read_offset
        acks_enabled_for = app.topics.acks_enabled_for
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        # Messages gathered beyond a partition's share of the last batch (`balance`).
        carried: dict[str, list[Message]] = {}
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                batches: dict[str, list[Message]] = carried
                carried = {}
                held = sum(len(ms) for ms in batches.values())
                first: float | None = None
                timeout = 1.0
                while True:
                    await self.sleep(0)
                    if self.should_stop:
                        break
                    fetched = 0
                    async for tp, message in self.getmany(timeout=timeout):
                        fetched += 1
                        offset = message.offset
                        r_offset = read_offset[tp]
                        if r_offset is not None and offset < r_offset:
                            continue  # Faust drops a message behind the read offset too.
                        if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if self._commit_every is not None and self._n_acked >= self._commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if tp.topic in handlers:
                            batches.setdefault(tp.topic, []).append(message)
                            held += 1
                        else:
                            await self.wait_first(self.callback(message), self.suspend_flow.wait())
                        read_offset[tp] = offset
                    first = first or time.monotonic()
                    next_wait = gather_wait(
                        held,
                        fetched,
                        app.batch_size,
                        app.batch_within_s - (time.monotonic() - first),
                        partial(app.handlers_busy, list(batches)),
                    )
                    if next_wait is None:
                        break
                    timeout = next_wait
                self.diag.unset_flag(CONSUMER_FETCHING)
                for topic, gathered in batches.items():
                    messages, later = balance(gathered, app.batch_size)
                    if later:
                        carried[topic] = later
                    fresh = self._fresh(messages)
                    if len(fresh) < len(messages):
                        self.log.info(
                            "dropped %d messages fetched before a rebalance",
                            len(messages) - len(fresh),
                        )
                    if fresh:
                        for message in fresh:
                            message.tracked = True
                            self.track_message(message)
                        await handlers[topic](fresh)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    def _fresh(self, messages: list[Message]) -> list[Message]:
        """The messages fetched since the last rebalance, as Faust's streams keep them.

        The rebalance seeked the partitions this worker still holds back to their committed
        offsets, so the older messages come again; a batch may hold both kinds.
        """
        if not self.app.flow_control.is_active():
            return []
        generation = self.app.consumer_generation_id
        return [m for m in messages if m.generation_id == generation]


class BatchTransport(aiokafka_driver.Transport):
    """The aiokafka transport, with `BatchConsumer`."""

    Consumer = BatchConsumer


class ParcoursApp(faust.App):
    """A Faust app whose topics may be read a batch at a time (`batch_handler`)."""

    def __init__(self, *args: Any, batch_size: int, batch_within_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_handlers: dict[str, BatchHandler] = {}
        # topic → whether its handler is still busy with the last batch (see `batch_handler`)
        self.batch_busy: dict[str, Callable[[], bool]] = {}
        # Called by `run_worker` before the worker starts (not when an app is only built).
        self.before_start: list[Callable[[], None]] = []
        # Called (from the event loop) as soon as the worker is asked to stop (`PromptStopWorker`).
        self.on_stop_requested: list[Callable[[], None]] = []
        self.batch_size = batch_size
        self.batch_within_s = batch_within_s

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)

    def handlers_busy(self, topics: Iterable[str]) -> bool:
        """Whether the batch handler of one of `topics` is busy with its last batch."""
        return any(self.batch_busy[t]() for t in topics if t in self.batch_busy)

    def batch_handler(
        self, topic: TopicT, busy: Callable[[], bool] | None = None
    ) -> Callable[[BatchHandler], BatchHandler]:
        """Subscribe to `topic` and hand its messages to the decorated coroutine in batches.

        While `busy()` says the handler could not start on a batch yet, the consumer goes on
        filling the batch past `batch_within_s`, up to `batch_size`: a batch's fixed costs are
        better spent on a full one."""

        def register(handler: BatchHandler) -> BatchHandler:
            self.batch_handlers[topic.get_topic_name()] = handler
            if busy is not None:
                self.batch_busy[topic.get_topic_name()] = busy
            self.topics.add(topic)
            return handler

        return register

    async def send_batched(
        self, topic: str, records: Iterable[tuple[int, bytes, bytes]]
    ) -> list[asyncio.Future[Any]]:
        """Send (partition, key, value) records a producer batch at a time; returns one future per
        batch, done once the broker holds it.

        Faust's `send` costs about 100 µs of CPU per record (a pending message, its future and
        callbacks, a buffer and the task that drains it); a batch built with aiokafka's
        `create_batch` costs a few µs per record.
        """
        # The aiokafka producer under Faust's.
        producer = cast(aiokafka_driver.Producer, self.producer)._ensure_producer()
        filling: dict[int, Any] = {}
        sent: list[asyncio.Future[Any]] = []
        for partition, key, value in records:
            batch = filling.get(partition)
            if batch is None or batch.append(timestamp=None, key=key, value=value) is None:
                if batch is not None:  # full: send it and start another
                    sent.append(await producer.send_batch(batch, topic, partition=partition))
                batch = filling[partition] = producer.create_batch()
                # A record always fits an empty batch, however large.
                batch.append(timestamp=None, key=key, value=value)
        for partition, batch in filling.items():
            sent.append(await producer.send_batch(batch, topic, partition=partition))
        return sent


class PromptStopWorker(faust.Worker):
    """Faust's worker, stopped within `STOP_WITHIN_S` of SIGTERM or SIGINT.

    The app's `on_stop_requested` hooks run first (they cancel the statement under way and end
    the fold processes), then Faust's own shutdown. Should that still be running after
    `STOP_WITHIN_S`, the process exits: every batch not acknowledged is replayed from its
    offsets at the next start, and replays write the same rows (as after a kill -9).
    """

    STOP_WITHIN_S = 6.0

    def _on_sigterm(self) -> None:
        self._stop_promptly()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._stop_promptly()
        super()._on_sigint()

    def _stop_promptly(self) -> None:
        app = cast(ParcoursApp, self.app)
        for hook in app.on_stop_requested:
            try:
                hook()
            except Exception:
                log.exception("a stop hook failed")
        timer = threading.Timer(self.STOP_WITHIN_S, self._exit_now)
        timer.daemon = True
        timer.start()

    @staticmethod
    def _exit_now() -> None:
        log.warning(
            "shutdown still under way after %s s; exiting now", PromptStopWorker.STOP_WITHIN_S
        )
        logging.shutdown()
        os._exit(0)
