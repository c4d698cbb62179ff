"""What a worker keeps when the group takes partitions away, and how it reports progress."""

from __future__ import annotations

from datetime import UTC, datetime

from streams.runtime.worker import forget_partitions, progress_row


def test_only_the_patients_of_revoked_partitions_are_forgotten() -> None:
    states = {"a": "{...a}", "b": "{...b}", "c": "{...c}", "recovered": "{...}"}
    partition_of = {"a": 0, "b": 1, "c": 2}
    assert forget_partitions(states, partition_of, {1, 2, 3}) == 2
    # "recovered" came from the changelog: Faust's store forgets it by itself.
    assert states == {"a": "{...a}", "recovered": "{...}"}
    assert partition_of == {"a": 0}
    assert forget_partitions(states, partition_of, set()) == 0
    assert states == {"a": "{...a}", "recovered": "{...}"}


def test_a_progress_row_counts_the_messages_left_to_apply() -> None:
    at = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    row = progress_row("raw", 2, "host:1", next_offset=480, highwater=500, now=at)
    assert (row["processed_offset"], row["highwater"], row["lag"]) == (479, 500, 20)
    assert progress_row("raw", 2, "host:1", 500, 500, at)["lag"] == 0
    # Before the first fetch the end is unknown, and so is the lag.
    assert progress_row("raw", 2, "host:1", 500, None, at)["lag"] is None
    assert progress_row("raw", 2, "host:1", None, 500, at)["processed_offset"] is None
