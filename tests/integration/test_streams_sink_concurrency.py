"""Two workers writing at once to one database end with the census of a single writer.

Scaled out, each worker holds some patients but the census of a hospital counts all of them:
a batch recomputes hours from the rows it can see. Two transactions that recompute the same
hours at once would each miss the other's patients, and the last to commit would win. The sink
serialises the census of a hospital across writers, so the end state must equal one writer's.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from bench.territory import territory
from parcours.db import make_engine
from parcours.settings import Settings
from streams.agents import BatchProcessor, RawMessage, partition_for, rules_from_settings
from streams.sink import SqlSink
from tests.integration.streams_helpers import assert_same_tables, raw_key, snapshot
from tests.support import fresh_database

pytestmark = pytest.mark.integration


def feed(db_url: str, msgs: list[RawMessage], batch: int) -> None:
    """One worker's batches, each in its own transaction, as `BatchProcessor` writes them."""
    engine = make_engine(db_url)
    processor = BatchProcessor(SqlSink(engine), rules_from_settings(Settings()))
    table: dict[str, Any] = {}
    try:
        for i in range(0, len(msgs), batch):
            outcome = processor.process(msgs[i : i + batch], table.get)
            assert outcome.rejects == []
            table.update({pid: value for pid, (_, value) in outcome.states.items()})
    finally:
        engine.dispose()


def test_two_writers_at_once_end_with_one_writers_census(pg_url: str, topic_prefix: str) -> None:
    resources = territory(topic_prefix, patients=400, seed=9, days=5, beds_per_ward=8)
    msgs = [RawMessage(raw_key(r).encode(), json.dumps(r).encode()) for r in resources]
    locations = [m for m in msgs if m.key and m.key.startswith(b"Location/")]
    patients = [m for m in msgs if m not in locations]
    halves = [
        [m for m in patients if partition_for(m.key.decode(), 2) == half]  # type: ignore[union-attr]
        for half in (0, 1)
    ]
    assert all(len(h) > 500 for h in halves)

    with fresh_database(pg_url) as single, fresh_database(pg_url) as shared:
        feed(single, msgs, 40)
        feed(shared, locations, len(locations))
        errors: list[BaseException] = []

        def writer(half: list[RawMessage]) -> None:
            try:
                feed(shared, half, 20)
            except BaseException as exc:  # the assertion below reports it
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(h,)) for h in halves]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        one, two = snapshot(single, topic_prefix), snapshot(shared, topic_prefix)

    assert len(one["census_hourly"]) > 100
    assert_same_tables(one, two, "when two writers share the patients")
