"""MLLP framing: blocks, garbage between them, restarts, limits and timeouts (no network)."""

from __future__ import annotations

import asyncio

import pytest

from ingest.mllp import (
    PARSE_CHUNK_MAX,
    PARSE_CHUNK_MIN,
    Connection,
    Frame,
    FramingTimeout,
    MllpReader,
    idlest,
    parse_chunk_size,
)


def frames(chunks: list[bytes], max_bytes: int = 100) -> list[Frame]:
    async def go() -> list[Frame]:
        reader = asyncio.StreamReader()
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        mllp = MllpReader(reader, max_bytes, frame_timeout_s=5, idle_timeout_s=5)
        out = []
        while (got := await mllp.next_frame()) is not None:
            out.append(got)
        return out

    return asyncio.run(go())


def test_blocks_are_read_and_garbage_between_them_skipped() -> None:
    got = frames([b"noise\x0bMSH|one\x1c\rmore noise\x1c\r\x0bMSH|two\x1c\r"])
    assert got == [Frame(b"MSH|one"), Frame(b"MSH|two")]


def test_a_block_end_split_across_reads_is_found() -> None:
    got = frames([b"\x0bMSH|a", b"bc\x1c", b"\r\x0bMSH|d\x1c\r"])
    assert got == [Frame(b"MSH|abc"), Frame(b"MSH|d")]


def test_a_new_start_inside_a_block_restarts_it() -> None:
    got = frames([b"\x0bMSH|broken\x0bMSH|whole\x1c\r"])
    assert got == [Frame(b"MSH|whole")]


def test_an_oversized_block_is_reported_with_its_start_and_skipped() -> None:
    big = b"MSH|" + b"x" * 500
    got = frames([b"\x0b" + big[:200], big[200:] + b"\x1c\r\x0bMSH|next\x1c\r"])
    assert got[0].oversized and got[0].payload.startswith(b"MSH|x")
    assert got[1] == Frame(b"MSH|next")


def test_an_unfinished_block_at_the_end_is_dropped() -> None:
    assert frames([b"\x0bMSH|half"]) == []


def test_a_slow_sender_times_out() -> None:
    async def go() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b"\x0bMSH|start")
        mllp = MllpReader(reader, 100, frame_timeout_s=0.05, idle_timeout_s=5)
        await mllp.next_frame()

    with pytest.raises(FramingTimeout):
        asyncio.run(go())


def test_a_full_listener_makes_room_only_by_closing_an_idle_connection() -> None:
    """The connection idle longest goes, if idle long enough; one reading a message or owed
    ACKs never does, however long ago it began."""

    async def go() -> None:
        async def connection(
            idle_since: float, data: bytes = b"", unanswered: int = 0
        ) -> Connection:
            reader = asyncio.StreamReader()
            reader.feed_data(data)
            mllp = MllpReader(reader, 100, frame_timeout_s=5, idle_timeout_s=5)
            if data:
                # Reads the start of a block and waits for the rest.
                task = asyncio.create_task(mllp.next_frame())
                while not mllp.in_frame:
                    await asyncio.sleep(0)
                task.cancel()
            return Connection(("127.0.0.1", 1), None, mllp, idle_since, unanswered)  # type: ignore[arg-type]

        reading = await connection(0.0, b"\x0bMSH|half")
        owed = await connection(1.0, unanswered=1)
        idle_a, idle_b = await connection(5.0), await connection(3.0)
        assert reading.busy and owed.busy and not idle_a.busy
        assert idlest([reading, owed, idle_a, idle_b], now=10.0, min_idle_s=5.0) is idle_b
        assert idlest([reading, owed, idle_a, idle_b], now=7.0, min_idle_s=5.0) is None
        assert idlest([reading, owed], now=100.0, min_idle_s=0.0) is None

    asyncio.run(go())


def test_a_parse_chunk_is_as_large_as_the_backlog_before_it_within_bounds() -> None:
    assert parse_chunk_size(0) == PARSE_CHUNK_MIN
    assert parse_chunk_size(PARSE_CHUNK_MIN + 5) == PARSE_CHUNK_MIN + 5
    assert parse_chunk_size(10 * PARSE_CHUNK_MAX) == PARSE_CHUNK_MAX
