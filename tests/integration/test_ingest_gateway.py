"""The gateway as integrators see it: a real `parcours ingest serve` process, real broker, real
PostgreSQL. Every endpoint, every error code, Bundle semantics, headers and dead letters."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from ingest.auth import create_token
from ingest.dedupe import IngestStore, VersionBusy
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
MAX_BODY = 200_000


@dataclass
class Env:
    gw: Gateway
    token: str
    source: str
    topics: Topics
    broker: str
    pg_url: str


@pytest.fixture(scope="module")
def env(broker: str, pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    source = unique("lab")
    engine = make_engine(pg_url)
    token = create_token(engine, source)
    engine.dispose()
    log = tmp_path_factory.mktemp("gw") / "gateway.log"
    environ = gateway_env(broker, pg_url, prefix, PARCOURS_INGEST_MAX_BODY_BYTES=str(MAX_BODY))
    with run_gateway(environ, log) as gw:
        yield Env(
            gw, token, source, Topics.from_settings(Settings(topic_prefix=prefix)), broker, pg_url
        )


def raw_by_id(env: Env, *ids: str) -> list[object]:
    wanted = set(ids)
    return [
        m for m in read_topic(env.broker, env.topics.raw) if json.loads(m.value).get("id") in wanted
    ]


def post(env: Env, path: str, body: object, ctype: str = FHIR, token: str | None = "ok") -> object:
    with env.gw.client(env.token if token == "ok" else token) as client:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return client.post(path, content=content, headers={"Content-Type": ctype})


def issue_expressions(resp: object) -> list[str]:
    body = resp.json()  # type: ignore[attr-defined]
    assert body["resourceType"] == "OperationOutcome", body
    return [e for i in body["issue"] for e in i.get("expression", [])]


def test_metadata_openapi_healthz_and_metrics(env: Env) -> None:
    with env.gw.client(None) as client:
        cs = client.get("/fhir/metadata")
        assert cs.status_code == 200
        assert cs.headers["content-type"].startswith("application/fhir+json")
        doc = cs.json()
        assert doc["resourceType"] == "CapabilityStatement"
        types = {r["type"]: r for r in doc["rest"][0]["resource"]}
        for name in ("Patient", "Encounter", "Location", "EpisodeOfCare", "Condition"):
            assert {i["code"] for i in types[name]["interaction"]} == {"create", "update"}
        assert doc["rest"][0]["operation"][0]["name"] == "import"

        openapi = client.get("/openapi.json").json()
        assert {
            "/fhir",
            "/fhir/{type_name}",
            "/fhir/{type_name}/{resource_id}",
            "/fhir/$import",
        } <= set(openapi["paths"])
        bundle_body = openapi["paths"]["/fhir"]["post"]["requestBody"]["content"]
        assert {"application/fhir+json", "application/json"} <= set(bundle_body)
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["kafka"] == "ok"

    assert post(env, "/fhir/Encounter", encounter(unique("e"), "p")).status_code == 201
    with env.gw.client(None) as client:
        metrics = client.get("/metrics").text
    assert (
        f'parcours_ingest_resources_total{{outcome="accepted",resource_type="Encounter",source="{env.source}"}}'
        in metrics
    )


def test_missing_or_bad_token_gets_401(env: Env) -> None:
    for token in (None, "prc_not-a-real-token"):
        resp = post(env, "/fhir/Encounter", encounter(unique("e"), "p"), token=token)
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert issue_expressions(resp) == ["http.Authorization"]


def test_create_then_resend_is_a_duplicate_published_once_with_headers(env: Env) -> None:
    eid, pid = unique("e"), unique("p")
    first = post(env, "/fhir/Encounter", encounter(eid, pid))
    assert first.status_code == 201, first.text
    assert first.headers["location"] == f"/fhir/Encounter/{eid}"
    assert first.json()["id"] == eid
    again = post(env, "/fhir/Encounter", encounter(eid, pid))
    assert again.status_code == 200

    # A new versionId of the same resource is new; the same versionId again is a duplicate.
    v2 = encounter(eid, pid, status="finished", meta={"versionId": "2"})
    with env.gw.client(env.token) as client:
        put = client.put(
            f"/fhir/Encounter/{eid}",
            content=json.dumps(v2),
            headers={"Content-Type": "application/json"},
        )
        assert put.status_code == 201, put.text
        assert put.headers["etag"] == 'W/"2"'
        put_again = client.put(
            f"/fhir/Encounter/{eid}", content=json.dumps(v2), headers={"Content-Type": FHIR}
        )
        assert put_again.status_code == 200

    messages = raw_by_id(env, eid)
    assert len(messages) == 2
    for m in messages:
        assert m.key == pid.encode()
        headers = dict(m.headers)
        assert headers["source"] == env.source.encode()
        assert headers["resource-type"] == b"Encounter"
        assert headers["received-at"].decode().endswith("+00:00")
    versions = sorted(dict(m.headers)["version"] for m in messages)
    assert versions[0].startswith(b"h:") and versions[1] == b"v:2"


def versioned(eid: str, pid: str, version: str, **over: object) -> dict[str, object]:
    """An Encounter carrying the integrator's own `meta.versionId`."""
    return encounter(eid, pid, meta={"versionId": version}, **over)


