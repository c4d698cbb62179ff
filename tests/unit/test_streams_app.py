"""The worker's "ready" log line, read back by the scale-out test and the bench."""

from __future__ import annotations

import pytest

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


class _NotUtf8(str):
    """A header key whose bytes on the wire are not UTF-8 (kafka-python's builder encodes keys
    with `str.encode`)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe-key"


def _batch(codec: int, headers_of: dict[int, list[tuple[str, bytes]]], n: int = 5) -> bytes:
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1024**2,
    )
    for i in range(n):
        builder.append(
            i, timestamp=None, key=b"k%d" % i, value=b"v%d" % i, headers=headers_of.get(i, [])
        )
    return bytes(builder.build())


@pytest.mark.parametrize("codec", [0, 1])  # none, gzip
def test_a_header_key_that_is_not_utf8_is_read_with_a_replacement_character(codec: int) -> None:
    from aiokafka.record.memory_records import MemoryRecords

    from streams.runtime.faust_compat import TolerantRecords

    headers = {1: [("source", b"lab")], 2: [(_NotUtf8("x"), b"h"), ("source", b"\xff")]}
    data = _batch(codec, headers) + _batch(codec, {0: [("source", b"gp")]}, n=2)
    strict = MemoryRecords(data)
    with pytest.raises(UnicodeDecodeError):
        list(strict.next_batch())
    tolerant = TolerantRecords(data)
    records = []
    while tolerant.has_next():
        records += [(r.offset, r.key, r.value, r.headers) for r in tolerant.next_batch()]
    assert [(offset, key, value) for offset, key, value, _ in records] == [
        (0, b"k0", b"v0"),
        (1, b"k1", b"v1"),
        (2, b"k2", b"v2"),
        (3, b"k3", b"v3"),
        (4, b"k4", b"v4"),
        (0, b"k0", b"v0"),
        (1, b"k1", b"v1"),
    ]
    assert records[1][3] == [("source", b"lab")]
    assert records[2][3] == [("\ufffd\ufffd-key", b"h"), ("source", b"\xff")]
    assert records[5][3] == [("source", b"gp")]
