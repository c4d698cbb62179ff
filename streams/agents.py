"""Thin Faust adapters: decode, map (pure), hand events to the sink, dead-letter the rest."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import faust

from parcours.topics import Topics
from streams.events import CanonicalEvent
from streams.fhir_map import MappingError, map_resource
from streams.sink import SqlSink

log = logging.getLogger(__name__)

BATCH_SIZE = 1000
BATCH_WITHIN_S = 0.5


def decode_batch(
    messages: list[tuple[bytes | None, bytes]],
) -> tuple[list[CanonicalEvent], list[tuple[bytes | None, bytes, str]]]:
    """Map raw (key, payload) messages to events; failures come back with their reason."""
    events: list[CanonicalEvent] = []
    rejects: list[tuple[bytes | None, bytes, str]] = []
    for key, payload in messages:
        try:
            events.extend(map_resource(json.loads(payload)))
        except (ValueError, MappingError) as exc:
            rejects.append((key, payload, str(exc)))
    return events, rejects


def register_agents(app: faust.App, topics: Topics, sink: SqlSink) -> None:
    """Declare the topics and agents of `app`."""
    raw = app.topic(topics.raw, key_type=bytes, value_type=bytes, value_serializer="raw")
    dead = app.topic(topics.deadletter, key_type=bytes, value_type=bytes, value_serializer="raw")

    @app.agent(raw)
    async def normalise(stream: Any) -> AsyncIterator[int]:
        async for batch in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
            events, rejects = decode_batch([(ev.key, ev.value) for ev in batch])
            written = await asyncio.to_thread(sink.write, events)
            for key, payload, reason in rejects:
                log.warning("dead-lettered a raw message: %s", reason)
                await dead.send(
                    key=key,
                    value=payload,
                    headers={"reason": reason.encode(), "stage": b"normalise"},
                )
            yield written