def put(env: Env, resource: dict[str, object]) -> object:
    with env.gw.client(env.token) as client:
        return client.put(
            f"/fhir/{resource['resourceType']}/{resource['id']}",
            content=json.dumps(resource),
            headers={"Content-Type": FHIR},
        )


def conflict_issue(outcome: dict[str, object]) -> dict[str, object]:
    """The one issue of a version conflict's OperationOutcome, checked for what it must say."""
    assert outcome["resourceType"] == "OperationOutcome", outcome
    (issue,) = outcome["issue"]  # type: ignore[misc]
    assert issue["code"] == "conflict", issue
    assert issue["details"]["coding"][0]["code"] == "version-conflict", issue
    # In French first: send a new versionId, or none.
    assert "nouvelle version" in issue["diagnostics"], issue
    assert "meta.versionId" in issue["diagnostics"], issue
    return issue  # type: ignore[no-any-return]


def published_bodies(env: Env, *ids: str) -> list[dict[str, object]]:
    return [json.loads(m.value) for m in raw_by_id(env, *ids)]  # type: ignore[attr-defined]


def test_same_version_same_content_is_a_duplicate_published_once(env: Env) -> None:
    eid, pid = unique("e"), unique("p")
    first = versioned(eid, pid, "1")
    assert put(env, first).status_code == 201  # type: ignore[attr-defined]
    assert put(env, first).status_code == 200  # type: ignore[attr-defined]
    assert post(env, "/fhir/Encounter", first).status_code == 200  # type: ignore[attr-defined]
    # meta.lastUpdated is when the version was made, not what it holds: the same version.
    stamped = {**first, "meta": {"versionId": "1", "lastUpdated": "2026-01-12T08:00:00+00:00"}}
    assert put(env, stamped).status_code == 200  # type: ignore[attr-defined]
    assert published_bodies(env, eid) == [first]


def test_same_version_other_content_is_409_naming_meta_version_id(env: Env) -> None:
    eid, pid = unique("e"), unique("p")
    first = versioned(eid, pid, "1")
    assert put(env, first).status_code == 201  # type: ignore[attr-defined]
    changed = versioned(eid, pid, "1", status="finished")
    refused = put(env, changed)
    assert refused.status_code == 409, refused.text  # type: ignore[attr-defined]
    assert conflict_issue(refused.json())["expression"] == ["Encounter.meta.versionId"]  # type: ignore[attr-defined]
    refused = post(env, "/fhir/Encounter", changed)
    assert refused.status_code == 409, refused.text  # type: ignore[attr-defined]
    assert published_bodies(env, eid) == [first]

    engine = make_engine(env.pg_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT http_status, expression FROM ingest_rejections "
                "WHERE source = :s AND reason = 'version-conflict' AND resource_id = :i"
            ),
            {"s": env.source, "i": eid},
        ).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [(409, "Encounter.meta.versionId")] * 2

    # What the answer says to do works: a new versionId, or none (the content hash).
    assert put(env, versioned(eid, pid, "2", status="finished")).status_code == 201  # type: ignore[attr-defined]
    assert put(env, encounter(eid, pid, status="cancelled")).status_code == 201  # type: ignore[attr-defined]
    # And the first content under its version is still a duplicate.
    assert put(env, first).status_code == 200  # type: ignore[attr-defined]
    assert len(raw_by_id(env, eid)) == 3


