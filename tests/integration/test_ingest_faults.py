"""Faults and access control at the gateway, on the real broker and PostgreSQL: a database that
never answers, bodies that never arrive, clients that vanish, integrators who write what is not
theirs, revoked and expired tokens, floods, and resources too large for the producer."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import make_url, text

from ingest.auth import create_token, hash_token
from parcours.db import make_engine
from parcours.settings import Settings
from parcours.topics import Topics
from tests.integration.ingest_helpers import (
    FHIR,
    Gateway,
    encounter,
    gateway_env,
    read_topic,
    run_gateway,
    transaction,
    unique,
)
from tests.support import parcours_env, wait_until

pytestmark = pytest.mark.integration


def post(url: str, token: str, path: str, body: object) -> httpx.Response:
    return httpx.post(
        f"{url}{path}",
        content=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": FHIR},
        timeout=60,
    )


def new_token(pg_url: str, name: str | None = None) -> tuple[str, str]:
    engine = make_engine(pg_url)
    name = name or unique("feed")
    token = create_token(engine, name)
    engine.dispose()
    return name, token


@contextmanager
def black_hole() -> Iterator[int]:
    """A local TCP port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(256)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_a_black_hole_database_gives_503_and_healthz_still_answers(
    broker: str, topic_prefix: str, tmp_path: Path
) -> None:
    with black_hole() as port:
        env = gateway_env(
            broker,
            f"postgresql://postgres@127.0.0.1:{port}/nowhere",
            topic_prefix,
            PARCOURS_INGEST_DB_TIMEOUT_S="2",
        )
        with run_gateway(env, tmp_path / "gw.log", healthy=False) as gw:
            # The client's own timeouts bound the test: an answer must come.
            health = httpx.get(f"{gw.url}/healthz", timeout=5)
            assert health.status_code == 503
            assert health.json()["database"].startswith("down"), health.text
            assert health.json()["kafka"] == "ok"

            def attempt(_: int) -> httpx.Response:
                return httpx.post(
                    f"{gw.url}/fhir/Encounter",
                    content=json.dumps(encounter(unique("e"), unique("p"))).encode(),
                    headers={"Authorization": "Bearer prc_any", "Content-Type": FHIR},
                    timeout=30,
                )

            with ThreadPoolExecutor(20) as pool:
                answers = list(pool.map(attempt, range(20)))
            assert {r.status_code for r in answers} == {503}, [r.text for r in answers]
            assert all(r.headers["retry-after"] for r in answers)
            assert answers[0].json()["issue"][0]["code"] == "transient"
            assert httpx.get(f"{gw.url}/fhir/metadata", timeout=5).status_code == 200
            assert httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 503
        assert "Traceback" not in gw.log.read_text(errors="replace")


