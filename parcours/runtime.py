"""What every `parcours` process does once at start: read its settings, set up logging.

The area CLIs import this module, never `parcours.cli`, which imports them.
"""

from __future__ import annotations

import logging
import sys

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


def load_settings() -> Settings:
    """Read the settings once for this process and configure logging from them."""
    settings = Settings()
    setup_logging(settings.log_level)
    return settings


def redact(url: str) -> str:
    """A database URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
