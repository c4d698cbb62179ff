"""The fold/write pipeline of the worker: a batch folds while the previous one is written, onto the
states that one made; writes keep batch order; rows the database refused make the next batch fold
again. The processor is a stand-in that counts: each message adds one to its patient's state."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from streams.agents import BatchOutcome, BatchProcessor, FoldWritePipeline, RawMessage
from streams.pathway import PathwayRules


class CountingProcessor(BatchProcessor):
    """Folds by counting messages per patient; `write` waits at `gate` and refuses the rows
    of the patients in `refuse`, once."""

    def __init__(self) -> None:
        super().__init__(sink=None, rules=PathwayRules())  # type: ignore[arg-type]
        self.gate = threading.Event()
        self.gate.set()
        self.refuse: set[str] = set()
        self.folds: list[dict[str, str | None]] = []  # the states each fold read

    def fold(
        self, messages: list[RawMessage], get_state: Callable[[str], str | None]
    ) -> BatchOutcome:
        outcome = BatchOutcome()
        read: dict[str, str | None] = {}
        for m in messages:
            pid = (m.key or b"").decode()
            read.setdefault(pid, get_state(pid))
            before = outcome.states.get(pid, (0, read[pid] or "0"))[1]
            outcome.states[pid] = (0, str(int(before) + 1))
        self.folds.append(read)
        return outcome

    def write(self, outcome: BatchOutcome) -> None:
        assert self.gate.wait(10)
        for pid in self.refuse & set(outcome.states):
            self.refuse.remove(pid)  # once
            outcome.states.pop(pid)
            outcome.refused = True


def _messages(*pids: str) -> list[RawMessage]:
    return [RawMessage(pid.encode(), b"{}") for pid in pids]


def _pipeline(processor: CountingProcessor) -> tuple[FoldWritePipeline, dict[str, Any], list[Any]]:
    table: dict[str, Any] = {}
    finished: list[Any] = []

    async def finish(outcome: BatchOutcome, batch: list[Any]) -> None:
        table.update({pid: value for pid, (_, value) in outcome.states.items()})
        finished.append(batch)

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