class FreezingProxy:
    """A TCP proxy to the database that can stop forwarding: while frozen, it still accepts
    connections and takes every byte (its kernel acknowledges them) but passes nothing on, so
    pooled connections and new ones alike meet a server that never answers."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(256)
        self.port = int(self.server.getsockname()[1])
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def _wait_flowing(self) -> bool:
        while not self.flowing.wait(0.2):
            if self.closed.is_set():
                return False
        return not self.closed.is_set()

    def _accept(self) -> None:
        self.server.settimeout(0.2)
        while not self.closed.is_set():
            try:
                client = self.server.accept()[0]
            except TimeoutError:
                continue
            self.sockets.append(client)
            thread = threading.Thread(target=self._connect, args=(client,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _connect(self, client: socket.socket) -> None:
        if not self._wait_flowing():
            return
        upstream = socket.create_connection(self.target)
        self.sockets.append(upstream)
        for a, b in ((client, upstream), (upstream, client)):
            thread = threading.Thread(target=self._relay, args=(a, b), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        while self._wait_flowing():
            ready, _, _ = select.select([a], [], [], 0.2)
            if not ready:
                continue
            try:
                data = a.recv(65536)
                if not data or not self._wait_flowing():
                    break
                b.sendall(data)
            except OSError:
                break
        for sock in (a, b):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed.set()
        for thread in self.threads:
            thread.join(5)
        for sock in [self.server, *self.sockets]:
            sock.close()


def test_a_database_that_stops_answering_behind_pooled_connections(
    broker: str, pg_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    _, token = new_token(pg_url)
    real = make_url(pg_url)
    proxy = FreezingProxy(real.host or "127.0.0.1", real.port or 5432)
    try:
        via_proxy = real.set(host="127.0.0.1", port=proxy.port)
        env = gateway_env(
            broker,
            via_proxy.render_as_string(hide_password=False),
            topic_prefix,
            PARCOURS_INGEST_DB_TIMEOUT_S="2",
        )
        with run_gateway(env, tmp_path / "gw.log") as gw:

            def attempt(_: int) -> httpx.Response:
                return post(gw.url, token, "/fhir/Encounter", encounter(unique("e"), unique("p")))

            # Several requests at once: the pool holds several live connections.
            with ThreadPoolExecutor(8) as pool:
                warm = list(pool.map(attempt, range(8)))
            assert {r.status_code for r in warm} == {201}, [r.text for r in warm]
            proxy.freeze()
            # The client's own timeouts bound the test: an answer must come.
            health = httpx.get(f"{gw.url}/healthz", timeout=5)
            assert health.status_code == 503
            assert health.json()["database"].startswith("down"), health.text
            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(attempt, range(16)))
            assert {r.status_code for r in answers} == {503}, [r.text[:300] for r in answers]
            assert all(r.headers["retry-after"] for r in answers)
            assert all(r.json()["issue"][0]["code"] == "transient" for r in answers)
            assert httpx.get(f"{gw.url}/fhir/metadata", timeout=5).status_code == 200
            assert httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 503
            proxy.thaw()
            wait_until(
                lambda: attempt(0).status_code == 201, every_s=0.5, what="a 201 after the thaw"
            )
            assert httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 200
        log = gw.log.read_text(errors="replace")
    finally:
        proxy.close()
    assert "Traceback" not in log, log[-3000:]


@dataclass
class Two:
    gw: Gateway
    a: tuple[str, str]
    b: tuple[str, str]
    topics: Topics
    broker: str
    pg_url: str


@pytest.fixture(scope="module")
def two(broker: str, pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Two]:
    prefix = f"f{uuid.uuid4().hex[:8]}."
    env = gateway_env(
        broker,
        pg_url,
        prefix,
        PARCOURS_INGEST_BODY_TIMEOUT_S="1",
        PARCOURS_INGEST_MAX_RESOURCE_BYTES="100000",
        PARCOURS_INGEST_MAX_BODY_BYTES="1000000",
    )
    log = tmp_path_factory.mktemp("faults") / "gateway.log"
    with run_gateway(env, log) as gw:
        yield Two(
            gw,
            new_token(pg_url),
            new_token(pg_url),
            Topics.from_settings(Settings(topic_prefix=prefix)),
            broker,
            pg_url,
        )


def raw_ids(two: Two) -> list[str]:
    return [json.loads(m.value)["id"] for m in read_topic(two.broker, two.topics.raw)]


def parcours_cli(two: Two, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parcours", "ingest", *args],
        env=parcours_env(DATABASE_URL=two.pg_url),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_body_shorter_than_its_content_length_gets_408(two: Two) -> None:
    host, port = two.gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(
            b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {two.a[1]}\r\n".encode()
            + b"Content-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n{"
        )
        conn.settimeout(30)
        answer = b""
        # The gateway closes the connection after its answer: read until then.
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"OperationOutcome" in answer


def test_client_disconnects_are_one_log_line_each(two: Two) -> None:
    host, port = two.gw.url.removeprefix("http://").split(":")
    for _ in range(20):
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(
                b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {two.a[1]}\r\n".encode()
                + b"Content-Type: application/fhir+json\r\nContent-Length: 5000\r\n\r\n{"
            )
    # The gateway still serves, and logged no traceback for any of them.
    assert post(two.gw.url, two.a[1], "/fhir/Patient", {"resourceType": "Patient"}).status_code
    log = two.gw.log.read_text(errors="replace")
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


def written_patient(two: Two, token: str, pid: str | None = None) -> str:
    """A new Patient written by the integrator of `token` (201); its id."""
    pid = pid or unique("p")
    resp = post(two.gw.url, token, "/fhir/Patient", {"resourceType": "Patient", "id": pid})
    assert resp.status_code == 201, resp.text
    return pid


def test_a_refused_request_claims_nothing(two: Two) -> None:
    (_, a), (_, b) = two.a, two.b
    theirs = written_patient(two, a)
    new_patient, new_encounter = unique("p"), unique("e")
    # A transaction that writes another integrator's patient is refused whole...
    bundle = transaction(
        [
            {"resourceType": "Patient", "id": new_patient},
            encounter(new_encounter, new_patient),
            encounter(unique("e"), theirs),
        ]
    )
    resp = post(two.gw.url, b, "/fhir", bundle)
    assert resp.status_code == 403, resp.text
    # ...and leaves the patient and Encounter it named free for whoever writes them first.
    written_patient(two, a, new_patient)
    assert (
        post(two.gw.url, a, "/fhir/Encounter", encounter(new_encounter, new_patient)).status_code
        == 201
    )
    assert new_patient in raw_ids(two)


def test_another_integrators_patient_is_403_until_granted(two: Two) -> None:
    (a_name, a), (b_name, b) = two.a, two.b
    pid = written_patient(two, a)
    assert post(two.gw.url, a, "/fhir/Encounter", encounter(unique("e"), pid)).status_code == 201

    denied_enc = encounter(unique("e"), pid)
    resp = post(two.gw.url, b, "/fhir/Encounter", denied_enc)
    assert resp.status_code == 403, resp.text
    # An exact copy of what the other integrator sent is refused too: a 200 "duplicate" would
    # confirm a guess about its patients.
    copy = post(two.gw.url, b, "/fhir/Patient", {"resourceType": "Patient", "id": pid})
    assert copy.status_code == 403, copy.text
    assert resp.json()["issue"][0]["code"] == "forbidden"
    # Another integrator's Encounter id, for a patient of its own: its stay would be taken over.
    resp = post(two.gw.url, a, "/fhir/Encounter", encounter(unique("e"), pid))
    assert resp.status_code == 201
    first_id = resp.json()["id"]
    resp = post(two.gw.url, b, "/fhir/Encounter", encounter(first_id, unique("p")))
    assert resp.status_code == 403, resp.text
    assert resp.json()["issue"][0]["expression"] == ["Encounter.id"]
    # The same patient named the ways the stream worker reads it: still that patient.
    for form in (
        f"http://elsewhere.example/fhir/Patient/{pid}",
        f"https://x.example/Patient/{pid}/_history/3",
        f"any/Patient/{pid}",
    ):
        sideways = encounter(unique("e"), "x", subject={"reference": form})
        resp = post(two.gw.url, b, "/fhir/Encounter", sideways)
        assert resp.status_code == 403, (form, resp.text)
    merge_into = {
        "resourceType": "Patient",
        "id": unique("p"),
        "link": [
            {"type": "replaced-by", "other": {"reference": f"http://h.example/Patient/{pid}"}}
        ],
    }
    resp = post(two.gw.url, b, "/fhir/Patient", merge_into)
    assert resp.status_code == 403, resp.text
    assert resp.json()["issue"][0]["expression"] == ["Patient.link[0].other"]
    deceased = {"resourceType": "Patient", "id": pid, "deceasedBoolean": True}
    resp = post(two.gw.url, b, "/fhir/Patient", deceased)
    assert resp.status_code == 403
    assert resp.json()["issue"][0]["expression"] == ["Patient.id"]
    own = encounter(unique("e"), unique("p"))
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": encounter(unique("e"), pid),
                "request": {"method": "POST", "url": "Encounter"},
            },
            {"resource": own, "request": {"method": "POST", "url": "Encounter"}},
        ],
    }
    resp = post(two.gw.url, b, "/fhir", batch)
    assert [e["response"]["status"] for e in resp.json()["entry"]] == [
        "403 Forbidden",
        "201 Created",
    ]
    ids = raw_ids(two)
    assert own["id"] in ids and denied_enc["id"] not in ids
    assert not any(
        json.loads(m.value).get("deceasedBoolean")
        for m in read_topic(two.broker, two.topics.raw)
        if json.loads(m.value).get("id") == pid
    )

    # An identifier system an admin assigned to A: B may not write patients in it.
    system = f"urn:oid:1.2.250.99.{uuid.uuid4().int % 10**8}"
    done = parcours_cli(two, "grant", a_name, "--system", system)
    assert done.returncode == 0 and "owns" in done.stdout, done.stderr
    other = {
        "resourceType": "Patient",
        "id": unique("p"),
        "identifier": [{"system": system, "value": "1"}],
    }
    resp = post(two.gw.url, b, "/fhir/Patient", other)
    assert resp.status_code == 403
    assert resp.json()["issue"][0]["expression"] == ["Patient.identifier[0].system"]

    # Grants: one patient, then everything A owns.
    assert parcours_cli(two, "grant", b_name, "--patient", pid).returncode == 0
    assert post(two.gw.url, b, "/fhir/Encounter", denied_enc).status_code == 201
    assert post(two.gw.url, b, "/fhir/Patient", other).status_code == 403
    assert parcours_cli(two, "grant", b_name, "--from", a_name).returncode == 0
    assert post(two.gw.url, b, "/fhir/Patient", other).status_code == 201
    assert post(two.gw.url, b, "/fhir/Patient", deceased).status_code == 201


def test_a_resource_of_no_patient_belongs_to_its_first_writer(two: Two) -> None:
    # Two integrators of their own: the module's pair holds grants from other tests.
    (_, a), (b_name, b) = new_token(two.pg_url), new_token(two.pg_url)
    ward = {"resourceType": "Location", "id": unique("l"), "name": "Ward A"}
    assert post(two.gw.url, a, "/fhir/Location", ward).status_code == 201
    closed = {**ward, "name": "Closed", "status": "inactive"}
    resp = post(two.gw.url, b, "/fhir/Location", closed)
    assert resp.status_code == 403, resp.text
    assert resp.json()["issue"][0]["code"] == "forbidden"
    assert resp.json()["issue"][0]["expression"] == ["Location.id"]
    resp = httpx.put(
        f"{two.gw.url}/fhir/Location/{ward['id']}",
        content=json.dumps(closed).encode(),
        headers={"Authorization": f"Bearer {b}", "Content-Type": FHIR},
        timeout=60,
    )
    assert resp.status_code == 403, resp.text
    # B's own Organization is B's: A may not write it.
    org = {"resourceType": "Organization", "id": unique("o"), "name": "Clinique B"}
    assert post(two.gw.url, b, "/fhir/Organization", org).status_code == 201
    resp = post(two.gw.url, a, "/fhir/Organization", {**org, "name": "Taken"})
    assert resp.status_code == 403, resp.text
    doctor = {"resourceType": "Practitioner", "id": unique("pr"), "active": True}
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": closed, "request": {"method": "PUT", "url": f"Location/{ward['id']}"}},
            {"resource": doctor, "request": {"method": "POST", "url": "Practitioner"}},
        ],
    }
    resp = post(two.gw.url, b, "/fhir", batch)
    assert [e["response"]["status"] for e in resp.json()["entry"]] == [
        "403 Forbidden",
        "201 Created",
    ]
    transaction = {**batch, "type": "transaction"}
    resp = post(two.gw.url, b, "/fhir", transaction)
    assert resp.status_code == 403, resp.text
    assert resp.json()["issue"][0]["expression"] == ["Bundle.entry[0].resource.id"]
    directory = [json.loads(m.value) for m in read_topic(two.broker, two.topics.directory)]
    assert not any(r["id"] == ward["id"] and r.get("name") == "Closed" for r in directory)
    assert any(r["id"] == doctor["id"] for r in directory)
    # The owner still writes it; an admin grant lets B write that one resource only.
    assert post(two.gw.url, a, "/fhir/Location", {**ward, "name": "Ward A2"}).status_code == 201
    bad = parcours_cli(two, "grant", b_name, "--resource", "not a reference")
    assert bad.returncode == 2, bad.stdout
    done = parcours_cli(two, "grant", b_name, "--resource", f"Location/{ward['id']}")
    assert done.returncode == 0, done.stderr
    assert post(two.gw.url, b, "/fhir/Location", closed).status_code == 201
    other = {"resourceType": "Location", "id": unique("l"), "name": "Ward C"}
    assert post(two.gw.url, a, "/fhir/Location", other).status_code == 201
    assert post(two.gw.url, b, "/fhir/Location", {**other, "name": "x"}).status_code == 403


def test_revoke_and_expiry_take_effect_at_once(two: Two) -> None:
    name, token = new_token(two.pg_url)
    body = {"resourceType": "Location", "id": unique("l"), "name": "x"}
    assert post(two.gw.url, token, "/fhir/Location", body).status_code == 201
    done = parcours_cli(two, "token", "revoke", name)
    assert done.returncode == 0, done.stderr
    assert post(two.gw.url, token, "/fhir/Location", body).status_code == 401
    assert parcours_cli(two, "token", "revoke", unique("nobody")).returncode == 1
    rotated = parcours_cli(two, "token", "create", name, "--rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert post(two.gw.url, token, "/fhir/Location", body).status_code == 401
    fresh = post(two.gw.url, rotated.stdout.strip(), "/fhir/Location", body)
    assert fresh.status_code == 200  # the same version, already received

    created = parcours_cli(two, "token", "create", unique("temp"), "--expires-in", "90d")
    assert created.returncode == 0, created.stderr
    temp = created.stdout.strip()
    # A Location of its own: `body` belongs to the first integrator.
    body = {**body, "id": unique("l")}
    assert post(two.gw.url, temp, "/fhir/Location", {**body, "name": "y"}).status_code == 201
    engine = make_engine(two.pg_url)
    with engine.begin() as conn:
        left = conn.scalar(
            text("SELECT expires_at - now() FROM integrators WHERE token_hash = :h"),
            {"h": hash_token(temp)},
        )
        assert 89 <= left.days <= 90
        # Expiry is a timestamp: move it into the past rather than wait for it.
        conn.execute(
            text(
                "UPDATE integrators SET expires_at = now() - interval '1 second' "
                "WHERE expires_at IS NOT NULL"
            )
        )
    engine.dispose()
    assert post(two.gw.url, temp, "/fhir/Location", {**body, "name": "z"}).status_code == 401
    assert parcours_cli(two, "token", "create", "x", "--expires-in", "soon").returncode == 1


def test_a_resource_too_large_is_413_and_never_disturbs_another_integrator(two: Two) -> None:
    big = {"resourceType": "Location", "id": unique("l"), "description": "x" * 200_000}
    sent: list[str] = []
    for _ in range(10):
        resp = post(two.gw.url, two.b[1], "/fhir/Location", big)
        assert resp.status_code == 413, resp.text
        assert "100000" in resp.json()["issue"][0]["diagnostics"]
        small = encounter(unique("e"), unique("p"))
        assert post(two.gw.url, two.a[1], "/fhir/Encounter", small).status_code == 201
        sent.append(str(small["id"]))
    assert set(sent) <= set(raw_ids(two))
    # The producer was never rebuilt: one connection for the whole run.
    assert two.gw.log.read_text().count("connected to Kafka") == 1


def test_rate_limit_answers_429_with_retry_after_per_integrator(
    broker: str, pg_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    _, flood = new_token(pg_url)
    _, calm = new_token(pg_url)
    env = gateway_env(
        broker,
        pg_url,
        topic_prefix,
        PARCOURS_INGEST_RATE_PER_S="0.01",
        PARCOURS_INGEST_RATE_BURST="3",
    )
    with run_gateway(env, tmp_path / "gw.log") as gw:
        statuses = [
            post(gw.url, flood, "/fhir/Location", {"resourceType": "Location", "name": str(n)})
            for n in range(5)
        ]
        assert [r.status_code for r in statuses] == [201, 201, 201, 429, 429]
        assert int(statuses[3].headers["retry-after"]) >= 1
        assert statuses[3].json()["issue"][0]["code"] == "throttled"
        other = post(gw.url, calm, "/fhir/Location", {"resourceType": "Location", "name": "c"})
        assert other.status_code == 201