def test_a_changed_version_in_a_batch_or_import_gets_its_own_409(env: Env) -> None:
    eid, pid = unique("e"), unique("p")
    first = versioned(eid, pid, "1")
    assert put(env, first).status_code == 201  # type: ignore[attr-defined]
    fresh, changed = encounter(unique("e"), pid), versioned(eid, pid, "1", status="finished")
    answer = post(env, "/fhir", transaction([fresh, changed], btype="batch"))
    assert answer.status_code == 200, answer.text  # type: ignore[attr-defined]
    entries = answer.json()["entry"]  # type: ignore[attr-defined]
    assert [e["response"]["status"] for e in entries] == ["201 Created", "409 Conflict"]
    issue = conflict_issue(entries[1]["response"]["outcome"])
    assert issue["expression"] == ["Bundle.entry[1].resource.meta.versionId"]
    answer = post(env, "/fhir", transaction([first], btype="batch"))
    assert answer.json()["entry"][0]["response"]["status"] == "200 OK"  # type: ignore[attr-defined]

    other = encounter(unique("e"), pid)
    lines = [json.dumps(other), json.dumps(changed)]
    answer = post(env, "/fhir/$import", "\n".join(lines).encode(), ctype="application/fhir+ndjson")
    entries = answer.json()["entry"]  # type: ignore[attr-defined]
    assert [e["response"]["status"] for e in entries] == ["201 Created", "409 Conflict"]
    assert conflict_issue(entries[1]["response"]["outcome"])["expression"] == [
        "Encounter.meta.versionId"
    ]
    assert published_bodies(env, eid) == [first]
    assert len(raw_by_id(env, str(fresh["id"]), str(other["id"]))) == 2


def test_a_changed_version_refuses_the_whole_transaction_naming_the_entry(env: Env) -> None:
    eid, pid = unique("e"), unique("p")
    first = versioned(eid, pid, "1")
    assert put(env, first).status_code == 201  # type: ignore[attr-defined]
    fresh, changed = encounter(unique("e"), pid), versioned(eid, pid, "1", status="finished")
    refused = post(env, "/fhir", transaction([fresh, changed]))
    assert refused.status_code == 409, refused.text  # type: ignore[attr-defined]
    issue = conflict_issue(refused.json())  # type: ignore[attr-defined]
    assert issue["expression"] == ["Bundle.entry[1].resource.meta.versionId"]
    assert raw_by_id(env, str(fresh["id"])) == []
    assert published_bodies(env, eid) == [first]


def test_concurrent_writes_of_one_version_with_other_contents_get_one_2xx(env: Env) -> None:
    pid = unique("p")
    pairs = [
        (versioned(eid, pid, "1"), versioned(eid, pid, "1", status="finished"))
        for eid in (unique("e") for _ in range(8))
    ]
    requests = [resource for pair in pairs for resource in pair]
    barrier = threading.Barrier(len(requests))

    def send(resource: dict[str, object]) -> int:
        with env.gw.client(env.token) as client:
            content = json.dumps(resource)
            barrier.wait()
            path = f"/fhir/Encounter/{resource['id']}"
            return client.put(path, content=content, headers={"Content-Type": FHIR}).status_code

    with ThreadPoolExecutor(len(requests)) as pool:
        statuses = list(pool.map(send, requests))
    published = published_bodies(env, *(str(a["id"]) for a, _ in pairs))
    for n, (a, b) in enumerate(pairs):
        answers = statuses[2 * n : 2 * n + 2]
        # One of the two got 201 and is what the topic holds; the other was refused (409, or
        # 503 when it waited too long for the first), never told 2xx.
        assert sorted(answers)[0] == 201 and sorted(answers)[1] in (409, 503), answers
        winner = a if answers[0] == 201 else b
        assert [r for r in published if r["id"] == a["id"]] == [winner]


def put_if(env: Env, resource: dict[str, object], if_match: str) -> object:
    with env.gw.client(env.token) as client:
        return client.put(
            f"/fhir/{resource['resourceType']}/{resource['id']}",
            content=json.dumps(resource),
            headers={"Content-Type": FHIR, "If-Match": if_match},
        )


