"""What the gateway promises when things go wrong: no duplicate after a restart, 503 (never a
false 2xx) while Kafka is frozen or absent, and service again once it is back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ingest.auth import create_token
from parcours.broker import EmbeddedBroker, free_port
from parcours.db import make_engine
from parcours.settings import Settings
from parcours.topics import Topics
from tests.conftest import DEFAULT_PG
from tests.integration.ingest_helpers import (
    FHIR,
    encounter,
    gateway_env,
    read_topic,
    run_gateway,
    unique,
)
from tests.support import fresh_database, wait_until

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


@dataclass
class Answer:
    """One resource's status in one request, with when the request was sent and answered."""

    rid: str
    status: int
    sent: float
    done: float


class Integrator(threading.Thread):
    """Pushes new Encounters (single POSTs and transactions of three) until stopped, and keeps
    what was not accepted in a queue it sends first, as a real feed does."""

    def __init__(self, url: str, token: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {token}", "Content-Type": FHIR},
            timeout=60,
        )
        self.stop = stop
        self.patient = unique("p")
        self.resources: dict[str, dict[str, object]] = {}
        self.backlog: list[list[str]] = []
        self.answers: list[Answer] = []
        self.unexpected: list[str] = []
        self.turn = 0

    def send(self, rids: list[str]) -> list[int]:
        """POST `rids` (one resource, or a transaction) and return each one's status."""
        sent = time.monotonic()
        if len(rids) == 1:
            resp = self.client.post("/fhir/Encounter", content=json.dumps(self.resources[rids[0]]))
            statuses = [resp.status_code]
        else:
            tx = {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "resource": self.resources[r],
                        "request": {"method": "PUT", "url": f"Encounter/{r}"},
                    }
                    for r in rids
                ],
            }
            resp = self.client.post("/fhir", content=json.dumps(tx))
            statuses = (
                [int(e["response"]["status"].split()[0]) for e in resp.json()["entry"]]
                if resp.status_code == 200
                else [resp.status_code] * len(rids)
            )
        if resp.status_code not in (200, 201, 503) or (
            resp.status_code == 503 and not resp.headers.get("retry-after")
        ):
            self.unexpected.append(f"{resp.status_code} {resp.text[:300]}")
        done = time.monotonic()
        self.answers += [Answer(r, s, sent, done) for r, s in zip(rids, statuses, strict=True)]
        return statuses

    def run(self) -> None:
        while not self.stop.is_set():
            if self.backlog:
                rids = self.backlog.pop(0)
            else:
                self.turn += 1
                rids = [unique("e") for _ in range(1 if self.turn % 2 else 3)]
                for rid in rids:
                    self.resources[rid] = encounter(rid, self.patient)
            if set(self.send(rids)) - {200, 201}:
                self.backlog.append(rids)
                # Pace the retries of a feed that is being refused.
                self.stop.wait(0.05)

    def accepted_after(self, t: float) -> int:
        return sum(1 for a in self.answers if a.status == 201 and a.sent > t)

    def answered_after(self, t: float) -> int:
        return sum(1 for a in self.answers if a.sent > t)


def test_broker_killed_and_restarted_empty_while_integrators_push(tmp_path: Path) -> None:
    """The embedded broker keeps its data in memory: killed and restarted, it comes back empty
    under a new cluster id. Until an operator resets the database, the gateway answers 503 (never
    "duplicate" for records the new broker never received, and publishes nothing); after
    `parcours db reset --yes`, every resource sent again is accepted, and the new raw topic holds
    each resource exactly once."""
    prefix = f"k{uuid.uuid4().hex[:8]}."
    raw_topic = Topics.from_settings(Settings(topic_prefix=prefix)).raw
    port = free_port()
    with fresh_database(os.environ.get("PARCOURS_TEST_DATABASE_URL", DEFAULT_PG)) as db:
        tokens = [new_source(db)[1] for _ in range(2)]
        first = EmbeddedBroker(port=port).start()
        try:
            env = gateway_env(first.bootstrap, db, prefix, PARCOURS_INGEST_PUBLISH_TIMEOUT_S="3")
            with run_gateway(env, tmp_path / "gw.log") as gw:
                stop = threading.Event()
                feeds = [Integrator(gw.url, t, stop) for t in tokens]
                for feed in feeds:
                    feed.start()
                try:
                    wait_until(
                        lambda: all(f.accepted_after(0) >= 10 for f in feeds),
                        what="both feeds accepted before the kill",
                    )
                    assert first.process is not None
                    first.process.kill()
                    first.process.wait()
                    killed = time.monotonic()
                    second = EmbeddedBroker(port=port).start()
                    try:
                        restarted = time.monotonic()
                        wait_until(
                            lambda: all(f.answered_after(restarted) >= 10 for f in feeds),
                            what="answers after the restart",
                        )
                        reset_started = time.monotonic()
                        reset = subprocess.run(
                            [sys.executable, "-m", "parcours", "db", "reset", "--yes"],
                            env=env,
                            capture_output=True,
                            text=True,
                            timeout=120,
                        )
                        assert reset.returncode == 0, reset.stderr
                        reset_done = time.monotonic()
                        wait_until(
                            lambda: all(f.accepted_after(reset_done) >= 10 for f in feeds),
                            what="both feeds accepted after the reset",
                        )
                    finally:
                        stop.set()
                        for feed in feeds:
                            feed.join(60)
                    # The feeds send everything again, as the reset's message tells them to.
                    replayed: list[Answer] = []
                    for feed in feeds:
                        for rid in feed.resources:

                            def accepted(feed: Integrator = feed, rid: str = rid) -> bool:
                                return set(feed.send([rid])) <= {200, 201}

                            wait_until(accepted, timeout_s=60, every_s=0.2, what=rid)
                            replayed.append(feed.answers[-1])
                    for feed in feeds:
                        feed.client.close()
                    raw = read_topic(second.bootstrap, raw_topic)
                finally:
                    second.stop()
                log = gw.log.read_text(errors="replace")
        finally:
            first.stop()
    # kafka-python logs a traceback of its own for a connection the broker reset; none may
    # come from the gateway.
    lines = log.splitlines()
    ours = [
        n
        for n, line in enumerate(lines)
        if line.startswith("Traceback") and " kafka." not in lines[n - 1]
    ]
    assert not ours, "\n".join(lines[ours[0] - 5 : ours[0] + 20]) if ours else ""
    for feed in feeds:
        assert not feed.unexpected, feed.unexpected[:5]
    answers = [a for f in feeds for a in f.answers]
    # Between the kill and the reset, nothing was accepted, nor answered as a duplicate.
    window = [a for a in answers if killed < a.sent and a.done < reset_started]
    assert window and {a.status for a in window} == {503}, Counter(a.status for a in window)
    # A duplicate after the kill is only ever a resource the new broker already holds.
    accepted_at = {}
    for a in sorted(answers, key=lambda a: a.done):
        if a.status == 201 and a.sent > reset_started:
            accepted_at.setdefault(a.rid, a.done)
    for a in answers:
        if a.status == 200 and a.sent > killed:
            assert a.rid in accepted_at and accepted_at[a.rid] < a.sent, a
    ids = Counter(json.loads(m.value)["id"] for m in raw)
    everything = {rid for f in feeds for rid in f.resources}
    assert set(ids) == everything, (len(ids), len(everything))
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1][:5]
    assert {a.status for a in replayed} <= {200, 201}
