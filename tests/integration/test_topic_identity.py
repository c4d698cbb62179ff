"""The database knows which broker topic its data came from: the worker and the gateway refuse a
new topic (a broker that lost its data) instead of mixing, and `reset_data` starts clean."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, insert, select

from parcours.broker import EmbeddedBroker, free_port
from parcours.db import make_engine
from parcours.db.ingest_models import IngestLogRow, IntegratorRow
from parcours.identity import (
    TopicGuard,
    TopicIdentityError,
    broker_identity,
    check_topic_identity,
    recorded_identity,
    reset_data,
)
from parcours.settings import Settings
from parcours.topics import Topics, ensure_topics
from tests.conftest import DEFAULT_PG
from tests.support import fresh_database, parcours_env, parcours_process

pytestmark = pytest.mark.integration


@pytest.fixture
def engine() -> Iterator[Engine]:
    """A database of this test alone: `reset_data` empties every table of the one it is given."""
    with fresh_database(os.environ.get("PARCOURS_TEST_DATABASE_URL", DEFAULT_PG)) as url:
        eng = make_engine(url)
        try:
            yield eng
        finally:
            eng.dispose()


@pytest.fixture
def restarted_broker() -> Iterator[str]:
    """A second broker: what a restarted in-memory broker is, new and empty."""
    with EmbeddedBroker(port=free_port()) as embedded:
        yield embedded.bootstrap


def settings_for(bootstrap: str, engine: Engine, prefix: str) -> Settings:
    return Settings(
        kafka_bootstrap_servers=bootstrap,
        database_url=engine.url.render_as_string(hide_password=False),
        topic_prefix=prefix,
    )


def log_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(IngestLogRow)).scalar_one())


def publish_record(engine: Engine) -> None:
    """What the gateway writes after the broker acknowledged a resource."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(IntegratorRow),
            [{"name": "lab", "token_hash": "0" * 64, "active": True, "created_at": now}],
        )
        conn.execute(
            insert(IngestLogRow),
            [
                {
                    "resource_type": "Patient",
                    "resource_id": "p1",
                    "version": "v:1",
                    "kafka_key": "p1",
                    "source": "lab",
                    "received_at": now,
                    "partition": 0,
                    "offset": 0,
                }
            ],
        )


def test_a_new_topic_is_refused_until_the_database_is_reset(
    broker: str, restarted_broker: str, engine: Engine, topic_prefix: str
) -> None:
    first = settings_for(broker, engine, topic_prefix)
    raw = Topics.from_settings(first).raw
    check_topic_identity(first, engine, "test")
    recorded = recorded_identity(engine, raw)
    assert recorded is not None
    assert recorded[0] == broker_identity(broker, raw)
    publish_record(engine)
    # The same broker again: nothing to say.
    check_topic_identity(first, engine, "test")

    second = settings_for(restarted_broker, engine, topic_prefix)
    with pytest.raises(TopicIdentityError) as refused:
        check_topic_identity(second, engine, "test")
    message = str(refused.value)
    new = broker_identity(restarted_broker, raw)
    assert new is not None and new.topic_id != recorded[0].topic_id
    assert recorded[0].topic_id in message and new.topic_id in message
    assert "Le topic" in message and "The broker's topic" in message
    assert "parcours db reset --yes" in message
    # The dedupe log still says "published": it must not speak for the new topic.
    assert log_rows(engine) == 1

    emptied = reset_data(engine, new)
    assert "ingest_log" in emptied and "integrators" not in emptied
    assert "ingest_owners" not in emptied and "ingest_grants" not in emptied
    assert log_rows(engine) == 0
    with engine.connect() as conn:
        assert conn.execute(select(IntegratorRow.name)).scalars().all() == ["lab"]
    check_topic_identity(second, engine, "test")
    # And now the old broker is the stranger.
    with pytest.raises(TopicIdentityError):
        check_topic_identity(first, engine, "test")


@pytest.mark.parametrize("command", [["streams", "worker"], ["ingest", "serve"]])
def test_worker_and_gateway_stop_on_a_new_topic_with_a_clear_message(
    broker: str,
    restarted_broker: str,
    engine: Engine,
    topic_prefix: str,
    tmp_path: Path,
    command: list[str],
) -> None:
    url = engine.url.render_as_string(hide_password=False)
    check_topic_identity(settings_for(broker, engine, topic_prefix), engine, "test")
    publish_record(engine)
    env = parcours_env(
        KAFKA_BOOTSTRAP_SERVERS=restarted_broker,
        DATABASE_URL=url,
        PARCOURS_TOPIC_PREFIX=topic_prefix,
        PARCOURS_DATA_DIR=str(tmp_path),
        PARCOURS_WORKER_WEB_PORT="0",
        PARCOURS_INGEST_PORT=str(free_port()),
    )
    log = tmp_path / "out.log"
    with parcours_process(command, env, log) as proc:
        assert proc.wait(120) == 3
    text = log.read_text()
    assert "n'est pas celui dont la base contient les données" in text
    assert "is not the one the database's data came from" in text
    assert log_rows(engine) == 1


def test_the_guard_notices_a_broker_restarted_empty_under_a_running_process(
    engine: Engine, topic_prefix: str
) -> None:
    port = free_port()
    embedded = EmbeddedBroker(port=port).start()
    try:
        settings = settings_for(embedded.bootstrap, engine, topic_prefix)
        check_topic_identity(settings, engine, "test")
        guard = TopicGuard(settings, engine, interval_s=0)
        guard()
        embedded.stop()
        # The same address, a new broker: what a crash and restart of the embedded one gives.
        embedded = EmbeddedBroker(port=port).start()
        with pytest.raises(TopicIdentityError, match="n'existe plus"):
            guard()
        ensure_topics(embedded.bootstrap, Topics.from_settings(settings).all(), 4)
        with pytest.raises(TopicIdentityError, match="is not the one the database's data"):
            guard()
    finally:
        embedded.stop()


def test_a_running_gateway_answers_503_not_duplicate_once_its_broker_restarted_empty(
    engine: Engine, topic_prefix: str, tmp_path: Path
) -> None:
    from ingest.auth import create_token
    from tests.integration.ingest_helpers import FHIR, gateway_env, read_topic, run_gateway
    from tests.support import wait_until

    url = engine.url.render_as_string(hide_password=False)
    token = create_token(engine, "lab")
    port = free_port()
    embedded = EmbeddedBroker(port=port).start()
    patient = {"resourceType": "Patient", "id": "p-restart", "meta": {"versionId": "1"}}

    def post() -> int:
        return httpx.put(
            f"{gw.url}/fhir/Patient/p-restart",
            content=json.dumps(patient).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": FHIR},
            timeout=60,
        ).status_code

    try:
        env = gateway_env(embedded.bootstrap, url, topic_prefix)
        with run_gateway(env, tmp_path / "gateway.log") as gw:
            assert post() in (200, 201)
            assert post() == 200  # the same version again: a duplicate, rightly
            embedded.stop()
            # The same address, a new empty broker: the resource is gone from the topic.
            embedded = EmbeddedBroker(port=port).start()
            wait_until(lambda: post() == 503, 60, every_s=1, what="503 from the gateway")
            raw = Topics.from_settings(settings_for(embedded.bootstrap, engine, topic_prefix)).raw
            assert read_topic(embedded.bootstrap, raw) == []
    finally:
        embedded.stop()
    assert log_rows(engine) == 1
