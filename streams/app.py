"""The Faust application: built from settings, agents registered in `streams.agents`.

Nothing connects at import time; `create_app` builds the app and `run_worker` runs it. The app
holds one table, `pathway-state` (patient id → `PatientState.to_json()`), co-partitioned with the
raw topic, which is keyed by patient; SQL is written by `streams.sink` in one transaction per batch.
"""

from __future__ import annotations

import gc

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
        settings.streams_app_id or f"{settings.topic_prefix}parcours-streams",
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
        table_standby_replicas=0,
        # Faust keeps a folder per app id; keep it with the other local files, not in the cwd.
        datadir=str(settings.data_dir / "streams"),
    )
    sink = SqlSink(make_engine(settings.db_url), settings.census_capacity)
    register_agents(app, topics, sink, settings)
    return app


def run_worker(settings: Settings) -> None:
    """Run a stream worker until SIGINT/SIGTERM."""
    topics = Topics.from_settings(settings)
    ensure_topics(settings.bootstrap, topics.all(), settings.topic_partitions)
    (settings.data_dir / "streams").mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.lower())
    # Faust's start-up spinner sets the root logger to DEBUG for itself, and keeps it there: every
    # message sent would then build a debug record that no handler prints. No spinner, no DEBUG.
    worker.spinner = None
    worker.execute_from_commandline()


def tune_gc() -> None:
    """Make Python's cycle collector fit a stream worker.

    A batch allocates hundreds of thousands of short-lived objects while the heap holds every
    patient's state. With the default thresholds the collector runs a young collection every 700
    allocations and, often, walks that whole heap: it took two thirds of the time of the pathway
    rules. Objects alive at start-up (modules, Faust) are frozen out of its reach, and it runs
    less often. Memory is still reclaimed: most objects die by reference count, not by the
    collector.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