def precondition_issue(outcome: dict[str, object]) -> dict[str, object]:
    """The one issue of a failed If-Match, checked for what it must say."""
    (issue,) = outcome["issue"]  # type: ignore[misc]
    assert issue["code"] == "conflict", issue
    assert issue["details"]["coding"][0]["code"] == "precondition-failed", issue
    assert "Relisez la ressource" in issue["diagnostics"], issue
    return issue  # type: ignore[no-any-return]


def test_an_update_whose_if_match_is_not_the_current_version_gets_412(env: Env) -> None:
    eid, pid = unique("e"), unique("p")
    assert put_if(env, versioned(eid, pid, "1"), "*").status_code == 412  # type: ignore[attr-defined]
    assert put(env, versioned(eid, pid, "1")).status_code == 201  # type: ignore[attr-defined]
    second = versioned(eid, pid, "2", status="finished")
    answer = put_if(env, second, 'W/"1"')
    assert answer.status_code == 201, answer.text  # type: ignore[attr-defined]
    assert answer.headers["ETag"] == 'W/"2"'  # type: ignore[attr-defined]
    # Its retry is the version already received, not a stale update.
    assert put_if(env, second, 'W/"1"').status_code == 200  # type: ignore[attr-defined]
    # An update based on version 1, now that 2 is current, is refused and publishes nothing.
    stale = put_if(env, versioned(eid, pid, "3", status="cancelled"), 'W/"1"')
    assert stale.status_code == 412, stale.text  # type: ignore[attr-defined]
    issue = precondition_issue(stale.json())  # type: ignore[attr-defined]
    assert issue["location"] == ["http.If-Match"]
    assert 'W/"2"' in issue["diagnostics"]
    assert put_if(env, versioned(eid, pid, "3"), '"2"').status_code == 201  # type: ignore[attr-defined]
    assert put_if(env, versioned(eid, pid, "4"), "*").status_code == 201  # type: ignore[attr-defined]
    assert [r["meta"]["versionId"] for r in published_bodies(env, eid)] == ["1", "2", "3", "4"]  # type: ignore[index]
    # Not an ETag: 400 naming the header.
    bad = put_if(env, versioned(eid, pid, "5"), 'W/"a b"')
    assert bad.status_code == 400, bad.text  # type: ignore[attr-defined]
    assert bad.json()["issue"][0]["location"] == ["http.If-Match"]  # type: ignore[attr-defined]


def test_a_stale_if_match_in_a_bundle_names_its_entry(env: Env) -> None:
    eid, pid = unique("e"), unique("p")
    assert put(env, versioned(eid, pid, "1")).status_code == 201  # type: ignore[attr-defined]
    assert put(env, versioned(eid, pid, "2")).status_code == 201  # type: ignore[attr-defined]
    fresh = encounter(unique("e"), pid)
    stale = versioned(eid, pid, "3", status="finished")
    bundle = transaction([fresh, stale])
    bundle["entry"][1]["request"] = {"method": "PUT", "url": f"Encounter/{eid}", "ifMatch": 'W/"1"'}  # type: ignore[index]
    refused = post(env, "/fhir", bundle)
    assert refused.status_code == 412, refused.text  # type: ignore[attr-defined]
    issue = precondition_issue(refused.json())  # type: ignore[attr-defined]
    assert issue["expression"] == ["Bundle.entry[1].request.ifMatch"]
    assert raw_by_id(env, str(fresh["id"])) == []
    bundle["type"] = "batch"
    answer = post(env, "/fhir", bundle)
    entries = answer.json()["entry"]  # type: ignore[attr-defined]
    assert [e["response"]["status"] for e in entries] == ["201 Created", "412 Precondition Failed"]
    bundle["entry"][1]["request"]["ifMatch"] = 'W/"2"'  # type: ignore[index]
    answer = post(env, "/fhir", bundle)
    entries = answer.json()["entry"]  # type: ignore[attr-defined]
    assert [e["response"]["status"] for e in entries] == ["200 OK", "201 Created"]
    assert [r["meta"]["versionId"] for r in published_bodies(env, eid)] == ["1", "2", "3"]  # type: ignore[index]


