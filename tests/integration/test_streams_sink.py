"""The worker's batch body (rules + SQL sink) on both databases, without the broker.

Whatever the batch boundaries, duplicates and the order in which Locations arrive, the tables
end the same: this is what makes replays and restarts converge.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.territory import expected_counts, territory
from parcours.db import upgrade
from parcours.settings import Settings
from streams.agents import BatchProcessor, RawMessage, rules_from_settings
from streams.sink import SqlSink
from tests.integration.streams_helpers import count, raw_key, snapshot
from tests.support import fresh_database

pytestmark = pytest.mark.integration


def messages(resources: list[dict[str, Any]]) -> list[RawMessage]:
    return [RawMessage(raw_key(r).encode(), json.dumps(r).encode()) for r in resources]


def run(db_url: str, msgs: list[RawMessage], batch: int) -> None:
    from parcours.db import make_engine

    processor = BatchProcessor(SqlSink(make_engine(db_url)), rules_from_settings(Settings()))
    table: dict[str, Any] = {}
    for i in range(0, len(msgs), batch):
        outcome = processor.process(msgs[i : i + batch], table.get)
        assert outcome.rejects == []
        for pid, (_, value) in outcome.states.items():
            table[pid] = value


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_batches_duplicates_and_late_locations_converge(
    backend: str, pg_url: str, tmp_path: Path, topic_prefix: str
) -> None:
    resources = territory(topic_prefix, patients=300, seed=3, days=6, beds_per_ward=6)
    expected = expected_counts(resources)
    msgs = messages(resources)
    locations = [m for m in msgs if m.key and m.key.startswith(b"Location/")]
    others = [m for m in msgs if m not in locations]
    # Beds before their wards, wards before their sites: the tree arrives upside down.
    late = others[: len(others) // 2] + locations[::-1] + others[len(others) // 2 :]

    def database(name: str) -> Any:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / name}.db"
            upgrade(url)
            from contextlib import nullcontext

            return nullcontext(url)
        return fresh_database(pg_url)

    with database("a") as a, database("b") as b, database("c") as c:
        run(a, msgs, 200)
        # Other batch boundaries, Locations after half of the encounters, then everything again.
        run(b, late, 37)
        run(b, msgs, 91)
        # One batch: every census hour computed at once, the reference for the hours that the
        # batches above recomputed piecemeal (each only where its rows changed).
        run(c, msgs, len(msgs))
        assert count(a, "SELECT count(*) FROM stays") == expected["stays"]
        assert count(a, "SELECT count(*) FROM ed_visits") == expected["ed_visits"]
        assert count(a, "SELECT count(*) FROM census_hourly WHERE unit_type = 'ward'") > 0
        assert count(a, "SELECT count(*) FROM alerts WHERE alert_type = 'ward_over_capacity'") > 0
        first, second = snapshot(a, topic_prefix), snapshot(b, topic_prefix)
        whole = snapshot(c, topic_prefix)
    for table in first:
        assert second[table] == first[table], table
        assert whole[table] == first[table], table
