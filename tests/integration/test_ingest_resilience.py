"""What the gateway promises when things go wrong: no duplicate after a restart, 503 (never a
false 2xx) while Kafka is frozen or absent, and service again once it is back."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import httpx
import pytest

from ingest.auth import create_token
from parcours.broker import EmbeddedBroker, free_port
from parcours.db import make_engine
from parcours.settings import Settings
from parcours.topics import Topics
from tests.integration.ingest_helpers import (
    FHIR,
    encounter,
    gateway_env,
    read_topic,
    run_gateway,
    unique,
)
from tests.support import wait_until

pytestmark = pytest.mark.integration


def new_source(pg_url: str) -> tuple[str, str]:
    engine = make_engine(pg_url)
    name = unique("feed")
    token = create_token(engine, name)
    engine.dispose()
    return name, token


def post(url: str, token: str, path: str, body: object) -> httpx.Response:
    return httpx.post(
        f"{url}{path}",
        content=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": FHIR},
        timeout=60,
    )


def test_idempotency_survives_a_gateway_restart(
    broker: str, pg_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    _, token = new_source(pg_url)
    env = gateway_env(broker, pg_url, topic_prefix)
    pid = unique("p")
    resources = [encounter(unique("e"), pid), {"resourceType": "Patient", "id": pid}]
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": r, "request": {"method": "POST", "url": str(r["resourceType"])}}
            for r in resources
        ],
    }
    with run_gateway(env, tmp_path / "gw1.log") as gw:
        first = post(gw.url, token, "/fhir", bundle)
    assert first.status_code == 200, first.text
    assert [e["response"]["status"] for e in first.json()["entry"]] == ["201 Created"] * 2

    with run_gateway(env, tmp_path / "gw2.log") as gw:
        again = post(gw.url, token, "/fhir", bundle)
        single = post(gw.url, token, "/fhir/Encounter", resources[0])
    assert [e["response"]["status"] for e in again.json()["entry"]] == ["200 OK"] * 2
    assert single.status_code == 200

    raw = read_topic(broker, Topics.from_settings(Settings(topic_prefix=topic_prefix)).raw)
    assert sorted(json.loads(m.value)["resourceType"] for m in raw) == ["Encounter", "Patient"]
    assert {m.key for m in raw} == {pid.encode()}


def test_503_while_the_broker_is_frozen_then_2xx_after_it_resumes(
    pg_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    _, token = new_source(pg_url)
    raw_topic = Topics.from_settings(Settings(topic_prefix=topic_prefix)).raw
    with EmbeddedBroker(port=free_port()) as own:
        assert own.process is not None
        env = gateway_env(
            own.bootstrap, pg_url, topic_prefix, PARCOURS_INGEST_PUBLISH_TIMEOUT_S="3"
        )
        with run_gateway(env, tmp_path / "gw.log") as gw:
            pid = unique("p")
            assert (
                post(
                    gw.url, token, "/fhir/Patient", {"resourceType": "Patient", "id": pid}
                ).status_code
                == 201
            )

            frozen = encounter(unique("e"), pid)
            tx_ids = [unique("e") for _ in range(3)]
            transaction = {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "resource": encounter(i, pid),
                        "request": {"method": "PUT", "url": f"Encounter/{i}"},
                    }
                    for i in tx_ids
                ],
            }
            os.kill(own.process.pid, signal.SIGSTOP)
            try:
                paused = post(gw.url, token, "/fhir/Encounter", frozen)
                paused_tx = post(gw.url, token, "/fhir", transaction)
                health = httpx.get(f"{gw.url}/healthz", timeout=30)
            finally:
                os.kill(own.process.pid, signal.SIGCONT)
            for resp in (paused, paused_tx):
                assert resp.status_code == 503, resp.text
                assert int(resp.headers["retry-after"]) > 0
                outcome = resp.json()
                assert outcome["resourceType"] == "OperationOutcome"
                assert outcome["issue"][0]["code"] == "transient"
            assert health.status_code == 503 and health.json()["kafka"].startswith("down")

            def accepted() -> bool:
                return post(gw.url, token, "/fhir/Encounter", frozen).status_code in (200, 201)

            wait_until(accepted, timeout_s=60, every_s=1, what="a 2xx after SIGCONT")
            resumed_tx = post(gw.url, token, "/fhir", transaction)
            assert resumed_tx.status_code == 200, resumed_tx.text
            raw = read_topic(own.bootstrap, raw_topic)
    ids = [json.loads(m.value)["id"] for m in raw]
    # Every acknowledged resource is on the topic once. The gateway probes Kafka before sending,
    # so the requests refused while it was frozen sent nothing that could land later.
    assert Counter(ids) == Counter([pid, frozen["id"], *tx_ids])


def test_gateway_starts_without_a_broker_and_answers_503(
    pg_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    _, token = new_source(pg_url)
    nowhere = f"127.0.0.1:{free_port()}"
    env = gateway_env(nowhere, pg_url, topic_prefix, PARCOURS_INGEST_PUBLISH_TIMEOUT_S="2")
    with run_gateway(env, tmp_path / "gw.log", healthy=False) as gw:
        resp = post(gw.url, token, "/fhir/Encounter", encounter(unique("e"), unique("p")))
        assert resp.status_code == 503, resp.text
        assert resp.headers["retry-after"]
        assert httpx.get(f"{gw.url}/healthz", timeout=30).status_code == 503
        # Validation still answers without Kafka: a bad resource is a 422, not a 503.
        bad = post(
            gw.url, token, "/fhir/Encounter", encounter(unique("e"), unique("p"), status="x")
        )
        assert bad.status_code == 422
        assert gw.proc.poll() is None


def test_database_down_is_a_503_too(broker: str, topic_prefix: str, tmp_path: Path) -> None:
    dead_db = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    env = gateway_env(broker, dead_db, topic_prefix)
    with run_gateway(env, tmp_path / "gw.log", healthy=False) as gw:
        resp = post(gw.url, "prc_any", "/fhir/Encounter", encounter(unique("e"), "p"))
        health = httpx.get(f"{gw.url}/healthz", timeout=30)
    assert resp.status_code == 503, resp.text
    assert resp.headers["retry-after"]
    assert resp.json()["issue"][0]["code"] == "transient"
    assert health.status_code == 503 and health.json()["database"].startswith("down")
