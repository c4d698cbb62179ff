"""The worker's "ready" log line, read back by the scale-out test and the bench."""

from __future__ import annotations

from streams.runtime.faust_compat import READY, consumed_partitions

LOG = f"""\
[2026-11-29 16:24:12,316] [11064] [INFO] [^---SeekThenResumeRecovery]: {READY} t1.fhir.raw [0, 1, 2, 3], t1.two-__assignor-__leader [0]
[2026-11-29 16:24:21,636] [11064] [INFO] generation id 1 app consumers id 1
[2026-11-29 16:24:26,295] [11064] [INFO] [^---SeekThenResumeRecovery]: {READY} t1.two-__assignor-__leader [0], t1.fhir.raw [2, 3]
[2026-11-29 16:25:00,000] [11064] [INFO] [^---SeekThenResumeRecovery]: {READY} t1.two-__assignor-__leader [0]
"""  # noqa: E501


def test_each_rebalance_gives_the_partitions_of_the_asked_topic() -> None:
    assert consumed_partitions(LOG, "t1.fhir.raw") == [[0, 1, 2, 3], [2, 3]]
    assert consumed_partitions(LOG, "t1.two-__assignor-__leader") == [[0], [0], [0]]


def test_another_topic_or_a_prefix_of_a_name_matches_nothing() -> None:
    assert consumed_partitions(LOG, "t1.fhir") == []
    assert consumed_partitions(LOG, "t2.fhir.raw") == []
