"""Two workers share the raw topic's partitions and end in the SQL state of one clean worker.

A second worker of the same app joins while the first one writes: the group rebalances, each
worker recovers the table partitions it is given from the changelog, and both write to the same
database at once. The census of a hospital is computed across patients whom different workers
hold, so this also shows that concurrent batches do not overwrite each other's census hours.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streams.runtime.faust_compat import consumed_partitions
from tests.integration.streams_helpers import (
    assert_same_tables,
    count,
    feed_territory,
    finished,
    last_offsets,
    rows,
    run_to_the_end,
    snapshot,
    worker_env,
)
from tests.support import fresh_database, parcours_process, wait_until

pytestmark = pytest.mark.integration
PARTITIONS = 4


def progress(db: str, topic: str) -> dict[int, tuple[int, int]]:
    """partition → (last offset applied, lag), as the workers reported them."""
    return {
        p: (o, lag)
        for p, o, lag in rows(
            db,
            "SELECT partition, processed_offset, lag FROM stream_progress WHERE topic = :t",
            t=topic,
        )
    }


def test_a_second_worker_joining_mid_stream_ends_like_one_clean_worker(
    broker: str, pg_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics, expected, _ = feed_territory(broker, topic_prefix, PARTITIONS, days=18, seed=5)

    with fresh_database(pg_url) as clean_db, fresh_database(pg_url) as shared_db:
        common = {"PARCOURS_TOPIC_PARTITIONS": str(PARTITIONS)}
        env = worker_env(
            broker, clean_db, topic_prefix, PARCOURS_STREAMS_APP_ID=f"{topic_prefix}one", **common
        )
        run_to_the_end(env, clean_db, expected, tmp_path / "one.log", "the single worker")

        # Small batches and INFO logs: the first worker is still busy when the second joins, and
        # each log says which raw partitions its worker consumed.
        env = worker_env(
            broker,
            shared_db,
            topic_prefix,
            PARCOURS_STREAMS_APP_ID=f"{topic_prefix}two",
            PARCOURS_WORKER_BATCH_SIZE="200",
            PARCOURS_LOG_LEVEL="INFO",
            PARCOURS_WORKER_PROGRESS_INTERVAL_S="1",
            **common,
        )
        first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
        with parcours_process(["streams", "worker"], env, first_log) as first:
            wait_until(
                lambda: count(shared_db, "SELECT count(*) FROM stays") >= expected["stays"] // 5,
                timeout_s=120,
                what="the first worker to be mid-stream",
            )
            stays_at_join = count(shared_db, "SELECT count(*) FROM stays")
            with parcours_process(["streams", "worker"], env, second_log) as second:

                def both_done() -> bool:
                    assert first.poll() is None, first_log.read_text()[-3000:]
                    assert second.poll() is None, second_log.read_text()[-3000:]
                    return finished(shared_db, expected)

                wait_until(both_done, timeout_s=180, what="the two workers")
                # Each partition's progress, as its worker reports it, reaches the topic's end.
                last = last_offsets(broker, topics.raw)
                wait_until(
                    lambda: progress(shared_db, topics.raw) == {p: (o, 0) for p, o in last.items()},
                    timeout_s=30,
                    what=f"stream_progress at the end of every partition {last}",
                )
                reporters = {
                    w for (w,) in rows(shared_db, "SELECT DISTINCT worker FROM stream_progress")
                }
                first_text = first_log.read_text()
                first_parts = consumed_partitions(first_text, topics.raw)
                second_parts = consumed_partitions(second_log.read_text(), topics.raw)

        clean = snapshot(clean_db, topic_prefix)
        shared = snapshot(shared_db, topic_prefix)

    assert stays_at_join < expected["stays"], "the second worker came after the end"
    # The work was shared: after the rebalance each worker held some of the raw partitions.
    assert first_parts[0] == list(range(PARTITIONS)), first_parts
    assert second_parts and second_parts[-1], second_parts
    assert len(first_parts) >= 2 and len(first_parts[-1]) < PARTITIONS, first_parts
    assert sorted(first_parts[-1] + second_parts[-1]) == list(range(PARTITIONS))
    # The first worker let go of the states of the patients it no longer holds.
    forgot = [int(n) for n in re.findall(r"forgot (\d+) patient states", first_text)]
    assert forgot and max(forgot) > 0, forgot
    assert len(reporters) == 2, reporters
    assert len(clean["census_hourly"]) > 1000
    assert_same_tables(clean, shared, "between one worker and two sharing the partitions")