def test_concurrent_updates_of_one_version_let_one_through(env: Env) -> None:
    eid, pid = unique("e"), unique("p")
    assert put(env, versioned(eid, pid, "1")).status_code == 201  # type: ignore[attr-defined]
    updates = [versioned(eid, pid, f"2-{n}", status="finished") for n in range(6)]
    barrier = threading.Barrier(len(updates))

    def send(resource: dict[str, object]) -> int:
        with env.gw.client(env.token) as client:
            content = json.dumps(resource)
            barrier.wait()
            headers = {"Content-Type": FHIR, "If-Match": 'W/"1"'}
            return client.put(
                f"/fhir/Encounter/{eid}", content=content, headers=headers
            ).status_code

    with ThreadPoolExecutor(len(updates)) as pool:
        statuses = list(pool.map(send, updates))
    # One update of version 1 got through; the others were refused (412, or 503 when one
    # waited too long for the first), never told 2xx.
    assert sorted(statuses)[0] == 201 and all(s in (412, 503) for s in sorted(statuses)[1:])
    assert len(published_bodies(env, eid)) == 2


def test_a_version_is_held_by_one_writer_at_a_time(env: Env) -> None:
    """The advisory locks that keep two gateway processes from publishing one version twice."""
    engine = make_engine(env.pg_url, timeout_s=0.5)
    store = IngestStore(engine)
    key = ("Encounter", unique("e"), "v:1")

    def take(keys: list[tuple[str, str, str]]) -> str:
        with store.versions_locked(keys) as conn:
            assert conn is not None
        return "held"

    try:
        with ThreadPoolExecutor(1) as other:
            with store.versions_locked([key]) as conn:
                assert conn is not None
                with pytest.raises(VersionBusy):
                    other.submit(take, [("Encounter", unique("e"), "v:1"), key]).result()
                assert other.submit(take, [("Encounter", unique("e"), "v:1")]).result() == "held"
                # Recording what was published commits the transaction, which lets them go.
                store.record(env.source, datetime.now(UTC), [], 0, [], conn=conn)
                assert other.submit(take, [key]).result() == "held"
            assert other.submit(take, [key]).result() == "held"
    finally:
        engine.dispose()


def test_a_merge_resends_versioned_records_without_refusing_them(env: Env) -> None:
    """What a merged patient received is sent again by the gateway itself: its references
    changed, but that is no integrator's conflict."""
    old, new = unique("p"), unique("p")
    assert put(env, {"resourceType": "Patient", "id": new}).status_code == 201  # type: ignore[attr-defined]
    assert put(env, {"resourceType": "Patient", "id": old}).status_code == 201  # type: ignore[attr-defined]
    eid = unique("e")
    assert put(env, versioned(eid, old, "1")).status_code == 201  # type: ignore[attr-defined]
    link = {"type": "replaced-by", "other": {"reference": f"Patient/{new}"}}
    merged = {"resourceType": "Patient", "id": old, "link": [link]}
    assert put(env, merged).status_code == 201  # type: ignore[attr-defined]
    engine = make_engine(env.pg_url)
    with engine.connect() as conn:
        refused = conn.execute(
            text("SELECT count(*) FROM ingest_rejections WHERE resource_id = :e"), {"e": eid}
        ).scalar_one()
    engine.dispose()
    assert refused == 0
    # The versioned Encounter joins the replacing Patient's pathway: sent again under its key,
    # with its versionId, once (the merge sent again re-sends nothing).
    assert put(env, merged).status_code == 200  # type: ignore[attr-defined]
    sent = [json.loads(m.value) for m in raw_by_id(env, eid)]  # type: ignore[attr-defined]
    assert sorted((r["subject"]["reference"], r["meta"]["versionId"]) for r in sent) == sorted(
        [(f"Patient/{old}", "1"), (f"Patient/{new}", "1")]
    )


