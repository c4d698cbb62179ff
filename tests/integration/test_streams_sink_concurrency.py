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

from parcours.db import make_engine
from parcours.settings import Settings
from streams.runtime.batch import BatchProcessor, RawMessage, partition_for, rules_from_settings
from streams.sink.writer import SqlSink
from tests.integration.streams_helpers import (
    assert_same_tables,
    count,
    raw_key,
    snapshot,
    territory_feed,
)
from tests.support import fresh_database

pytestmark = pytest.mark.integration


class Worker:
    """One worker's sink and state table: batches written as the agent's `BatchProcessor` does."""

    def __init__(self, db_url: str) -> None:
        self.processor = BatchProcessor(
            SqlSink(make_engine(db_url)), rules_from_settings(Settings())
        )
        self.table: dict[str, Any] = {}

    def feed(self, msgs: list[RawMessage], batch: int) -> None:
        for i in range(0, len(msgs), batch):
            outcome = self.processor.process(msgs[i : i + batch], self.table.get)
            assert outcome.rejects == []
            self.table.update({pid: value for pid, (_, value) in outcome.states.items()})


def split(resources: list[dict[str, Any]]) -> tuple[list[RawMessage], list[RawMessage]]:
    """The messages of `resources`: the Locations, and the patients' in feed order."""
    msgs = [RawMessage(raw_key(r).encode(), json.dumps(r).encode()) for r in resources]
    locations = [m for m in msgs if m.key and m.key.startswith(b"Location/")]
    return locations, [m for m in msgs if m not in locations]


def test_two_writers_at_once_end_with_one_writers_census(pg_url: str, topic_prefix: str) -> None:
    resources = territory_feed(topic_prefix, days=2, seed=9).resources
    locations, patients = split(resources)
    halves = [
        [m for m in patients if partition_for(m.key.decode(), 2) == half]  # type: ignore[union-attr]
        for half in (0, 1)
    ]
    # Patient ids carry the random topic prefix, so the split varies from run to run (about
    # 540 to 680 of 1,219 messages each); a quarter each keeps both writers busy.
    assert all(len(h) > len(patients) // 4 for h in halves)

    with fresh_database(pg_url) as single, fresh_database(pg_url) as shared:
        Worker(single).feed(locations + patients, 40)
        Worker(shared).feed(locations, len(locations))
        errors: list[BaseException] = []

        def writer(half: list[RawMessage]) -> None:
            try:
                Worker(shared).feed(half, 20)
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


def test_a_writer_reads_the_location_tree_that_another_writer_changed(
    pg_url: str, topic_prefix: str
) -> None:
    resources = territory_feed(topic_prefix, days=1, seed=4).resources
    locations, patients = split(resources)
    early, late = patients[: len(patients) // 2], patients[len(patients) // 2 :]

    with fresh_database(pg_url) as single, fresh_database(pg_url) as shared:
        one = Worker(single)
        for msgs in (early, locations, late):
            one.feed(msgs, 50)
        # The same order over two workers: the second reads its tree (empty) with the first
        # patients, the first worker then records the Locations, the second the other patients.
        first, second = Worker(shared), Worker(shared)
        second.feed(early, 50)
        first.feed(locations, 50)
        second.feed(late, 50)
        one_rows, two_rows = snapshot(single, topic_prefix), snapshot(shared, topic_prefix)
        placed = count(shared, "SELECT count(*) FROM stay_locations WHERE ward_id IS NOT NULL")

    assert placed > 0, "no stay was placed in a ward"
    assert_same_tables(one_rows, two_rows, "when the tree changed in another worker")
