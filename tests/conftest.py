"""Fixtures shared by every tier: a real broker and a fresh PostgreSQL database per session.

- `broker`: a Tansu broker on a free port, for the whole session (`KAFKA_BOOTSTRAP_SERVERS`
  points the tests at another broker instead).
- `pg_url`: a new, migrated database on the machine's PostgreSQL, dropped at the end
  (`PARCOURS_TEST_DATABASE_URL` overrides the server, default the local `test` database).
- `topic_prefix`: topic and group names of this test only.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from parcours.broker import EmbeddedBroker, free_port
from parcours.db import upgrade
from tests.support import fresh_database

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The third-party data folder beside the repository (../shared/data)."""
    path = Path(os.environ.get("PARCOURS_SHARED_DATA", SHARED_DATA))
    assert path.is_dir(), f"shared data not found at {path}; set PARCOURS_SHARED_DATA"
    return path


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """Bootstrap address of a real Kafka-protocol broker for this session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    with EmbeddedBroker(port=free_port()) as embedded:
        yield embedded.bootstrap


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a fresh, migrated PostgreSQL database for this session."""
    with fresh_database(os.environ.get("PARCOURS_TEST_DATABASE_URL", DEFAULT_PG)) as url:
        yield url


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, pg_url: str, tmp_path: Path) -> str:
    """A migrated database of each kind: the session's PostgreSQL, then a new SQLite file."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
        upgrade(url)
        return url
    return pg_url


@pytest.fixture
def topic_prefix() -> str:
    """A prefix that gives this test its own topics and consumer groups."""
    return f"t{uuid.uuid4().hex[:8]}."
