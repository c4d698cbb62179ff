"""Wiring of a stream worker: the Faust app built from settings, its SQL sink and its handlers.

Nothing connects at import time; `create_app` builds the app and `run_worker` runs it.
"""

from __future__ import annotations

from datetime import timedelta

from parcours.db import make_engine
from parcours.settings import Settings
from parcours.topics import Topics, ensure_topics
from streams.runtime.faust_compat import (
    ParcoursApp,
    PromptStopWorker,
    SeekThenResumeTableManager,
    tolerate_header_keys,
)
from streams.runtime.worker import Worker
from streams.sink.writer import SqlSink


def create_app(settings: Settings) -> ParcoursApp:
    """A Faust app for `settings`, with its handlers registered."""
    topics = Topics.from_settings(settings)
    app = ParcoursApp(
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
        TableManager=SeekThenResumeTableManager,
        # Faust keeps a folder per app id; keep it with the other local files, not in the cwd.
        datadir=str(settings.data_dir / "streams"),
        batch_size=settings.worker_batch_size,
        batch_within_s=settings.worker_batch_within_s,
        # A fetch hands over at most this many records, so a batch overshoots its size by less.
        broker_max_poll_records=max(1, min(1000, settings.worker_batch_size // 5)),
        # While a batch is being applied the consumer prefetches one fetch per partition; at
        # Faust's 1 MB (about a thousand resources) the next batch of a backlog held only that.
        consumer_max_fetch_size=8 * 1024**2,
        # `send_batched` fills producer batches of this size (Faust's default is 16 kB).
        producer_max_batch_size=256 * 1024,
    )
    sink = SqlSink(
        make_engine(settings.db_url),
        settings.census_capacity,
        horizon=timedelta(days=settings.census_horizon_days),
        lookback=timedelta(days=settings.census_lookback_days),
    )
    Worker(app, topics, sink, settings).register()
    return app


def run_worker(settings: Settings) -> None:
    """Run a stream worker until SIGINT/SIGTERM."""
    tolerate_header_keys()
    topics = Topics.from_settings(settings)
    ensure_topics(settings.bootstrap, topics.all(), settings.topic_partitions)
    (settings.data_dir / "streams").mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    for start in app.before_start:
        start()
    worker = PromptStopWorker(app, loglevel=settings.log_level.lower())
    # Faust's start-up spinner sets the root logger to DEBUG for itself, and keeps it there: every
    # message sent would then build a debug record that no handler prints. No spinner, no DEBUG.
    worker.spinner = None
    worker.execute_from_commandline()
