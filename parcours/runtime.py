"""What every `parcours` process does once at start: read its settings, set up logging.

The area CLIs import this module, never `parcours.cli`, which imports them.
"""

from __future__ import annotations

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


def load_settings() -> Settings:
    """Read the settings once for this process and configure logging from them."""
    settings = Settings()
    setup_logging(settings.log_level)
    return settings


def redact(url: str) -> str:
    """A database URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def require_topic_identity(settings: Settings, role: str) -> None:
    """Start hook of the stream worker and the gateway: exit (code 3) with a clear message if
    the broker's raw topic is not the one the SQL data came from (see parcours.identity)."""
    from parcours.db import make_engine, upgrade
    from parcours.identity import TopicIdentityError, check_topic_identity

    if settings.database_url is None:
        # The demo's SQLite file must exist with its tables before anything reads it.
        upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        check_topic_identity(settings, engine, role)
    except TopicIdentityError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from exc
    finally:
        engine.dispose()
