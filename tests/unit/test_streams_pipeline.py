"""The fold/write pipeline of the worker: the consumer gathers a batch while the previous one folds;
a batch folds while the previous one is written, onto the states that one made; a batch is written
while the previous one's topics are sent; writes and finishes keep batch order; rows the database
refused make the next batch fold again. The processor is a stand-in that counts: each message adds
one to its patient's state."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from streams.core.pathway import PathwayRules
from streams.runtime.batch import BatchOutcome, BatchProcessor, RawMessage
from streams.runtime.worker import FoldWritePipeline
from tests.unit.fakes import NoWrites


class CountingProcessor(BatchProcessor):
    """Folds by counting messages per patient, once `fold_gate` is open; `write` waits at
    `gate` and refuses the rows of the patients in `refuse`, once."""

    def __init__(self) -> None:
        super().__init__(sink=NoWrites(), rules=PathwayRules())
        self.gate = threading.Event()
        self.gate.set()
        self.fold_gate = threading.Event()
        self.fold_gate.set()
        self.refuse: set[str] = set()
        self.folds: list[dict[str, str | None]] = []  # the states each fold read
        self.writes: list[dict[str, str]] = []  # the states each write got
        self.log: list[str] = []  # "fold start", "fold end", "write", "finish", in order

    def fold(
        self, messages: list[RawMessage], get_state: Callable[[str], str | None]
    ) -> BatchOutcome:
        self.log.append("fold start")
        assert self.fold_gate.wait(10)
        outcome = BatchOutcome()
        read: dict[str, str | None] = {}
        for m in messages:
            pid = (m.key or b"").decode()
            read.setdefault(pid, get_state(pid))
            before = outcome.states.get(pid, (0, read[pid] or "0"))[1]
            outcome.states[pid] = (0, str(int(before) + 1))
        self.folds.append(read)
        self.log.append("fold end")
        return outcome

    def write(self, outcome: BatchOutcome) -> None:
        assert self.gate.wait(10)
        for pid in self.refuse & set(outcome.states):
            self.refuse.remove(pid)  # once
            outcome.states.pop(pid)
            outcome.refused = True
        self.writes.append({pid: value for pid, (_, value) in outcome.states.items()})
        self.log.append("write")


def _messages(*pids: str) -> list[RawMessage]:
    return [RawMessage(pid.encode(), b"{}") for pid in pids]


def _pipeline(
    processor: CountingProcessor, sent: asyncio.Event | None = None
) -> tuple[FoldWritePipeline, dict[str, Any], list[Any]]:
    """The pipeline, its table and the batches finished; a finish waits for `sent`, if given."""
    table: dict[str, Any] = {}
    finished: list[Any] = []

    async def finish(outcome: BatchOutcome, batch: list[Any]) -> None:
        if sent is not None:
            await sent.wait()
        table.update({pid: value for pid, (_, value) in outcome.states.items()})
        finished.append(batch)
        processor.log.append("finish")

    return FoldWritePipeline(processor.fold, processor.write, table, finish), table, finished


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_a_batch_folds_while_the_previous_one_is_written_onto_its_states() -> None:
    async def scenario() -> None:
        processor = CountingProcessor()
        pipeline, table, finished = _pipeline(processor)
        processor.gate.clear()  # the first write waits
        await pipeline.submit(_messages("a", "b"), ["batch 1"])
        second = asyncio.create_task(pipeline.submit(_messages("a", "a"), ["batch 2"]))
        await _until(lambda: len(processor.folds) == 2)
        # Batch 2 was folded onto batch 1's states while batch 1 was still being written.
        assert processor.folds[1] == {"a": "1"}
        assert finished == [] and table == {}
        processor.gate.set()
        await second
        async with pipeline.lock:
            assert await pipeline.written() is False
        assert finished == [["batch 1"], ["batch 2"]]
        assert table == {"a": "3", "b": "1"}

    asyncio.run(scenario())


def test_a_fold_that_read_refused_states_is_done_again_on_the_written_ones() -> None:
    async def scenario() -> None:
        processor = CountingProcessor()
        pipeline, table, finished = _pipeline(processor)
        processor.gate.clear()
        processor.refuse = {"x"}
        await pipeline.submit(_messages("x", "b"), ["batch 1"])
        second = asyncio.create_task(pipeline.submit(_messages("x", "b"), ["batch 2"]))
        await _until(lambda: len(processor.folds) == 2)
        assert processor.folds[1] == {"x": "1", "b": "1"}
        processor.gate.set()
        await second
        async with pipeline.lock:
            await pipeline.written()
        # Batch 1's row for x never reached the database: batch 2 folded again from nothing.
        assert processor.folds[2] == {"x": None, "b": "1"}
        assert table == {"x": "1", "b": "2"}
        assert finished == [["batch 1"], ["batch 2"]]

    asyncio.run(scenario())


def test_the_consumer_gathers_the_next_batch_while_a_batch_folds() -> None:
    async def scenario() -> None:
        processor = CountingProcessor()
        pipeline, table, finished = _pipeline(processor)
        processor.fold_gate.clear()  # folds wait
        await asyncio.wait_for(pipeline.submit(_messages("a"), ["batch 1"]), 5)
        # submit returned with the fold still running: the consumer is free to gather, and
        # fills the next batch on while the pipeline says it is busy.
        assert processor.folds == [] and finished == []
        assert pipeline.busy()
        second = asyncio.create_task(pipeline.submit(_messages("a"), ["batch 2"]))
        processor.fold_gate.set()
        await second
        async with pipeline.lock:
            await pipeline.written()
        # The second fold started only once the first was done.
        folds = [entry for entry in processor.log if entry.startswith("fold")]
        assert folds == ["fold start", "fold end", "fold start", "fold end"]
        assert processor.folds == [{"a": None}, {"a": "1"}]
        assert table == {"a": "2"} and finished == [["batch 1"], ["batch 2"]]
        assert not pipeline.busy()

    asyncio.run(scenario())


def test_a_batch_is_written_while_the_previous_one_finishes_and_finishes_keep_order() -> None:
    async def scenario() -> None:
        processor = CountingProcessor()
        sent = asyncio.Event()
        pipeline, table, finished = _pipeline(processor, sent)
        await pipeline.submit(_messages("a", "b"), ["batch 1"])
        await pipeline.submit(_messages("a"), ["batch 2"])
        await pipeline.submit(_messages("b"), ["batch 3"])
        await _until(lambda: len(processor.writes) == 2 and len(processor.folds) == 3)
        # Batch 2 was folded onto batch 1's states and written while batch 1's topics were
        # still on their way; batch 3, folded onto both, waits for batch 1 to finish: one
        # batch at most is behind the writes (checked on the order of events below).
        assert processor.folds == [{"a": None, "b": None}, {"a": "1"}, {"b": "1"}]
        assert processor.writes == [{"a": "1", "b": "1"}, {"a": "2"}]
        assert finished == [] and table == {}
        # Batch 3's states are handed on with its write.
        assert pipeline.get_state("a") == "2" and pipeline.get_state("b") == "1"
        sent.set()
        async with pipeline.lock:
            await pipeline.written()
        assert processor.writes[2] == {"b": "2"}
        assert finished == [["batch 1"], ["batch 2"], ["batch 3"]]
        events = [e for e in processor.log if e in ("write", "finish")]
        # Two writes before the first finish; the third only after it.
        assert events[:3] == ["write", "write", "finish"]
        assert events.count("write") == 3 and events.count("finish") == 3
        assert table == {"a": "2", "b": "2"}

    asyncio.run(scenario())
