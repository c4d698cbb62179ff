"""What every `parcours` process does once at start: read its settings, set up logging, and
(for the processes that handle many messages) tune Python's cycle collector.

The area CLIs import this module, never `parcours.cli`, which imports them.
"""

from __future__ import annotations

import gc
import logging
import sys

import typer

from parcours.settings import Settings


def setup_logging(level: str) -> None:
    """Log to stderr; the Kafka clients only speak up for warnings."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # kafka-python warns whenever one of its own selector callbacks takes over 100 ms, which a
    # busy two-core machine does all through a backfill; nothing in it calls for action.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)


# Allocations between two young collections of the cycle collector (CPython's default: 700).
GC_YOUNG_THRESHOLD = 50_000


def collect_seldom() -> None:
    """Run Python's cycle collector less often, in a process that handles many messages.

    Each message allocates hundreds of short-lived objects, few of them in cycles, while the
    heap holds many long-lived ones (states, caches). With the default thresholds the collector
    runs a young collection every 700 allocations and, often, walks that whole heap. Objects
    alive now (modules, settings) are frozen out of its reach. Memory is still reclaimed: most
    objects die by reference count, not by the collector."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


def load_settings() -> Settings:
    """Read the settings once for this process and configure logging from them."""
    settings = Settings()
    setup_logging(settings.log_level)
    return settings


def redact(url: str) -> str:
    """A database URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def require_topic_identity(
    settings: Settings, role: str, db_timeout_s: float | None = None
) -> None:
    """Start hook of the stream worker and the gateway: exit (code 3) with a clear message if
    the broker's raw topic is not the one the SQL data came from (see parcours.identity).
    With `db_timeout_s`, a database that does not answer in time skips the check instead of
    holding the start."""
    from parcours.db import make_engine, upgrade
    from parcours.identity import TopicIdentityError, check_topic_identity

    if settings.database_url is None:
        # The demo's SQLite file must exist with its tables before anything reads it.
        upgrade(settings.db_url)
    engine = make_engine(settings.db_url, timeout_s=db_timeout_s)
    try:
        check_topic_identity(settings, engine, role)
    except TopicIdentityError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from exc
    finally:
        engine.dispose()