def test_error_codes_name_the_failing_element_and_are_recorded(env: Env) -> None:
    bad_id = unique("bad")
    cases = [
        (post(env, "/fhir/Frobnicator", {"resourceType": "Frobnicator"}), 404, "resourceType"),
        (
            post(env, "/fhir/Encounter", encounter(unique("e"), "p"), ctype="text/plain"),
            415,
            "http.Content-Type",
        ),
        (
            post(
                env, "/fhir/Encounter", b'{"resourceType": "Encounter", ' + b" " * MAX_BODY + b"}"
            ),
            413,
            "http.Content-Length",
        ),
        (post(env, "/fhir/Encounter", b'{"resourceType": "Enc'), 400, "Encounter"),
        (
            post(env, "/fhir/Encounter", encounter(unique("e"), "p", resourceType="Patient")),
            400,
            "Patient.resourceType",
        ),
        (
            post(env, "/fhir/Encounter", encounter(bad_id, "p", period={"start": "tomorrow"})),
            422,
            "Encounter.period.start",
        ),
        (
            post(env, "/fhir/Encounter", encounter(unique("e"), "p", status="done")),
            422,
            "Encounter.status",
        ),
    ]
    for resp, status, expression in cases:
        assert resp.status_code == status, (status, resp.text)
        assert expression in issue_expressions(resp), (status, resp.text)
    with env.gw.client(env.token) as client:
        mismatch = client.put(
            "/fhir/Encounter/other-id",
            content=json.dumps(encounter(unique("e"), "p")),
            headers={"Content-Type": FHIR},
        )
    assert mismatch.status_code == 400 and issue_expressions(mismatch) == ["Encounter.id"]

    assert raw_by_id(env, bad_id) == []
    engine = make_engine(env.pg_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT http_status, reason, expression, operation_outcome FROM ingest_rejections "
                "WHERE source = :s"
            ),
            {"s": env.source},
        ).all()
        totals = conn.execute(
            text("SELECT rejected_total FROM integrators WHERE name = :s"), {"s": env.source}
        ).scalar_one()
    engine.dispose()
    by_status = {r[0]: r for r in rows}
    assert {404, 415, 413, 400, 422} <= set(by_status)
    assert by_status[422][3]["resourceType"] == "OperationOutcome"
    assert totals >= 8

    dead = [
        m
        for m in read_topic(env.broker, env.topics.deadletter)
        if dict(m.headers).get("source") == env.source.encode()
    ]
    invalid_period = [m for m in dead if bad_id.encode() in m.value]
    assert len(invalid_period) == 1
    headers = dict(invalid_period[0].headers)
    assert b"Encounter.period.start" in headers["reason"]
    assert headers["reason-code"] == b"invalid-resource"


def test_transaction_is_all_or_nothing(env: Env) -> None:
    pid = unique("p")
    patient = {"resourceType": "Patient", "id": pid, "gender": "female"}
    good = [encounter(unique("e"), pid) for _ in range(3)]
    bad = encounter(unique("e"), pid, period={"start": "not-a-date"})
    refused = post(env, "/fhir", transaction([patient, *good, bad]))
    assert refused.status_code == 422, refused.text
    assert issue_expressions(refused) == ["Bundle.entry[4].resource.period.start"]
    ids = [pid, *(str(e["id"]) for e in good), str(bad["id"])]
    assert raw_by_id(env, *ids) == []

    accepted = post(env, "/fhir", transaction([patient, *good]))
    assert accepted.status_code == 200, accepted.text
    body = accepted.json()
    assert body["type"] == "transaction-response"
    assert [e["response"]["status"] for e in body["entry"]] == ["201 Created"] * 4
    messages = raw_by_id(env, *ids)
    assert len(messages) == 4 and {m.key for m in messages} == {pid.encode()}


def test_transaction_resolves_urn_uuid_references(env: Env) -> None:
    pid, eid = str(uuid.uuid4()), str(uuid.uuid4())
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{pid}",
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": f"urn:uuid:{eid}",
                "resource": {
                    k: v
                    for k, v in encounter(
                        "x", "x", subject={"reference": f"urn:uuid:{pid}"}
                    ).items()
                    if k != "id"
                },
                "request": {"method": "POST", "url": "Encounter"},
            },
        ],
    }
    resp = post(env, "/fhir", bundle)
    assert resp.status_code == 200, resp.text
    assert [e["response"]["location"] for e in resp.json()["entry"]] == [
        f"Patient/{pid}",
        f"Encounter/{eid}",
    ]
    (enc,) = raw_by_id(env, eid)
    assert json.loads(enc.value)["subject"] == {"reference": f"Patient/{pid}"}
    assert enc.key == pid.encode()


