"""Patient references the stream worker cannot use, against a real gateway, broker, PostgreSQL
and stream worker: the gateway refuses them (422 naming the element, nothing published), alone,
in a batch (that entry alone) and in a transaction (the whole Bundle); what it accepts, a real
worker then folds: every accepted Encounter, referral and appointment reaches SQL and the worker
dead-letters nothing of it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from ingest.auth import create_token
from parcours.db import make_engine
from parcours.settings import Settings
from parcours.topics import Topics
from tests.integration.hostile_helpers import TopicCounter, assert_outcome, entry_statuses
from tests.integration.ingest_helpers import FHIR, Gateway, gateway_env, run_gateway
from tests.integration.streams_helpers import worker_env
from tests.support import parcours_process, wait_until

pytestmark = pytest.mark.integration

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
REASON = "patient-reference"
# Patient references the worker cannot fold a resource under, and the gateway's reason: the
# core invariants (a `Type/id` whose id is no FHIR id, ref-1) refuse some of them first.
UNUSABLE = [
    ("Patient/x/", REASON),
    ("Group/g", REASON),
    ("   ", REASON),
    ("Patient/a?b", REASON),
    ("http://x.org/fhir/Patient/a b", REASON),
    ("http://x.org/fhir/Patient/" + "y" * 200, REASON),
    ("Patient/", "invariant"),
    ("#p1", "invariant"),
]


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def encounter(subject: dict[str, Any] | None, **over: Any) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": uid("e"),
        "status": "in-progress",
        "class": {"system": ACT, "code": "IMP"},
        "period": {"start": "2026-01-12T07:15:00+00:00"},
    }
    if subject is not None:
        res["subject"] = subject
    res.update(over)
    return res


def ref(patient: str) -> dict[str, str]:
    return {"reference": f"Patient/{patient}"}


def entry(resource: dict[str, Any], method: str = "POST") -> dict[str, Any]:
    url = resource["resourceType"]
    if method == "PUT":
        url += f"/{resource['id']}"
    return {"resource": resource, "request": {"method": method, "url": url}}


def bundle(btype: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": btype, "entry": list(entries)}


@dataclass
class Env:
    gw: Gateway
    client: httpx.Client
    counter: TopicCounter
    source: str
    prefix: str
    broker: str
    pg_url: str
    # What the gateway accepted, which the worker must fold: table → ids.
    accepted: dict[str, set[str]] = field(default_factory=dict)

    def accept(self, table: str, rid: str) -> None:
        self.accepted.setdefault(table, set()).add(rid)


@pytest.fixture(scope="module")
def env(broker: str, pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    prefix = f"pr{uuid.uuid4().hex[:8]}."
    source = uid("feed")
    engine = make_engine(pg_url)
    token = create_token(engine, source)
    engine.dispose()
    log = tmp_path_factory.mktemp("patient-refs") / "gateway.log"
    environ = gateway_env(broker, pg_url, prefix, PARCOURS_INGEST_RATE_PER_S="0")
    topics = Topics.from_settings(Settings(topic_prefix=prefix))
    with run_gateway(environ, log) as gw, gw.client(token) as client:
        counter = TopicCounter(broker, topics.raw, topics.directory)
        try:
            yield Env(gw, client, counter, source, prefix, broker, pg_url)
        finally:
            counter.close()


def post(env: Env, path: str, body: Any, method: str = "POST") -> httpx.Response:
    return env.client.request(method, path, json=body, headers={"Content-Type": FHIR})


def refused(resp: httpx.Response, expression: str, reason: str = REASON) -> None:
    assert resp.status_code == 422, resp.text[:1000]
    assert_outcome(resp)
    issues = resp.json()["issue"]
    assert [i["expression"] for i in issues] == [[expression]], issues
    assert issues[0]["details"]["coding"][0]["code"] == reason


@pytest.mark.parametrize(("reference", "reason"), UNUSABLE)
def test_a_single_resource_naming_no_usable_patient_is_refused(
    env: Env, reference: str, reason: str
) -> None:
    res = encounter({"reference": reference})
    refused(post(env, "/fhir/Encounter", res), "Encounter.subject.reference", reason)
    refused(
        post(env, f"/fhir/Encounter/{res['id']}", res, method="PUT"),
        "Encounter.subject.reference",
        reason,
    )
    assert env.counter.sync() == []


def test_an_encounter_of_no_patient_or_of_a_group_is_refused(env: Env) -> None:
    refused(post(env, "/fhir/Encounter", encounter(None)), "Encounter.subject")
    refused(
        post(env, "/fhir/Encounter", encounter({"display": "Jean Martin"})), "Encounter.subject"
    )
    referral = {
        "resourceType": "ServiceRequest",
        "id": uid("sr"),
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Group/g"},
        "authoredOn": "2026-01-10T09:00:00+01:00",
        "requester": {"reference": "Practitioner/gp1"},
    }
    refused(post(env, "/fhir/ServiceRequest", referral), "ServiceRequest.subject.reference")
    appointment = {
        "resourceType": "Appointment",
        "id": uid("a"),
        "status": "booked",
        "start": "2026-02-01T09:00:00+01:00",
        "participant": [{"actor": {"reference": "Location/w1"}, "status": "accepted"}],
    }
    refused(post(env, "/fhir/Appointment", appointment), "Appointment.participant")
    assert env.counter.sync() == []


def test_a_batch_refuses_that_entry_alone(env: Env) -> None:
    pid, org = uid("p"), uid("o")
    good = encounter(ref(pid))
    resp = post(
        env,
        "/fhir",
        bundle(
            "batch",
            entry(encounter({"reference": "Patient/x/"})),
            entry(good, "PUT"),
            entry({"resourceType": "Organization", "id": org, "name": "CHU"}),
        ),
    )
    assert resp.status_code == 200, resp.text[:1000]
    assert entry_statuses(resp) == (422, 201, 201)
    outcome = resp.json()["entry"][0]["response"]["outcome"]
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[0].resource.subject.reference"]
    keys = sorted(r.key for r in env.counter.sync())
    assert keys == sorted([pid.encode(), f"Organization/{org}".encode()])
    env.accept("encounters", good["id"])


def test_a_transaction_is_refused_whole(env: Env) -> None:
    pid = uid("p")
    resp = post(
        env,
        "/fhir",
        bundle(
            "transaction",
            entry({"resourceType": "Patient", "id": pid}, "PUT"),
            entry(encounter(ref(pid))),
            entry(encounter({"reference": "Group/g"})),
        ),
    )
    refused(resp, "Bundle.entry[2].resource.subject.reference")
    assert env.counter.sync() == []


def test_an_import_line_is_refused_alone(env: Env) -> None:
    pid = uid("p")
    good = encounter(ref(pid))
    lines = b"\n".join(
        httpx.Request("POST", "/", json=r).content
        for r in (encounter({"reference": "Group/g"}), good)
    )
    resp = env.client.post(
        "/fhir/$import", content=lines, headers={"Content-Type": "application/fhir+ndjson"}
    )
    assert resp.status_code == 200, resp.text[:1000]
    assert entry_statuses(resp) == (422, 201)
    assert [r.key for r in env.counter.sync()] == [pid.encode()]
    env.accept("encounters", good["id"])


def test_what_the_worker_reads_is_accepted(env: Env) -> None:
    pid = uid("p")
    by_url = encounter({"reference": f"http://x.org/fhir/Patient/{pid}/_history/2"})
    resp = post(env, "/fhir/Encounter", by_url)
    assert resp.status_code == 201, resp.text[:1000]
    env.accept("encounters", by_url["id"])
    # A time of the first year of care that is an instant of 1899 in UTC: the worker bounds
    # the year as written, as the gateway does.
    early = encounter(ref(pid), period={"start": "1900-01-01T00:30:00+01:00"})
    assert post(env, "/fhir/Encounter", early).status_code == 201
    env.accept("encounters", early["id"])
    # A conditional reference to the patient, resolved within the transaction.
    other = uid("p")
    cond = encounter({"reference": f"Patient?identifier=urn:oid:1.2.250.1.71.4.2.7|{other}"})
    patient = {
        "resourceType": "Patient",
        "id": other,
        "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.7", "value": other}],
    }
    resp = post(env, "/fhir", bundle("transaction", entry(patient, "PUT"), entry(cond)))
    assert resp.status_code == 200, resp.text[:1000]
    assert entry_statuses(resp) == (201, 201)
    env.accept("encounters", cond["id"])
    referral = {
        "resourceType": "ServiceRequest",
        "id": uid("sr"),
        "status": "active",
        "intent": "order",
        "subject": ref(pid),
        "authoredOn": "2026-01-10T09:00:00+01:00",
        "requester": {"reference": "Practitioner/gp1"},
    }
    assert post(env, "/fhir/ServiceRequest", referral).status_code == 201
    env.accept("referrals", referral["id"])
    appointment = {
        "resourceType": "Appointment",
        "id": uid("a"),
        "status": "booked",
        "created": "2026-01-10T09:00:00+01:00",
        "start": "2026-02-01T09:00:00+01:00",
        "participant": [
            {"actor": {"reference": "Location/w1"}, "status": "accepted"},
            {"actor": ref(pid), "status": "accepted"},
        ],
    }
    assert post(env, "/fhir/Appointment", appointment).status_code == 201
    env.accept("appointments", appointment["id"])
    # Resources of no patient.
    for res in (
        {"resourceType": "Organization", "id": uid("o"), "name": "CHU"},
        {"resourceType": "Location", "id": uid("l"), "name": "Ward"},
        {"resourceType": "Practitioner", "id": uid("dr")},
    ):
        assert post(env, f"/fhir/{res['resourceType']}", res).status_code == 201
    keys = {r.key for r in env.counter.sync()}
    assert {pid.encode(), other.encode()} <= keys


ID_COLUMNS = {
    "encounters": "encounter_id",
    "referrals": "referral_id",
    "appointments": "appointment_id",
}


def test_a_worker_folds_everything_accepted_and_dead_letters_nothing(
    env: Env, tmp_path: Path
) -> None:
    """Runs last in this module: a real stream worker reads every record the gateway accepted."""
    assert env.accepted.get("encounters"), "the tests above accepted nothing"
    engine = make_engine(env.pg_url)

    def landed() -> dict[str, set[str]]:
        missing: dict[str, set[str]] = {}
        with engine.connect() as conn:
            for table, ids in env.accepted.items():
                column = ID_COLUMNS[table]
                query = text(f"SELECT {column} FROM {table} WHERE {column} = ANY(:ids)")
                found = {row[0] for row in conn.execute(query, {"ids": sorted(ids)})}
                if ids - found:
                    missing[table] = ids - found
        return missing

    def worker_rejections() -> list[tuple[str, str]]:
        with engine.connect() as conn:
            return [
                (r[0], r[1])
                for r in conn.execute(
                    text(
                        "SELECT reason, diagnostics FROM ingest_rejections"
                        " WHERE source = :s AND reason LIKE 'worker-%'"
                    ),
                    {"s": env.source},
                )
            ]

    log = tmp_path / "worker.log"
    environ = worker_env(env.broker, env.pg_url, env.prefix)
    try:
        with parcours_process(["streams", "worker"], environ, log) as proc:

            def done() -> bool:
                assert proc.poll() is None, log.read_text()[-3000:]
                return not landed()

            wait_until(done, timeout_s=120, what=f"the accepted records in SQL: {landed()}")
        assert worker_rejections() == []
    finally:
        engine.dispose()
