"""The fold processes fold as the worker's own `BatchProcessor.fold` does, batch after batch, one
process or several sharing the partitions, and a fold process that is gone is an error, not an
empty batch."""

from __future__ import annotations

import json
from typing import Any

import pytest

from parcours.settings import Settings
from streams.runtime.batch import BatchOutcome, BatchProcessor, RawMessage, rules_from_settings
from streams.runtime.fold_process import FoldProcess, FoldProcessError, FoldProcesses
from tests.integration.streams_helpers import raw_key, territory_feed
from tests.unit.fakes import NoWrites


def _messages(mixed: bool = False) -> list[RawMessage]:
    """The territory's messages, on 3 partitions by key (as a producer puts them), or on any
    partition (`mixed`: a patient's messages in several)."""
    resources = territory_feed("fold.", days=1, seed=5).resources
    msgs = [
        RawMessage(raw_key(r).encode(), json.dumps(r).encode(), i % 3 if mixed else 0)
        for i, r in enumerate(resources)
    ]
    if not mixed:
        msgs = [RawMessage(m.key, m.value, sum(m.key or b"") % 3) for m in msgs]
    # One message no rule can read: it must come back as a reject, with its bytes.
    return [*msgs[:40], RawMessage(b"pat-x", b"{not json"), *msgs[40:]]


def _fold_all(fold: Any, messages: list[RawMessage], size: int) -> list[BatchOutcome]:
    table: dict[str, bytes] = {}
    outcomes = []
    for i in range(0, len(messages), size):
        outcome = fold(messages[i : i + size], table.get)
        table.update({pid: value for pid, (_, value) in outcome.states.items()})
        outcomes.append(outcome)
    return outcomes


@pytest.mark.parametrize(("processes", "mixed"), [(1, False), (2, False), (3, True)])
def test_the_fold_processes_fold_as_the_worker_does(processes: int, mixed: bool) -> None:
    messages = _messages(mixed)
    rules = rules_from_settings(Settings())
    here = _fold_all(BatchProcessor(sink=NoWrites(), rules=rules).fold, messages, 97)
    children = FoldProcesses(rules, processes)
    try:
        there = _fold_all(children.fold, messages, 97)
    finally:
        children.stop()
    assert len(there) == len(here) > 3
    assert sum(len(o.states) for o in here) > 100
    for a, b in zip(here, there, strict=True):
        # Several processes return their patients share by share: the same, in another order.
        assert b.states == a.states
        assert sorted(b.alerts, key=repr) == sorted(a.alerts, key=repr)
        assert sorted(b.rejects) == sorted(a.rejects)
        assert b.events == a.events
        by_patient = {p.patient_id: p for p in b.sink_batch.patients}
        assert by_patient == {p.patient_id: p for p in a.sink_batch.patients}
        assert len(by_patient) == len(b.sink_batch.patients)
        for part in ("locations", "organizations", "encounters"):
            mine, theirs = getattr(b.sink_batch, part), getattr(a.sink_batch, part)
            assert sorted(mine, key=repr) == sorted(theirs, key=repr)
        assert len(b.organization_raw) == len(a.organization_raw)
        # The raw messages of each patient are the worker's own objects again.
        assert b.raw_of.keys() == a.raw_of.keys()
        for pid, raw in b.raw_of.items():
            assert [m.value for m in raw] == [m.value for m in a.raw_of[pid]]
            assert all(any(m is n for n in messages) for m in raw)
    assert any(r[1] == b"{not json" for o in there for r in o.rejects)
    assert sum(len(o.sink_batch.organizations) for o in there) == 4  # the territory's hospitals


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


def test_stopped_fold_processes_start_again_and_fold_as_before() -> None:
    messages = _messages()
    rules = rules_from_settings(Settings())
    here = _fold_all(BatchProcessor(sink=NoWrites(), rules=rules).fold, messages, 97)
    children = FoldProcesses(rules, 2)
    try:
        first = children.fold(messages[:97], lambda pid: None)
        pids = [p._process.pid for p in children.processes if p._process is not None]
        children.stop()  # as the worker does once a backfill is over
        assert all(p._process is None for p in children.processes)
        again = children.fold(messages[:97], lambda pid: None)
        restarted = [p._process.pid for p in children.processes if p._process is not None]
    finally:
        children.stop()
    assert pids and restarted and set(restarted).isdisjoint(pids)
    assert first.states == again.states == here[0].states