def test_batch_answers_per_entry(env: Env) -> None:
    pid = unique("p")
    dup = encounter(unique("e"), pid)
    assert post(env, "/fhir/Encounter", dup).status_code == 201
    fresh, bad = encounter(unique("e"), pid), encounter(unique("e"), pid, status="done")
    resp = post(env, "/fhir", transaction([fresh, bad, dup], btype="batch"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in body["entry"]]
    assert statuses == ["201 Created", "422 Unprocessable Entity", "200 OK"]
    outcome = body["entry"][1]["response"]["outcome"]
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[1].resource.status"]
    assert len(raw_by_id(env, str(fresh["id"]), str(bad["id"]), str(dup["id"]))) == 2
    # Dead letters are sent without waiting for their ack: read until it appears.
    dead = wait_until(
        lambda: [
            m
            for m in read_topic(env.broker, env.topics.deadletter)
            if str(bad["id"]).encode() in m.value
        ],
        timeout_s=30,
        what="the dead letter of the bad entry",
    )
    assert [m.key for m in dead] == [pid.encode()]
    assert dict(dead[0].headers)["reason-code"] == b"invalid-code"


def test_collection_and_message_bundles(env: Env) -> None:
    pid = unique("p")
    e1, e2 = encounter(unique("e"), pid), encounter(unique("e"), pid)
    collection = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": e1}]}
    resp = post(env, "/fhir", collection)
    assert resp.status_code == 200 and resp.json()["type"] == "batch-response"

    header = {
        "resourceType": "MessageHeader",
        "id": unique("mh"),
        "eventCoding": {"system": "http://terminology.hl7.org/CodeSystem/v2-0003", "code": "A01"},
        "source": {"endpoint": "urn:samu-21"},
    }
    message = {
        "resourceType": "Bundle",
        "type": "message",
        "entry": [{"resource": header}, {"resource": e2}],
    }
    resp = post(env, "/fhir", message)
    assert resp.status_code == 200, resp.text
    reply = resp.json()
    assert reply["type"] == "message"
    assert reply["entry"][0]["resource"]["response"] == {"identifier": header["id"], "code": "ok"}
    no_header = post(env, "/fhir", {**message, "entry": [{"resource": e2}]})
    assert no_header.status_code == 422 and issue_expressions(no_header) == [
        "Bundle.entry[0].resource"
    ]
    assert len(raw_by_id(env, str(e1["id"]), str(e2["id"]), str(header["id"]))) == 3


def test_ndjson_import(env: Env) -> None:
    pid = unique("p")
    good = [encounter(unique("e"), pid) for _ in range(3)]
    lines = [json.dumps(r) for r in good] + ["", "{not json", json.dumps(good[0])]
    resp = post(env, "/fhir/$import", "\n".join(lines).encode(), ctype="application/fhir+ndjson")
    assert resp.status_code == 200, resp.text
    statuses = [e["response"]["status"] for e in resp.json()["entry"]]
    assert statuses == ["201 Created"] * 3 + ["400 Bad Request", "200 OK"]
    assert len(raw_by_id(env, *(str(r["id"]) for r in good))) == 3
    wrong_type = post(env, "/fhir/$import", b"{}", ctype=FHIR)
    assert wrong_type.status_code == 415


def test_push_cli_summary(env: Env, tmp_path: Path) -> None:
    pid = unique("p")
    ndjson = tmp_path / "feed.ndjson"
    ndjson.write_text(
        "\n".join(
            json.dumps(r)
            for r in [encounter(unique("e"), pid), encounter(unique("e"), pid, status="done")]
        )
    )
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps(transaction([encounter(unique("e"), pid)])))
    run = subprocess.run(
        [sys.executable, "-m", "parcours", "ingest", "push", str(ndjson), str(bundle), str(bundle)],
        env=parcours_env(PARCOURS_INGEST_URL=env.gw.url, PARCOURS_INGEST_TOKEN=env.token),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    out = run.stdout.splitlines()
    assert "accepted: 2" in out and "duplicates: 1" in out and "rejected: 1" in out
    assert "  invalid-code: 1" in out


def test_token_create_cli_gives_a_working_token_once(env: Env) -> None:
    name = unique("samu")
    cli_env = parcours_env(DATABASE_URL=env.pg_url)

    def create(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "parcours", "ingest", "token", "create", name, *extra],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    first = create()
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    assert token.startswith("prc_")
    again = create()
    assert again.returncode == 1 and "--rotate" in again.stderr
    rotated = create("--rotate")
    assert rotated.returncode == 0
    new_token = rotated.stdout.strip()
    assert (
        post(
            env, "/fhir/Patient", {"resourceType": "Patient", "id": unique("p")}, token=new_token
        ).status_code
        == 201
    )
    engine = make_engine(env.pg_url)
    with engine.connect() as conn:
        stored = conn.execute(
            text("SELECT token_hash FROM integrators WHERE name = :n"), {"n": name}
        ).scalar_one()
    engine.dispose()
    assert new_token not in stored and len(stored) == 64


def test_push_direct_writes_to_kafka_with_the_same_rules(env: Env, tmp_path: Path) -> None:
    pid = unique("p")
    good, bad = encounter(unique("e"), pid), encounter(unique("e"), pid, status="done")
    feed = tmp_path / "direct.ndjson"
    feed.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "parcours",
            "ingest",
            "push",
            "--direct",
            "--source",
            env.source,
            str(feed),
        ],
        env=parcours_env(
            KAFKA_BOOTSTRAP_SERVERS=env.broker,
            DATABASE_URL=env.pg_url,
            PARCOURS_TOPIC_PREFIX=env.topics.raw.removesuffix("fhir.raw"),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert run.stdout.splitlines()[:3] == ["accepted: 1", "duplicates: 0", "rejected: 1"]
    (msg,) = raw_by_id(env, str(good["id"]), str(bad["id"]))
    assert msg.key == pid.encode()
    assert dict(msg.headers)["source"] == env.source.encode()
    # The direct path shares the dedupe memory: the gateway now sees it as a duplicate (from
    # the same integrator; another would be refused, as for any write of that patient).
    assert post(env, "/fhir/Encounter", good).status_code == 200


def test_two_opposite_merges_sent_at_once_are_not_both_accepted(env: Env) -> None:
    """The check for a loop and the record of the merge are one step under the merge lock."""

    def merged(pid: str, into: str) -> dict[str, object]:
        link = {"type": "replaced-by", "other": {"reference": f"Patient/{into}"}}
        return {"resourceType": "Patient", "id": pid, "link": [link]}

    pairs = [(unique("p"), unique("p")) for _ in range(6)]
    for a, b in pairs:
        for pid in (a, b):
            body = {"resourceType": "Patient", "id": pid}
            assert post(env, "/fhir/Patient", body).status_code == 201  # type: ignore[attr-defined]

    def send(start: threading.Barrier, pid: str, into: str) -> int:
        start.wait()
        return int(post(env, "/fhir/Patient", merged(pid, into)).status_code)  # type: ignore[attr-defined]

    for a, b in pairs:
        start = threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            statuses = sorted(pool.map(send, (start, start), (a, b), (b, a)))
        assert statuses == [201, 422], (a, b, statuses)


def test_a_merge_back_into_a_merged_patient_is_refused(env: Env) -> None:
    a, b, c = unique("p"), unique("p"), unique("p")

    def merged(pid: str, into: str) -> dict[str, object]:
        link = {"type": "replaced-by", "other": {"reference": f"Patient/{into}"}}
        return {"resourceType": "Patient", "id": pid, "link": [link]}

    for pid in (a, b, c):
        assert post(env, "/fhir/Patient", {"resourceType": "Patient", "id": pid}).status_code == 201
    assert post(env, "/fhir/Patient", merged(b, a)).status_code == 201
    assert post(env, "/fhir/Patient", merged(c, b)).status_code == 201
    # a ← b ← c: merging a into c (or into b) closes a loop that would leave no pathway.
    for into in (c, b):
        refused = post(env, "/fhir/Patient", merged(a, into))
        assert refused.status_code == 422, refused.text  # type: ignore[attr-defined]
        assert issue_expressions(refused) == ["Patient.link[0].other"]
    # In one Bundle, the second of two merges into each other is refused.
    d, e = unique("p"), unique("p")
    answer = post(env, "/fhir", transaction([merged(d, e), merged(e, d)], "batch")).json()  # type: ignore[attr-defined]
    assert sorted(x["response"]["status"] for x in answer["entry"]) == [
        "201 Created",
        "422 Unprocessable Entity",
    ]
