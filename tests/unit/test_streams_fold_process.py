"""The fold process folds as the worker's own `BatchProcessor.fold` does, batch after batch, and a
fold process that is gone is an error, not an empty batch."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.territory import territory
from parcours.settings import Settings
from streams.agents import BatchOutcome, BatchProcessor, RawMessage, rules_from_settings
from streams.fold_process import FoldProcess, FoldProcessError
from tests.integration.streams_helpers import raw_key


def _messages() -> list[RawMessage]:
    resources = territory("fold.", patients=120, seed=5, days=4, beds_per_ward=4)
    msgs = [
        RawMessage(raw_key(r).encode(), json.dumps(r).encode(), i % 3)
        for i, r in enumerate(resources)
    ]
    # One message no rule can read: it must come back as a reject, with its bytes.
    return [*msgs[:40], RawMessage(b"pat-x", b"{not json"), *msgs[40:]]


def _fold_all(fold: Any, messages: list[RawMessage], size: int) -> list[BatchOutcome]:
    table: dict[str, str] = {}
    outcomes = []
    for i in range(0, len(messages), size):
        outcome = fold(messages[i : i + size], table.get)
        table.update({pid: value for pid, (_, value) in outcome.states.items()})
        outcomes.append(outcome)
    return outcomes


def test_the_fold_process_folds_as_the_worker_does() -> None:
    messages = _messages()
    rules = rules_from_settings(Settings())
    here = _fold_all(BatchProcessor(sink=None, rules=rules).fold, messages, 97)  # type: ignore[arg-type]
    child = FoldProcess(rules)
    try:
        there = _fold_all(child.fold, messages, 97)
    finally:
        child.stop()
    assert len(there) == len(here) > 3
    assert sum(len(o.states) for o in here) > 100
    for a, b in zip(here, there, strict=True):
        assert b.states == a.states
        assert b.alerts == a.alerts
        assert b.rejects == a.rejects
        assert b.events == a.events
        assert b.sink_batch == a.sink_batch
        # The raw messages of each patient are the worker's own objects again.
        assert b.raw_of.keys() == a.raw_of.keys()
        for pid, raw in b.raw_of.items():
            assert [m.value for m in raw] == [m.value for m in a.raw_of[pid]]
            assert all(any(m is n for n in messages) for m in raw)
    assert any(r[1] == b"{not json" for o in there for r in o.rejects)


def test_a_fold_process_that_is_gone_is_an_error() -> None:
    child = FoldProcess(rules_from_settings(Settings()))
    messages = _messages()[:20]
    try:
        assert child.fold(messages, lambda pid: None).events > 0
        child._process.kill()
        child._process.join(10)
        with pytest.raises(FoldProcessError, match="gone"):
            child.fold(messages, lambda pid: None)
    finally:
        child.stop()
