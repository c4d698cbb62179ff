"""What a worker keeps when the group takes partitions away from it."""

from __future__ import annotations

from streams.agents import forget_partitions


def test_only_the_patients_of_revoked_partitions_are_forgotten() -> None:
    states = {"a": "{...a}", "b": "{...b}", "c": "{...c}", "recovered": "{...}"}
    partition_of = {"a": 0, "b": 1, "c": 2}
    assert forget_partitions(states, partition_of, {1, 2, 3}) == 2
    # "recovered" came from the changelog: Faust's store forgets it by itself.
    assert states == {"a": "{...a}", "recovered": "{...}"}
    assert partition_of == {"a": 0}
    assert forget_partitions(states, partition_of, set()) == 0
    assert states == {"a": "{...a}", "recovered": "{...}"}
