"""Which raw messages the batch consumer hands over after a rebalance, and which partitions
recovery rewinds to their start (the pieces of `streams.runtime.faust_compat` that a kill -9
depends on), on the real app, consumer and recovery objects of a worker."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP, Message

from parcours.settings import Settings
from streams.runtime.bootstrap import create_app
from streams.runtime.faust_compat import (
    BUSY_POLL_S,
    READY,
    BatchConsumer,
    ParcoursApp,
    SeekThenResumeRecovery,
    gather_wait,
    ready_at,
)

RAW = "fhir.raw"


@pytest.fixture
def app(tmp_path: Path) -> ParcoursApp:
    """A real worker app, built as `parcours streams worker` builds it; nothing connects."""
    settings = Settings(
        kafka_bootstrap_servers="127.0.0.1:9",
        database_url=f"sqlite:///{tmp_path / 'p.db'}",
        data_dir=tmp_path,
        worker_web_port=0,
    )
    return create_app(settings)


def _message(offset: int, generation: int) -> Message:
    return Message(
        RAW, 0, offset, 0.0, 0, None, b"k", b"{}", None, tp=TP(RAW, 0), generation_id=generation
    )


def test_only_the_messages_of_the_current_generation_are_handed_over(app: ParcoursApp) -> None:
    consumer = app.consumer
    assert isinstance(consumer, BatchConsumer)
    old = [_message(i, 3) for i in range(3)]
    new = [_message(i, 4) for i in range(3, 5)]
    app.flow_control.resume()
    app.consumer_generation_id = 4
    assert consumer._fresh(old + new) == new
    app.consumer_generation_id = 3
    assert consumer._fresh(old + new) == old
    # While a rebalance is under way nothing is handled: it is all read again afterwards.
    app.flow_control.suspend()
    assert consumer._fresh(old + new) == []


def test_recovery_rewinds_the_source_partitions_that_have_no_committed_offset(
    app: ParcoursApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    recovery = app.tables.recovery
    assert isinstance(recovery, SeekThenResumeRecovery)
    consumer = app.consumer
    changelog = TP(next(iter(app.tables.values())).changelog_topic.get_topic_name(), 0)
    uncommitted, at_zero, committed = TP(RAW, 0), TP(RAW, 1), TP(RAW, 2)
    consumer._committed_offset.update({at_zero: None, committed: 57})
    consumer._read_offset.update({uncommitted: 50, at_zero: 12, committed: 57, changelog: 9})
    seeked: list[tuple[str, int]] = []

    async def seek_to_beginning(*tps: Any) -> None:
        seeked.extend((tp.topic, tp.partition) for tp in tps)

    # The consumer thread's seek goes to the broker: record it instead.
    monkeypatch.setattr(consumer._thread, "seek_to_beginning", seek_to_beginning)
    assignment = {uncommitted, at_zero, committed, changelog}

    asyncio.run(recovery._rewind_uncommitted(consumer, assignment))

    assert sorted(seeked) == [(RAW, 0), (RAW, 1)]
    # The next records of a rewound partition start again from its first offset.
    assert {tp: consumer._read_offset[tp] for tp in assignment} == {
        uncommitted: None,
        at_zero: None,
        committed: 57,
        changelog: 9,
    }


def test_the_ready_time_is_read_from_the_first_ready_line_of_the_topic() -> None:
    log = (
        "[2026-11-29 22:05:06,900] [7047] [INFO] Restore complete!\n"
        f"[2026-11-29 22:05:07,441] [7047] [INFO] {READY} other.raw [0]\n"
        f"[2026-11-29 22:05:07,500] [7047] [INFO] {READY} {RAW} [0, 1]\n"
        f"[2026-11-29 22:05:09,000] [7047] [INFO] {READY} {RAW} [0]\n"
    )
    expected = datetime(2026, 11, 29, 22, 5, 7, 500000).astimezone().timestamp()
    assert ready_at(log, RAW) == expected
    assert ready_at(log.splitlines()[0], RAW) is None


def test_a_batch_fills_past_its_wait_while_the_handler_is_busy() -> None:
    def busy() -> bool:
        return True

    def free() -> bool:
        return False

    # Within `batch_within_s`: wait what is left of it, busy or not.
    assert gather_wait(100, 50, 20_000, 0.2, free) == 0.2
    # Past it: hand the batch over, unless the handler could not take it yet.
    assert gather_wait(100, 50, 20_000, -0.01, free) is None
    assert gather_wait(100, 50, 20_000, -0.01, busy) == BUSY_POLL_S
    # A full batch, an empty one, or a fetch that brought nothing ends it even then.
    assert gather_wait(20_000, 50, 20_000, -0.01, busy) is None
    assert gather_wait(0, 0, 20_000, 0.2, busy) is None
    assert gather_wait(100, 0, 20_000, -0.01, busy) is None
