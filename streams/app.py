"""The Faust application: built from settings, agents registered in `streams.agents`.

Nothing connects at import time; `create_app` builds the app and `run_worker` runs it.
"""

from __future__ import annotations

import faust

from parcours.db import make_engine
from parcours.settings import Settings
from parcours.topics import Topics, ensure_topics
from streams.agents import register_agents
from streams.sink import SqlSink


def create_app(settings: Settings) -> faust.App:
    """A Faust app for `settings`, with its agents registered."""
    topics = Topics.from_settings(settings)
    app = faust.App(
        f"{settings.topic_prefix}parcours-streams",
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        topic_partitions=settings.topic_partitions,
        web_enabled=settings.worker_web_port > 0,
        web_port=settings.worker_web_port or 6066,
        web_host="127.0.0.1",
        broker_session_timeout=settings.worker_session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.worker_session_timeout_s / 5),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
    )
    register_agents(app, topics, SqlSink(make_engine(settings.db_url)))
    return app


def run_worker(settings: Settings) -> None:
    """Run a stream worker until SIGINT/SIGTERM."""
    topics = Topics.from_settings(settings)
    ensure_topics(settings.bootstrap, topics.all(), settings.topic_partitions)
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.lower())
    worker.execute_from_commandline()
