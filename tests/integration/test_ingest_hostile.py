"""A hostile corpus against a real gateway, broker and PostgreSQL.

Every case asserts its answer (a 4xx with an OperationOutcome, or the documented 2xx) and that
the raw and directory topics changed by exactly what the answer says was accepted. Hand-written
cases cover each category of attack; Hypothesis adds random JSON and random strings in valid
resources.
After the corpus, /healthz is 200 and the gateway's memory grew by less than 100 MB.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.auth import create_token
from ingest.invariants import FIRST_YEAR, LAST_YEAR
from parcours.db import make_engine
from parcours.settings import Settings
from parcours.topics import Topics
from tests.integration.hostile_helpers import (
    Case,
    TopicCounter,
    accepted_in,
    assert_outcome,
    body_of,
    entry_statuses,
    rss_bytes,
)
from tests.integration.ingest_helpers import Gateway, gateway_env, run_gateway

pytestmark = pytest.mark.integration

MAX_BODY = 1_000_000
MAX_RESOURCE = 100_000
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
FORBIDDEN = [chr(c) for c in range(32) if chr(c) not in "\t\r\n"]
NDJSON = "application/fhir+ndjson"
BAD = frozenset({400, 422})
# Case.auth of a request sent with the second integrator's token.
OTHER = "other"


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def encounter(eid: str | None = None, patient: str = "hostile-p", **over: Any) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": eid or uid("e"),
        "status": "in-progress",
        "class": {"system": ACT, "code": "IMP"},
        "subject": {"reference": f"Patient/{patient}"},
        "period": {"start": "2026-01-12T07:15:00+00:00"},
    }
    res.update(over)
    return res


def location(**over: Any) -> dict[str, Any]:
    return {"resourceType": "Location", "id": uid("l"), "name": "Ward A", **over}


def patient(**over: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": uid("p"), **over}


def entry(resource: Any, method: str = "POST", url: str | None = None, **extra: Any) -> dict:
    rtype = resource.get("resourceType") if isinstance(resource, dict) else "Patient"
    return {"resource": resource, "request": {"method": method, "url": url or str(rtype)}, **extra}


def bundle(btype: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": btype, "entry": list(entries)}


def ndjson(*lines: Any) -> bytes:
    return b"\n".join(x if isinstance(x, bytes) else body_of(x) for x in lines)


def nest_extension(levels: int) -> dict[str, Any]:
    ext: dict[str, Any] = {"url": "http://example.org/x", "valueString": "a"}
    for _ in range(levels):
        ext = {"url": "http://example.org/x", "extension": [ext]}
    return ext


def one(name: str, path: str, value: Any, expect: frozenset[int] | set[int], **kw: Any) -> Case:
    body = value if isinstance(value, bytes) else body_of(value)
    return Case(name, path, body, frozenset(expect), **kw)


def control_character_cases() -> Iterator[Case]:
    """Every forbidden character, in a top-level string, a nested one, a reference (the
    worker's poison) and a code, on each route that carries resources."""
    for ch in FORBIDDEN:
        tag = f"U+{ord(ch):04X}"
        yield one(f"location-name-{tag}", "/fhir/Location", location(name=f"Ward{ch}A"), {422})
        yield one(
            f"patient-family-{tag}",
            "/fhir/Patient",
            patient(name=[{"family": f"Dupont{ch}"}]),
            {422},
        )
        yield one(
            f"reference-{tag}",
            "/fhir/Encounter",
            encounter(subject={"reference": f"Patient/a{ch}b"}),
            {422},
        )
        yield one(
            f"batch-entry-{tag}",
            "/fhir",
            bundle("batch", entry(location(name=f"x{ch}")), entry(location())),
            {200},
            entries=(422, 201),
        )
        yield one(
            f"import-line-{tag}",
            "/fhir/$import",
            ndjson(location(alias=[f"a{ch}"]), location()),
            {200},
            content_type=NDJSON,
            entries=(422, 201),
        )
    yield one(
        "transaction-with-nul",
        "/fhir",
        bundle("transaction", entry(location()), entry(location(name="a\x00"))),
        {422},
    )
    yield one("nul-in-key", "/fhir/Location", {**location(), "na\x00me": "x"}, BAD)
    yield one("nul-in-id", "/fhir/Location", location(id="a\x00b"), BAD)
    yield one("nul-in-type", "/fhir/Location", {"resourceType": "Location\x00"}, BAD)
    yield one("nul-in-fullurl", "/fhir", bundle("batch", entry(location(), fullUrl="x\x00")), {200})
    yield one(
        "nul-in-request-url",
        "/fhir",
        bundle("batch", entry(location(), url="Location\x00")),
        {200},
        entries=(400,),
    )
    yield one("tab-cr-lf-are-fine", "/fhir/Location", location(name="a\tb\r\nc"), {201})


def odd_json_cases() -> Iterator[Case]:
    """Not a resource, or a resourceType of the wrong kind, on every route."""
    values: list[Any] = [
        123,
        "Patient",
        None,
        True,
        [],
        ["Patient"],
        {},
        {"x": 1},
        {"resourceType": 123},
        {"resourceType": ["Patient"]},
        {"resourceType": {"a": 1}},
        {"resourceType": ""},
        {"resourceType": None},
        {"resourceType": "Frobnicator"},
        {"resourceType": "Patient", "id": 5},
        {"resourceType": "Patient", "id": ["a"]},
        {"resourceType": "Patient", "meta": "x"},
    ]
    for n, value in enumerate(values):
        yield one(f"odd-single-{n}", "/fhir/Patient", value, BAD)
        yield one(f"odd-bundle-{n}", "/fhir", value, BAD | {404})
        yield one(
            f"odd-import-{n}",
            "/fhir/$import",
            ndjson(value, patient()),
            {200},
            content_type=NDJSON,
            entries=(400 if not isinstance(value, dict) or n < 14 else 422, 201),
        )
        yield one(
            f"odd-entry-{n}",
            "/fhir",
            {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": value}]},
            {200, 400},
        )


def invalid_json_cases() -> Iterator[Case]:
    bodies = [
        b"{",
        b"}",
        b"nul",
        b"\xff\xfe\x00",
        b'{"resourceType": "Patient",}',
        b"[" * 2000 + b"]" * 2000,
        b'{"a": 1e99999}',
        b'{"a": NaN}',
        b'"\\ud800"',
        b"",
        b" ",
        b'{"resourceType":"Patient"}{"resourceType":"Patient"}',
    ]
    for n, raw in enumerate(bodies):
        yield one(f"json-single-{n}", "/fhir/Patient", raw, {400})
        yield one(f"json-bundle-{n}", "/fhir", raw, {400})
    yield one(
        "json-import-lines",
        "/fhir/$import",
        ndjson(b"{", b"nul", b"[1,", patient()),
        {200},
        content_type=NDJSON,
        entries=(400, 400, 400, 201),
    )


def twice(resource: dict[str, Any], name: str, other: str) -> bytes:
    """`resource` as JSON, its `name` given a second time with the value `other`."""
    body = body_of(resource)
    first = body_of({name: resource[name]})[1:-1]
    return body.replace(first, first + b", " + body_of({name: other})[1:-1], 1)


def repeated_name_cases() -> Iterator[Case]:
    """An object that gives a name twice: FHIR JSON forbids it, and a parser would keep one of
    the values without a word."""
    yield one("twice-gender", "/fhir/Patient", twice(patient(gender="male"), "gender", "x"), {400})
    yield one("twice-type", "/fhir/Patient", twice(patient(), "resourceType", "Location"), {400})
    for btype in ("transaction", "batch"):
        body = body_of(bundle(btype, entry(location()), entry(patient(gender="male"))))
        yield one(
            f"twice-in-{btype}",
            "/fhir",
            body.replace(b'"gender": "male"', b'"gender": "male", "gender": "female"'),
            {400},
        )
    yield one(
        "twice-import-line",
        "/fhir/$import",
        ndjson(patient(), twice(patient(gender="male"), "gender", "female"), patient()),
        {200},
        content_type=NDJSON,
        entries=(201, 400, 201),
    )


def depth_cases() -> Iterator[Case]:
    """Deep structures: refused with 400 before any recursive code, never a 500."""
    for levels in (20, 40, 126, 300):
        expect = {201} if levels <= 20 else {400}
        yield one(
            f"extension-{levels}",
            "/fhir/Patient",
            patient(extension=[nest_extension(levels)]),
            expect,
        )
        yield one(
            f"extension-{levels}-in-transaction",
            "/fhir",
            bundle("transaction", entry(patient(extension=[nest_extension(levels)]))),
            {200} if levels <= 20 else {400},
        )
    deep = "[" * 1000 + "]" * 1000
    wrapped = body_of(bundle("transaction", entry(location(), x="DEEP"))).replace(
        b'"DEEP"', deep.encode()
    )
    yield one("array-1000-in-transaction", "/fhir", wrapped, {400})
    yield one(
        "array-1000-in-resource",
        "/fhir/Location",
        body_of(location(alias="DEEP")).replace(b'"DEEP"', deep.encode()),
        {400},
    )
    yield one(
        "array-1000-in-import",
        "/fhir/$import",
        body_of(location(alias="DEEP")).replace(b'"DEEP"', deep.encode()),
        {200},
        content_type=NDJSON,
        entries=(400,),
    )
    nested = bundle("collection", entry(encounter()))
    for _ in range(25):
        nested = bundle("collection", {"resource": nested})
    yield one("bundle-in-bundle-25", "/fhir/Bundle", nested, {400})


def invariant_cases() -> Iterator[Case]:
    """per-1, dom-2, dom-3, ref-1, references with bad ids, and codes wherever they sit."""
    periods = [
        ("2026-01-02", "2026-01-01", 422),
        ("2026-01-01T10:00:00Z", "2026-01-01T09:59:59Z", 422),
        ("2026-02", "2026-01-31", 422),
        ("2027", "2026", 422),
        ("2026-01-01T10:00:00+02:00", "2026-01-01T09:00:00Z", 201),
        ("2026-01-01", "2026-01-01", 201),
        ("2026-01-01T10:00:00Z", "2026-01-01T10:00:00Z", 201),
        ("2026", "2026-06-01", 201),
    ]
    for n, (start, end, status) in enumerate(periods):
        yield one(
            f"per-1-{n}",
            "/fhir/Encounter",
            encounter(period={"start": start, "end": end}),
            {status},
        )
        yield one(
            f"per-1-location-{n}",
            "/fhir/Encounter",
            encounter(
                location=[
                    {
                        "location": {"reference": "Location/w1"},
                        "period": {"start": start, "end": end},
                    }
                ]
            ),
            {status},
        )
    contained = {"resourceType": "Location", "id": "l1", "name": "x"}
    yield one("dom-3-unreferenced", "/fhir/Encounter", encounter(contained=[contained]), {422})
    yield one(
        "dom-3-referenced",
        "/fhir/Encounter",
        encounter(contained=[contained], location=[{"location": {"reference": "#l1"}}]),
        {201},
    )
    yield one(
        "dom-2-contained-contains",
        "/fhir/Encounter",
        encounter(
            contained=[{**contained, "contained": [{"resourceType": "Location", "id": "l2"}]}],
            location=[{"location": {"reference": "#l1"}}],
        ),
        {422},
    )
    # A contained resource's `#id` names a sibling in its container's scope (the R4 spec's
    # CarePlan and Claim examples), and dom-3 counts a canonical `#id` (its PlanDefinitions).
    org = {"resourceType": "Organization", "id": "o1", "name": "CHU"}
    yield one(
        "ref-1-contained-sibling",
        "/fhir/Encounter",
        encounter(
            contained=[{**contained, "managingOrganization": {"reference": "#o1"}}, org],
            location=[{"location": {"reference": "#l1"}}],
        ),
        {201},
    )
    yield one(
        "dom-3-canonical",
        "/fhir/PlanDefinition",
        {
            "resourceType": "PlanDefinition",
            "status": "active",
            "contained": [{"resourceType": "ActivityDefinition", "id": "a1", "status": "active"}],
            "action": [{"title": "x", "definitionCanonical": "#a1"}],
        },
        {201},
    )
    yield one(
        "ref-1-dangling",
        "/fhir/Encounter",
        encounter(location=[{"location": {"reference": "#nowhere"}}]),
        {422},
    )
    for n, ref in enumerate(["Patient/a b", "Patient/" + "x" * 65, "Patient/é", "Patient/"]):
        yield one(
            f"reference-id-{n}", "/fhir/Encounter", encounter(subject={"reference": ref}), {422}
        )
    # A leap second (no instant the worker can read) and a care time of no care year are
    # refused wherever the worker reads them; a year of care with any offset is accepted.
    yield one(
        "leap-second", "/fhir/Encounter", encounter(period={"start": "2016-12-31T23:59:60Z"}), {422}
    )
    yield one(
        "authored-1850",
        "/fhir/ServiceRequest",
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/hostile-p"},
            "authoredOn": "1850-01-01",
        },
        {422},
    )
    # A number where a time is due: the R4B models take it (as seconds since 1970).
    yield one("start-a-number", "/fhir/Encounter", encounter(period={"start": 20260301}), {422})
    yield one(
        "start-2099-west",
        "/fhir/Encounter",
        encounter(period={"start": "2099-12-31T23:30:00-01:00"}),
        {201},
    )
    done = encounter(status="done")
    yield one("done-single", "/fhir/Encounter", done, {422})
    yield one("done-in-collection", "/fhir/Bundle", bundle("collection", {"resource": done}), {422})
    yield one(
        "done-in-posted-batch",
        "/fhir/Bundle",
        bundle("batch", entry(encounter(status="done"))),
        {422},
    )
    yield one(
        "done-as-batch-entry",
        "/fhir",
        bundle("batch", entry(encounter(status="done")), entry(encounter())),
        {200},
        entries=(422, 201),
    )
    yield one(
        "done-in-bundle-entry",
        "/fhir",
        bundle("batch", entry(bundle("collection", {"resource": encounter(status="done")}))),
        {200},
        entries=(422,),
    )
    yield one(
        "done-in-transaction",
        "/fhir",
        bundle("transaction", entry(encounter()), entry(encounter(status="done"))),
        {422},
    )
    yield one(
        "done-import-line",
        "/fhir/$import",
        ndjson(encounter(status="done"), bundle("collection", {"resource": done})),
        {200},
        content_type=NDJSON,
        entries=(422, 422),
    )
    yield one(
        "done-contained",
        "/fhir/Patient",
        patient(
            contained=[{**done, "id": "c1", "subject": {"reference": "#"}}],
        ),
        {422},
    )
    for n, klass in enumerate(["XYZ", 5, None]):
        yield one(
            f"class-code-{n}",
            "/fhir/Encounter",
            encounter(**{"class": {"system": ACT, "code": klass}}),
            {422},
        )
    for n, status in enumerate([5, ["in-progress"], {"a": 1}, "", "IN-PROGRESS"]):
        yield one(f"status-{n}", "/fhir/Encounter", encounter(status=status), {422})


def entry_field_cases() -> Iterator[Case]:
    """Entry-level elements: fullUrl, request, and the Bundle's own invariants."""
    for n, full_url in enumerate([5, [], {}, "a b", "urn:uuid:", "urn:uuid:é", True, ""]):
        yield one(
            f"fullurl-{n}",
            "/fhir",
            bundle("batch", entry(location(), fullUrl=full_url), entry(location())),
            {200},
            entries=(400, 201),
        )
    for n, request in enumerate(
        [
            None,
            5,
            "POST",
            {"method": "DELETE", "url": "Location"},
            {"method": "GET", "url": "Location"},
            {"method": 5, "url": "Location"},
            {"method": "POST"},
            {"method": "POST", "url": 5},
            {"method": "POST", "url": "Patient"},
            {"method": "PUT", "url": "Location/other"},
            {"method": "POST", "url": "Location", "ifNoneExist": 5},
        ]
    ):
        bad = {"resource": location(), "request": request}
        yield one(
            f"request-{n}",
            "/fhir",
            bundle("batch", bad, entry(location())),
            {200},
            entries=(400, 201),
        )
    same = "urn:uuid:8c1f0c1e-93a4-4f8e-9b0e-7d1f0c1a5e11"
    yield one(
        "duplicate-fullurl-batch",
        "/fhir",
        bundle("batch", entry(location(), fullUrl=same), entry(location(), fullUrl=same)),
        {200},
        entries=(201, 400),
    )
    yield one(
        "duplicate-fullurl-transaction",
        "/fhir",
        bundle("transaction", entry(location(), fullUrl=same), entry(location(), fullUrl=same)),
        {400},
    )
    lid = uid("l")
    yield one(
        "conflicting-content",
        "/fhir",
        bundle(
            "batch",
            entry(location(id=lid, meta={"versionId": "1"}, name="a")),
            entry(location(id=lid, meta={"versionId": "1"}, name="b")),
        ),
        {200},
        entries=(201, 400),
    )
    twice = location()
    yield one(
        "same-content-twice",
        "/fhir",
        bundle("batch", entry(twice), entry(twice)),
        {200},
        entries=(201, 200),
    )
    for n, envelope in enumerate(
        [
            {"resourceType": "Bundle"},
            {"resourceType": "Bundle", "type": 5},
            {"resourceType": "Bundle", "type": "searchset"},
            {"resourceType": "Bundle", "type": "batch", "entry": 5},
            {"resourceType": "Bundle", "type": "batch", "entry": [5]},
            {"resourceType": "Bundle", "type": "batch", "entry": {}},
            {"resourceType": "Bundle", "type": "batch", "total": "x"},
            {"resourceType": "Bundle", "type": "batch", "bogus": 1},
            {"resourceType": "Bundle", "type": "message", "entry": [entry(location())]},
            {"resourceType": "Bundle", "type": "batch\x00"},
        ]
    ):
        yield one(f"envelope-{n}", "/fhir", envelope, BAD)


def identity_cases() -> Iterator[Case]:
    """Ids and URL ids an attacker would try."""
    for n, rid in enumerate(
        ["' OR 1=1 --", "../../etc/passwd", "a" * 65, "é", "a/b", "<script>", "a b", ""]
    ):
        yield one(f"id-{n}", "/fhir/Location", location(id=rid), {422})
    lid = uid("l")
    yield one("put-ok", f"/fhir/Location/{lid}", location(id=lid), {201}, method="PUT")
    yield one("put-mismatch", f"/fhir/Location/{uid('l')}", location(), {400}, method="PUT")
    yield one("put-url-odd", "/fhir/Location/%00", location(id="x"), {400}, method="PUT")
    yield one("put-url-sql", "/fhir/Location/'%20OR%201=1", location(id="x"), {400}, method="PUT")
    for n, path in enumerate(["/fhir/Frobnicator", "/fhir/patient", "/fhir/Patient%00"]):
        yield one(f"type-{n}", path, patient(), {404})


def envelope_http_cases() -> Iterator[Case]:
    """Auth, media types and sizes."""
    for n, auth in enumerate([None, "Bearer nope", "Basic YTpi", "Bearer a b", "Token prc_x"]):
        yield one(f"auth-{n}", "/fhir/Location", location(), {401}, auth=auth)
    for n, ctype in enumerate([None, "text/plain", "multipart/form-data", "application/xml"]):
        yield one(f"media-{n}", "/fhir/Location", location(), {415}, content_type=ctype)
        yield one(f"media-bundle-{n}", "/fhir", bundle("batch"), {415}, content_type=ctype)
    big = location(description="x" * (MAX_RESOURCE + 10))
    yield one("resource-over-limit", "/fhir/Location", big, {413})
    yield one(
        "resource-over-limit-in-batch",
        "/fhir",
        bundle("batch", entry(big), entry(location())),
        {200},
        entries=(413, 201),
    )
    yield one(
        "resource-over-limit-in-transaction", "/fhir", bundle("transaction", entry(big)), {413}
    )
    yield one(
        "resource-over-limit-in-import",
        "/fhir/$import",
        ndjson(big, location()),
        {200},
        content_type=NDJSON,
        entries=(413, 201),
    )
    yield one("body-over-limit", "/fhir/Location", b" " * (MAX_BODY + 1), {413})
    many = patient(name=[{"family": 5}] * 5000)
    yield one("five-thousand-issues", "/fhir/Patient", many, {422})
    nuls = patient(name=[{"family": "\x00"}] * 5000)
    yield one("five-thousand-nuls", "/fhir/Patient", nuls, {422})
    # Under the body limit, but more values than validation may cost.
    yield one("three-hundred-thousand-values", "/fhir/Patient", patient(name=[5] * 300_000), {413})
    yield one(
        "three-hundred-thousand-values-in-batch",
        "/fhir",
        bundle("batch", entry(patient(name=[5] * 300_000)), entry(location())),
        {200},
        entries=(413, 201),
    )


def of_patient(rtype: str, pid: str) -> dict[str, Any]:
    """A small valid resource of `rtype` about patient `pid`."""
    ref = {"reference": f"Patient/{pid}"}
    code = {"text": "x"}
    bodies: dict[str, dict[str, Any]] = {
        "Encounter": encounter(patient=pid),
        "Observation": {"status": "final", "code": code, "subject": ref},
        "Condition": {"subject": ref, "code": code},
        "Procedure": {"status": "completed", "subject": ref},
        "EpisodeOfCare": {"status": "active", "patient": ref},
        "Flag": {"status": "active", "code": code, "subject": ref},
        "ServiceRequest": {"status": "active", "intent": "order", "subject": ref},
        "AllergyIntolerance": {"patient": ref},
        "CarePlan": {"status": "active", "intent": "plan", "subject": ref},
        "Appointment": {
            "status": "booked",
            "participant": [{"actor": ref, "status": "accepted"}],
        },
    }
    return {"resourceType": rtype, "id": uid(rtype[:3].lower()), **bodies[rtype]}


def access_cases() -> Iterator[Case]:
    """Two integrators: what one wrote first (a patient, a resource of no patient) is refused
    to the other with 403; an identifier system nobody was assigned stays open to both."""
    owned = patient()
    pid = str(owned["id"])
    yield one("access-owner-patient", "/fhir/Patient", owned, {201})
    yield one(
        "access-other-patient", "/fhir/Patient", {**owned, "active": False}, {403}, auth=OTHER
    )
    for rtype in [
        "Encounter",
        "Observation",
        "Condition",
        "Procedure",
        "EpisodeOfCare",
        "Flag",
        "ServiceRequest",
        "AllergyIntolerance",
        "CarePlan",
        "Appointment",
    ]:
        yield one(f"access-owner-{rtype}", f"/fhir/{rtype}", of_patient(rtype, pid), {201})
        yield one(
            f"access-other-{rtype}", f"/fhir/{rtype}", of_patient(rtype, pid), {403}, auth=OTHER
        )
    reference_data = {
        "Location": location(),
        "Organization": {"resourceType": "Organization", "id": uid("o"), "name": "CH A"},
        "Practitioner": {"resourceType": "Practitioner", "id": uid("pr"), "active": True},
        "HealthcareService": {"resourceType": "HealthcareService", "id": uid("hs")},
    }
    for rtype, resource in reference_data.items():
        yield one(f"access-owner-{rtype}", f"/fhir/{rtype}", resource, {201})
        changed = {
            **resource,
            **({"status": "inactive"} if rtype == "Location" else {"active": False}),
        }
        yield one(f"access-other-{rtype}", f"/fhir/{rtype}", changed, {403}, auth=OTHER)
    ward = reference_data["Location"]
    yield one(
        "access-other-put-location",
        f"/fhir/Location/{ward['id']}",
        {**ward, "name": "Closed"},
        {403},
        method="PUT",
        auth=OTHER,
    )
    theirs = location()
    yield one("access-other-own-location", "/fhir/Location", theirs, {201}, auth=OTHER)
    yield one("access-owner-their-location", "/fhir/Location", {**theirs, "name": "x"}, {403})
    yield one(
        "access-other-batch",
        "/fhir",
        bundle("batch", entry(of_patient("Encounter", pid)), entry(location())),
        {200},
        auth=OTHER,
        entries=(403, 201),
    )
    yield one(
        "access-other-transaction",
        "/fhir",
        bundle("transaction", entry(location()), entry(of_patient("Observation", pid))),
        {403},
        auth=OTHER,
    )
    yield one(
        "access-other-import",
        "/fhir/$import",
        ndjson(location(), {**ward, "name": "Closed"}),
        {200},
        content_type=NDJSON,
        auth=OTHER,
        entries=(201, 403),
    )
    merged = patient(link=[{"other": {"reference": f"Patient/{pid}"}, "type": "replaced-by"}])
    yield one("access-other-merge-into", "/fhir/Patient", merged, {403}, auth=OTHER)
    # Writing a Patient does not claim its identifier systems: an unassigned one stays open.
    system = f"urn:oid:1.2.250.1.{uuid.uuid4().int % 10**9}"
    yield one(
        "access-owner-unassigned-system",
        "/fhir/Patient",
        patient(identifier=[{"system": system, "value": "1"}]),
        {201},
    )
    yield one(
        "access-other-unassigned-system",
        "/fhir/Patient",
        patient(identifier=[{"system": system, "value": "2"}]),
        {201},
        auth=OTHER,
    )


def valid_cases() -> Iterator[Case]:
    """The documented 2xx: created, then the same again answered as a duplicate."""
    enc = encounter()
    yield one("valid-encounter", "/fhir/Encounter", enc, {201})
    yield one("valid-encounter-again", "/fhir/Encounter", enc, {200})
    loc = location()
    yield one("valid-location", "/fhir/Location", loc, {201})
    tx = bundle("transaction", entry(patient()), entry(encounter()))
    yield one("valid-transaction", "/fhir", tx, {200})
    yield one("valid-transaction-again", "/fhir", tx, {200}, entries=(200, 200))
    lines = ndjson(location(), location(), location())
    yield one(
        "valid-import", "/fhir/$import", lines, {200}, content_type=NDJSON, entries=(201,) * 3
    )
    yield one(
        "valid-import-again", "/fhir/$import", lines, {200}, content_type=NDJSON, entries=(200,) * 3
    )


def version_cases() -> Iterator[Case]:
    """One content per integrator version: the same again is a duplicate, other content under
    it is a 409 wherever it comes (alone, in a batch, a transaction or an NDJSON line)."""
    lid = uid("l")
    v1 = location(id=lid, meta={"versionId": "1"}, name="a")
    changed = {**v1, "name": "b"}
    yield one("version-first", "/fhir/Location", v1, {201})
    yield one("version-same-again", "/fhir/Location", v1, {200})
    stamped = {**v1, "meta": {"versionId": "1", "lastUpdated": "2026-01-12T08:00:00+00:00"}}
    yield one("version-same-restamped", "/fhir/Location", stamped, {200})
    yield one("version-other-content", "/fhir/Location", changed, {409})
    yield one(
        "version-other-content-put",
        f"/fhir/Location/{lid}",
        changed,
        {409},
        method="PUT",
    )
    yield one(
        "version-other-content-batch",
        "/fhir",
        bundle("batch", entry(location()), entry(changed)),
        {200},
        entries=(201, 409),
    )
    yield one(
        "version-other-content-transaction",
        "/fhir",
        bundle("transaction", entry(location()), entry(changed)),
        {409},
    )
    yield one(
        "version-other-content-import",
        "/fhir/$import",
        ndjson(location(), changed, v1),
        {200},
        content_type=NDJSON,
        entries=(201, 409, 400),
    )
    yield one("version-next", "/fhir/Location", {**changed, "meta": {"versionId": "2"}}, {201})


CASES: list[Case] = [
    *control_character_cases(),
    *odd_json_cases(),
    *invalid_json_cases(),
    *repeated_name_cases(),
    *depth_cases(),
    *invariant_cases(),
    *entry_field_cases(),
    *identity_cases(),
    *envelope_http_cases(),
    *access_cases(),
    *valid_cases(),
    *version_cases(),
]
HYPOTHESIS_EXAMPLES = 60  # per generated test below (three of them)


@dataclass
class Corpus:
    gw: Gateway
    token: str
    other: str
    counter: TopicCounter
    rss_start: int
    client: httpx.Client


@pytest.fixture(scope="module")
def corpus(broker: str, pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    prefix = f"h{uuid.uuid4().hex[:8]}."
    engine = make_engine(pg_url)
    token = create_token(engine, uid("hostile"))
    other = create_token(engine, uid("other"))
    engine.dispose()
    env = gateway_env(
        broker,
        pg_url,
        prefix,
        PARCOURS_INGEST_MAX_BODY_BYTES=str(MAX_BODY),
        PARCOURS_INGEST_MAX_RESOURCE_BYTES=str(MAX_RESOURCE),
        PARCOURS_INGEST_RATE_PER_S="0",
    )
    log = tmp_path_factory.mktemp("hostile") / "gateway.log"
    topics = Topics.from_settings(Settings(topic_prefix=prefix))
    with run_gateway(env, log) as gw, httpx.Client(base_url=gw.url, timeout=60) as client:
        # Warm up validation and SQL before the memory baseline.
        client.post(
            "/fhir/Encounter",
            content=body_of(encounter()),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        )
        # Patient data goes to the raw topic, reference data (Location…) to the directory.
        counter = TopicCounter(broker, topics.raw, topics.directory)
        try:
            yield Corpus(gw, token, other, counter, rss_bytes(gw.proc.pid), client)
        finally:
            counter.close()


def send(corpus: Corpus, case: Case) -> httpx.Response:
    headers = dict(case.headers)
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    if case.auth == "ok":
        headers["Authorization"] = f"Bearer {corpus.token}"
    elif case.auth == OTHER:
        headers["Authorization"] = f"Bearer {corpus.other}"
    elif case.auth is not None:
        headers["Authorization"] = case.auth
    return corpus.client.request(case.method, case.path, content=case.body, headers=headers)


def judge(corpus: Corpus, resp: httpx.Response) -> int:
    """Check the answer's shape and the topic delta; return the number of records published."""
    assert resp.status_code < 500, (resp.status_code, resp.text[:1000])
    if resp.status_code >= 400:
        assert_outcome(resp)
    published = corpus.counter.sync()
    assert len(published) == accepted_in(resp), (resp.status_code, resp.text[:1000])
    for record in published:
        assert b"\\u0000" not in record.value and b"\x00" not in record.value
    return len(published)


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 400, len(CASES)
    assert len(CASES) + 3 * HYPOTHESIS_EXAMPLES >= 400, len(CASES)
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(corpus: Corpus, case: Case) -> None:
    resp = send(corpus, case)
    assert resp.status_code in case.expect, (resp.status_code, resp.text[:1500])
    judge(corpus, resp)
    if case.entries is not None:
        assert entry_statuses(resp) == case.entries, resp.text[:1500]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
TEXT = st.text(alphabet=st.characters(max_codepoint=0x2FF), min_size=1, max_size=30)
FIELDS = ["name", "description", "alias", "status", "id", "mode"]


@settings(
    max_examples=HYPOTHESIS_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    value=JSON,
    path=st.sampled_from(["/fhir", "/fhir/Patient", "/fhir/Location", "/fhir/$import"]),
)
def test_random_json_is_refused_or_accepted_exactly(corpus: Corpus, value: Any, path: str) -> None:
    ctype = NDJSON if path.endswith("$import") else "application/fhir+json"
    case = Case("random", path, json.dumps(value).encode(), frozenset(), content_type=ctype)
    judge(corpus, send(corpus, case))


def test_a_name_given_twice_is_refused_naming_its_element(corpus: Corpus) -> None:
    single = twice(patient(name=[{"family": "Dupont"}]), "name", "x")
    inner = body_of(patient(name=[{"family": "Dupont"}])).replace(
        b'"family": "Dupont"', b'"family": "Dupont", "family": "Durand"'
    )
    listed = body_of(bundle("batch", entry(location()), {"resource": {}, "request": {}}))
    in_bundle = listed.replace(b'{"resource": {}', b'{"resource": ' + inner, 1)
    for case, where in [
        (one("twice-name", "/fhir/Patient", single, {400}), "Patient.name"),
        (one("twice-family", "/fhir/Patient", inner, {400}), "Patient.name[0].family"),
        (one("twice-entry", "/fhir", in_bundle, {400}), "Bundle.entry[1].resource.name[0].family"),
    ]:
        resp = send(corpus, case)
        assert resp.status_code == 400, resp.text[:1000]
        judge(corpus, resp)
        (issue,) = resp.json()["issue"]
        assert issue["expression"] == [where]
        assert "deux fois" in issue["diagnostics"]


@settings(
    max_examples=HYPOTHESIS_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=TEXT, field=st.sampled_from(FIELDS))
def test_random_text_in_a_location(corpus: Corpus, text: str, field: str) -> None:
    resource = location()
    resource[field] = [text] if field == "alias" else text
    resp = send(corpus, one("random-text", "/fhir/Location", resource, set()))
    judge(corpus, resp)
    if any(ch in text for ch in FORBIDDEN):
        assert resp.status_code == 422
        assert resp.json()["issue"][0]["expression"][0].startswith(f"Location.{field}")


@settings(
    max_examples=HYPOTHESIS_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    start=st.datetimes(timezones=st.just(__import__("datetime").UTC)),
    end=st.datetimes(timezones=st.just(__import__("datetime").UTC)),
    btype=st.sampled_from(["batch", "transaction"]),
)
def test_random_periods_follow_per_1_within_the_years_of_care(
    corpus: Corpus, start: Any, end: Any, btype: str
) -> None:
    period = {
        "start": start.isoformat(timespec="seconds"),
        "end": end.isoformat(timespec="seconds"),
    }
    resp = send(
        corpus, one("period", "/fhir", bundle(btype, entry(encounter(period=period))), set())
    )
    published = judge(corpus, resp)
    ok = start.replace(microsecond=0) <= end.replace(microsecond=0) and all(
        FIRST_YEAR <= d.year <= LAST_YEAR for d in (start, end)
    )
    assert published == (1 if ok else 0), resp.text[:500]


def test_after_the_corpus_the_gateway_is_healthy_and_small(corpus: Corpus) -> None:
    assert httpx.get(f"{corpus.gw.url}/healthz", timeout=30).status_code == 200
    grown = rss_bytes(corpus.gw.proc.pid) - corpus.rss_start
    assert grown < 100 * 1024 * 1024, f"gateway RSS grew by {grown / 1e6:.0f} MB"
    assert corpus.gw.proc.poll() is None
    log = Path(corpus.gw.log).read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
