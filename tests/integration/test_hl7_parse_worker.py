"""The MLLP listener's parse worker processes: results equal parsing in process, in the order the
chunks were sent; a worker that dies is noticed, its chunk is parsed in the listener, and another
worker takes its place."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ingest.hl7_map import read_header
from ingest.hl7_parsing import ParseWorker, ParseWorkerGone, parse_many
from ingest.mllp import PARSE_CHUNK_MAX, PARSE_CHUNK_MIN, AdtProcessor, MllpListener
from ingest.publish import Publisher
from parcours.db import make_engine, upgrade
from parcours.settings import Settings
from parcours.topics import Topics, ensure_topics
from tests.hl7_messages import adt

pytestmark = pytest.mark.integration
TZ = "Europe/Paris"


def _chunk(n: int, prefix: str) -> tuple[list[bytes], list]:
    payloads = [adt("A01", ipp=f"{prefix}{i}", nda=f"{prefix}N{i}") for i in range(n)]
    payloads.append(adt("A01", ipp=f"{prefix}X").replace(b"PV1|", b"PV9|"))  # no PV1: AE
    return payloads, [read_header(p) for p in payloads]


def test_a_worker_parses_as_the_listener_would_and_in_order() -> None:
    async def scenario() -> None:
        worker = ParseWorker(TZ)
        await worker.start()
        try:
            chunks = [_chunk(20, f"P{k}-") for k in range(5)]
            got = await asyncio.gather(*(worker.parse(p, h) for p, h in chunks))
            for (payloads, headers), results in zip(chunks, got, strict=True):
                assert results == parse_many(payloads, headers, ZoneInfo(TZ))
                assert [kind for kind, _ in results] == ["ok"] * 20 + ["err"]
        finally:
            await worker.stop()

    asyncio.run(scenario())


def test_a_dead_worker_fails_its_chunks_instead_of_hanging() -> None:
    async def scenario() -> None:
        worker = ParseWorker(TZ)
        await worker.start()
        try:
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
            payloads, headers = _chunk(3, "D-")
            with pytest.raises(ParseWorkerGone):
                await asyncio.wait_for(worker.parse(payloads, headers), 30)
        finally:
            await worker.stop()

    asyncio.run(scenario())


def _listener_settings(broker: str, topic_prefix: str, tmp_path: Path) -> Settings:
    db = f"sqlite:///{tmp_path / 'hl7.db'}"
    upgrade(db)
    settings = Settings(
        database_url=db,
        kafka_bootstrap_servers=broker,
        topic_prefix=topic_prefix,
        mllp_parse_processes=1,
        mllp_senders={"gam-test": ["CHU21"]},
    )
    ensure_topics(broker, Topics.from_settings(settings).all(), 2)
    return settings


def _run_listener(settings: Settings, scenario: Callable[[MllpListener], Awaitable[None]]) -> None:
    """Run `scenario` against a started listener with one parse worker."""
    engine = make_engine(settings.database_url)
    publisher = Publisher(settings)

    async def main() -> None:
        listener = MllpListener(settings, AdtProcessor(engine, publisher, publish_locations=False))
        await listener.start("127.0.0.1", 0)
        try:
            await scenario(listener)
        finally:
            await listener.stop()

    try:
        asyncio.run(main())
    finally:
        publisher.close()
        engine.dispose()


def test_the_listener_answers_through_a_worker_death_and_starts_another(
    broker: str, topic_prefix: str, tmp_path: Path
) -> None:
    async def scenario(listener: MllpListener) -> None:
        first = await listener.handle(adt("A01", ipp="W1", nda="WN1", movement="WM1"))
        assert first[1].code == "AA"
        (dead,) = listener._workers
        assert dead.pid is not None
        os.kill(dead.pid, signal.SIGKILL)
        second = await asyncio.wait_for(
            listener.handle(adt("A01", ipp="W2", nda="WN2", movement="WM2")), 60
        )
        assert second[1].code == "AA"
        (alive,) = listener._workers
        assert alive is not dead and alive.pid != dead.pid
        third = await listener.handle(adt("A01", ipp="W3", nda="WN3", movement="WM3"))
        assert third[1].code == "AA"

    _run_listener(_listener_settings(broker, topic_prefix, tmp_path), scenario)


def test_a_burst_goes_to_the_worker_in_chunks_that_grow_with_its_backlog(
    broker: str, topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    parse = ParseWorker.parse

    async def counted(self: ParseWorker, payloads: list[bytes], headers: list) -> list:
        sizes.append(len(payloads))
        return await parse(self, payloads, headers)

    monkeypatch.setattr(ParseWorker, "parse", counted)

    async def scenario(listener: MllpListener) -> None:
        # 300 messages arrive within one turn of the event loop, before any chunk comes back.
        answers = [
            listener.submit(adt("A01", ipp=f"B{i}", nda=f"BN{i}", movement=f"BM{i}"))[1]
            for i in range(300)
        ]
        outcomes = await asyncio.wait_for(asyncio.gather(*answers), 120)
        assert [o.code for o in outcomes] == ["AA"] * 300

    _run_listener(_listener_settings(broker, topic_prefix, tmp_path), scenario)
    # A chunk is sent once it is as large as what the worker has yet to parse (at least
    # PARSE_CHUNK_MIN, at most PARSE_CHUNK_MAX): 32 with nothing sent, 32, 64, then 128; the
    # rest (44) leaves on the loop's next turn.
    assert (PARSE_CHUNK_MIN, PARSE_CHUNK_MAX) == (32, 128)
    assert sizes == [32, 32, 64, 128, 44]
