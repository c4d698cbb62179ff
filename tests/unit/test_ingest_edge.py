"""Pure edge rules of the gateway: characters, depth, invariants, entry fields, caps, limits."""

from __future__ import annotations

import json
import os
import select
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import auth
from ingest.auth import RateLimiter, parse_duration
from ingest.entries import Item, parse_ndjson, prepare_bundle, prepare_resource
from ingest.invariants import invariant_issues, period_issues
from ingest.limits import depth_issue, measure, text_issues, too_deep
from ingest.outcome import IngestError, Issue, Rejection, escape_controls, operation_outcome
from ingest.ownership import claims_of
from ingest.service import cap_rejections, payload_of, rejection_record
from ingest.validate import validate_resource

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def encounter(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "in-progress",
        "class": {"system": ACT, "code": "IMP"},
        "subject": {"reference": "Patient/p1"},
    }
    base.update(over)
    return base


def expressions(issues: list[Issue]) -> list[str]:
    return [e for i in issues for e in i.expression]


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        ({"resourceType": "Location", "name": "Ward\x00A"}, "Location.name"),
        (encounter(subject={"reference": "Patient/a\x00b"}), "Encounter.subject.reference"),
        (
            {"resourceType": "Patient", "name": [{"given": ["a", "b\x1f"]}]},
            "Patient.name[0].given[1]",
        ),
        ({"resourceType": "Location", "alias": ["\x08"]}, "Location.alias[0]"),
    ],
)
def test_control_characters_are_refused_naming_the_element(
    resource: dict[str, Any], expression: str
) -> None:
    status, reason, issues = validate_resource(resource)
    assert (status, reason) == (422, "invalid-character")
    assert expressions(issues) == [expression]
    assert "U+00" in issues[0].diagnostics


def test_tab_cr_lf_are_allowed() -> None:
    assert validate_resource({"resourceType": "Location", "name": "a\tb\r\nc"}) == (0, "", [])


def test_text_issues_are_capped_with_a_count() -> None:
    issues = text_issues({"alias": ["\x00"] * 250}, "Location")
    assert len(issues) == 101
    assert "150 more" in issues[-1].diagnostics


def test_depth_is_measured_without_recursion() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    assert too_deep(deep)
    assert not too_deep({"a": [{"b": 1}]})
    status, reason, issues = validate_resource({"resourceType": "Patient", "extension": deep})
    assert (status, reason) == (400, "too-deep")
    assert issues == [depth_issue("Patient")]


def test_a_resource_with_too_many_values_is_413_before_validation() -> None:
    status, reason, issues = validate_resource({"resourceType": "Patient", "name": [5] * 200_000})
    assert (status, reason) == (413, "too-large")
    assert "200002 JSON values" in issues[0].diagnostics
    assert measure({"a": [1, 2, {"b": 3}]}) == (False, 5)


@pytest.mark.parametrize(
    ("start", "end", "refused"),
    [
        ("2026-01-02", "2026-01-01", True),
        ("2026-01-01", "2026-01-01", False),
        ("2026-02", "2026-01-31", True),
        ("2026", "2026-03-01", False),
        ("2026-01-01T10:00:00Z", "2026-01-01T09:59:59Z", True),
        ("2026-01-01T10:00:00+02:00", "2026-01-01T09:00:00Z", False),
        ("2026-01-03", "2026-01-01T23:00:00+01:00", True),
        ("2026-01-02", "2026-01-01T23:00:00+01:00", False),
        ("not a date", "2026-01-01", False),
    ],
)
def test_per_1(start: str, end: str, refused: bool) -> None:
    issues = period_issues({"period": {"start": start, "end": end}}, "Encounter")
    assert bool(issues) is refused
    if refused:
        assert expressions(issues) == ["Encounter.period.start"]


@pytest.mark.parametrize(
    ("period", "refused"),
    [
        ({"start": "0001-01-01T00:00:00Z"}, ["Encounter.period.start"]),
        ({"start": "2026-01-01", "end": "9999-12-31"}, ["Encounter.period.end"]),
        (
            {"start": "1899", "end": "2100-01-01"},
            ["Encounter.period.start", "Encounter.period.end"],
        ),
        ({"start": "1900-01-01", "end": "2099-12-31T23:59:59+01:00"}, []),
    ],
)
def test_care_times_outside_1900_2099_are_refused(
    period: dict[str, str], refused: list[str]
) -> None:
    resource = {"resourceType": "Encounter", "period": period}
    assert sorted(expressions(invariant_issues(resource, "Encounter"))) == sorted(refused)


@pytest.mark.parametrize(
    ("resource", "refused"),
    [
        # A leap second: FHIR's pattern lets second 60 through, no clock of the worker reads it.
        (
            {"resourceType": "Encounter", "period": {"start": "2016-12-31T23:59:60Z"}},
            ["Encounter.period.start"],
        ),
        (
            {"resourceType": "ServiceRequest", "authoredOn": "2016-12-31T23:59:60+01:00"},
            ["ServiceRequest.authoredOn"],
        ),
        # The other care times the worker reads are bounded like a Period.
        (
            {"resourceType": "ServiceRequest", "authoredOn": "1850-01-01"},
            ["ServiceRequest.authoredOn"],
        ),
        ({"resourceType": "Appointment", "created": "2100-01-01"}, ["Appointment.created"]),
        (
            {"resourceType": "Patient", "deceasedDateTime": "0001-01-01"},
            ["Patient.deceasedDateTime"],
        ),
        (
            {"resourceType": "Encounter", "meta": {"lastUpdated": "1850-01-01T00:00:00Z"}},
            ["Encounter.meta.lastUpdated"],
        ),
        # A number where a time is due (the R4B models read it as seconds since 1970).
        ({"resourceType": "Encounter", "period": {"start": 20260301}}, ["Encounter.period.start"]),
        (
            {"resourceType": "ServiceRequest", "authoredOn": 1700000000},
            ["ServiceRequest.authoredOn"],
        ),
        # In a type whose care times the worker does not read, `start` may be an integer.
        ({"resourceType": "MolecularSequence", "variant": [{"start": 5, "end": 9}]}, []),
        # A birth date is no care time; a second 59 is a second.
        ({"resourceType": "Patient", "birthDate": "1850-01-01"}, []),
        ({"resourceType": "Encounter", "period": {"start": "2016-12-31T23:59:59Z"}}, []),
    ],
)
def test_care_times_the_worker_reads_are_instants_of_the_years_of_care(
    resource: dict[str, Any], refused: list[str]
) -> None:
    assert expressions(invariant_issues(resource, resource["resourceType"])) == refused


def test_dom_3_ref_1_and_reference_ids() -> None:
    loc = {"resourceType": "Location", "id": "l1"}
    assert expressions(invariant_issues(encounter(contained=[loc]), "Encounter")) == [
        "Encounter.contained[0]"
    ]
    referenced = encounter(contained=[loc], location=[{"location": {"reference": "#l1"}}])
    assert invariant_issues(referenced, "Encounter") == []
    refers_back = encounter(contained=[{**loc, "partOf": {"reference": "#"}}])
    assert invariant_issues(refers_back, "Encounter") == []
    dangling = encounter(location=[{"location": {"reference": "#x"}}])
    assert expressions(invariant_issues(dangling, "Encounter")) == [
        "Encounter.location[0].location.reference"
    ]
    bad_id = encounter(subject={"reference": "Patient/a b"})
    assert expressions(invariant_issues(bad_id, "Encounter")) == ["Encounter.subject.reference"]
    versioned = encounter(subject={"reference": "Patient/p1/_history/2"})
    assert invariant_issues(versioned, "Encounter") == []
    absolute = encounter(subject={"reference": "http://x.org/fhir/Patient/a b"})
    assert invariant_issues(absolute, "Encounter") == []


def test_reference_type_must_agree_with_the_type_the_reference_names() -> None:
    """R4 Reference.type: with a literal reference, "both SHALL be consistent"."""
    wrong = encounter(subject={"reference": "Patient/p1", "type": "Group"})
    status, reason, issues = validate_resource(wrong)
    assert (status, reason) == (422, "invariant")
    assert expressions(issues) == ["Encounter.subject.type"]
    assert "(Patient)" in issues[0].diagnostics
    core_url = "http://hl7.org/fhir/StructureDefinition/Group"
    absolute = encounter(subject={"reference": "http://x.org/fhir/Patient/p1", "type": core_url})
    assert expressions(invariant_issues(absolute, "Encounter")) == ["Encounter.subject.type"]
    for agreeing in (
        {"reference": "Patient/p1", "type": "Patient"},
        {
            "reference": "Patient/p1/_history/3",
            "type": "http://hl7.org/fhir/StructureDefinition/Patient",
        },
        {"reference": "http://x.org/fhir/Patient/p1", "type": "Patient"},
        # Nothing to compare: an identifier only, a logical model's URI, an abstract type.
        {"identifier": {"value": "1"}, "type": "Patient"},
        {"reference": "Patient/p1", "type": "http://example.org/LogicalModel"},
        {"reference": "Patient/p1", "type": "Resource"},
        # A conditional reference names its type before the `?`, whatever its criteria hold.
        {"reference": "Practitioner?identifier=http://x.org/Patient/1", "type": "Practitioner"},
    ):
        assert invariant_issues(encounter(subject=agreeing), "Encounter") == [], agreeing


def test_contained_resources_refer_to_each_other_in_their_containers_scope() -> None:
    """FHIR's `#id` inside a contained resource names another contained resource of the same
    container (the spec's CarePlan, Claim and List examples do it): no ref-1 there."""
    org = {"resourceType": "Organization", "id": "o1", "name": "CHU"}
    ward = {"resourceType": "Location", "id": "l1", "managingOrganization": {"reference": "#o1"}}
    stay = encounter(contained=[ward, org], location=[{"location": {"reference": "#l1"}}])
    assert validate_resource(stay) == (0, "", [])
    dangling = {**ward, "managingOrganization": {"reference": "#nowhere"}}
    status, reason, issues = validate_resource(
        encounter(contained=[dangling], location=[{"location": {"reference": "#l1"}}])
    )
    assert (status, reason) == (422, "invariant")
    assert expressions(issues) == ["Encounter.contained[0].managingOrganization.reference"]


def test_dom_3_counts_canonical_and_uri_references_to_a_contained_resource() -> None:
    """dom-3 counts `#id` in a canonical or uri (PlanDefinition.action.definitionCanonical,
    Questionnaire.item.answerValueSet), as the spec's PlanDefinition examples send them."""
    activity = {"resourceType": "ActivityDefinition", "id": "a1", "status": "active"}
    plan = {
        "resourceType": "PlanDefinition",
        "status": "active",
        "contained": [activity],
        "action": [{"title": "x", "definitionCanonical": "#a1"}],
    }
    assert validate_resource(plan) == (0, "", [])
    answers = {"resourceType": "ValueSet", "id": "vs1", "status": "active"}
    form = {
        "resourceType": "Questionnaire",
        "status": "active",
        "contained": [answers],
        "item": [{"linkId": "1", "type": "choice", "answerValueSet": "#vs1"}],
    }
    assert validate_resource(form) == (0, "", [])
    unused = {**plan, "action": [{"title": "x"}]}
    status, _, issues = validate_resource(unused)
    assert status == 422 and expressions(issues) == ["PlanDefinition.contained[0]"]


def test_a_put_without_an_id_is_told_so() -> None:
    body = {k: v for k, v in encounter().items() if k != "id"}
    item = prepare_resource(body, "Encounter", url_id="e9")
    assert (item.status, item.reason) == (400, "id-mismatch")
    (issue,) = item.issues
    assert issue.expression == ("Encounter.id",)
    assert issue.diagnostics == "The resource has no id; a PUT needs the URL id 'e9'"


def test_an_r4_type_that_r4b_withdrew_is_not_called_unknown() -> None:
    status, reason, issues = validate_resource({"resourceType": "MedicinalProduct", "id": "m"})
    assert (status, reason) == (400, "unknown-type")
    assert "R4B withdrew" in issues[0].diagnostics
    _, _, issues = validate_resource({"resourceType": "Frobnicator"})
    assert issues[0].diagnostics == "'Frobnicator' is not an R4 resource type"


def test_codes_are_checked_in_nested_resources() -> None:
    done = encounter(status="done")
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": done}]}
    status, _, issues = validate_resource(bundle, "Bundle")
    assert status == 422
    assert expressions(issues) == ["Bundle.entry[0].resource.status"]
    patient = {
        "resourceType": "Patient",
        "contained": [{**done, "id": "c1", "subject": {"reference": "#"}}],
    }
    assert expressions(validate_resource(patient)[2]) == ["Patient.contained[0].status"]


def test_odd_resource_types_never_leak_into_item_fields() -> None:
    for body in ({"resourceType": 123}, ["Patient"], {"x": 1}, {"resourceType": "P\x00"}):
        item = prepare_resource(body, "Patient")
        assert item.status == 400
        assert item.resource_type == "Patient"
        assert item.resource_id is None
    item = prepare_resource({"resourceType": "Patient", "id": "a\x00"}, None)
    assert item.resource_id is None


def batch(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "batch", "entry": list(entries)}


def post(resource: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "POST", "url": "Location"}, **extra}


def test_entry_fields_are_validated() -> None:
    loc = {"resourceType": "Location", "name": "x"}
    items = prepare_bundle(
        batch(
            post({**loc, "id": "a"}, fullUrl=5),
            post({**loc, "id": "b"}, fullUrl="a b"),
            post({**loc, "id": "c"}, search={"mode": 5}),
            post({**loc, "id": "d"}, fullUrl="urn:uuid:9f1c2d1e-93a4-4f8e-9b0e-7d1f0c1a5e11"),
        )
    ).items
    assert [expressions(i.issues) for i in items[:2]] == [
        ["Bundle.entry[0].fullUrl"],
        ["Bundle.entry[1].fullUrl"],
    ]
    assert items[2].issues and items[3].valid


def test_unique_fullurl_and_one_content_per_version() -> None:
    url = "urn:uuid:9f1c2d1e-93a4-4f8e-9b0e-7d1f0c1a5e11"
    loc = {"resourceType": "Location", "name": "x"}
    items = prepare_bundle(batch(post(loc, fullUrl=url), post(loc, fullUrl=url))).items
    assert items[0].valid and items[1].reason == "duplicate-fullurl"
    v1 = {"resourceType": "Location", "id": "l", "meta": {"versionId": "1"}}
    items = prepare_bundle(batch(post({**v1, "name": "a"}), post({**v1, "name": "b"}))).items
    assert items[0].valid and items[1].reason == "conflicting-entries"
    same = prepare_bundle(batch(post({**v1, "name": "a"}), post({**v1, "name": "a"}))).items
    assert all(i.valid for i in same)


def test_a_resource_above_the_limit_is_413_naming_it() -> None:
    big = {"resourceType": "Location", "description": "x" * 5000}
    item = prepare_resource(big, "Location", max_resource_bytes=1000)
    assert item.status == 413 and "1000 bytes" in item.issues[0].diagnostics
    items = parse_ndjson(b'{"resourceType":"Location"}\n' + json.dumps(big).encode(), 1000)
    assert items[0].valid and items[1].status == 413
    bundle = prepare_bundle(batch(post(big), post({"resourceType": "Location"})), 1000)
    assert [i.status for i in bundle.items] == [413, 0]


def test_a_bundle_entry_object_is_not_an_empty_bundle() -> None:
    with pytest.raises(Rejection) as caught:
        prepare_bundle({"resourceType": "Bundle", "type": "batch", "entry": {}})
    assert caught.value.status == 400


def test_operation_outcome_and_rejection_rows_are_capped() -> None:
    issues = [Issue("invalid", f"n{n}", (f"X.a[{n}]",)) for n in range(150)]
    outcome = operation_outcome(issues, "invalid-resource")
    assert len(outcome["issue"]) == 101
    assert "50 more" in outcome["issue"][-1]["diagnostics"]
    rej = Rejection(422, "invalid-resource", issues)
    rows = cap_rejections([rejection_record("s", datetime.now(UTC), rej)] * 130)
    assert len(rows) == 101 and rows[-1].reason == "more-rejections"


def test_text_sent_back_or_stored_holds_no_control_character() -> None:
    rej = Rejection(422, "x", [Issue("invalid", "bad \x00 here", ("A.b\x01",))])
    fhir = rej.outcome()["issue"][0]
    assert fhir["diagnostics"] == "bad \\u0000 here" and fhir["expression"] == ["A.b\\u0001"]
    assert "\x00" not in rej.summary
    assert escape_controls("a\x1fb") == "a\\u001fb"
    assert payload_of(Item(0, None, raw={"a": "\x00"})) == b'{"a":"\\u0000"}'


def test_rate_limiter_refills_per_integrator(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.retry_after("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.retry_after("a") == pytest.approx(0.5)
    assert limiter.retry_after("b") == 0.0
    now[0] += 0.5
    assert limiter.retry_after("a") == 0.0
    assert RateLimiter(rate=0, burst=1).retry_after("a") == 0.0


def test_durations() -> None:
    assert parse_duration("90d") == timedelta(days=90)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("3600") == timedelta(hours=1)
    for bad in ("soon", "-1d", "0", "5y"):
        with pytest.raises(IngestError):
            parse_duration(bad)


def test_claims_of_a_patient_and_of_its_resources() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"system": "urn:oid:1.2.3", "value": "9"}, {"value": "no system"}],
    }
    assert list(claims_of(patient, "Patient")) == [
        (("patient", "p1"), "Patient.id"),
        (("system", "urn:oid:1.2.3"), "Patient.identifier[0].system"),
    ]
    # A stay belongs to its patient's integrator, and by its own id to its first writer (its
    # SQL rows are keyed by that id).
    assert list(claims_of(encounter(), "Bundle.entry[1].resource")) == [
        (("patient", "p1"), "Bundle.entry[1].resource"),
        (("resource", f"Encounter/{encounter()['id']}"), "Bundle.entry[1].resource.id"),
    ]
    observation = {"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p1"}}
    assert list(claims_of(observation, "Observation")) == [(("patient", "p1"), "Observation")]
    merged = {
        "resourceType": "Patient",
        "id": "p2",
        "link": [{"other": {"reference": "Patient/p1"}, "type": "replaced-by"}],
    }
    assert list(claims_of(merged, "Patient")) == [
        (("patient", "p2"), "Patient.id"),
        (("patient", "p1"), "Patient.link[0].other"),
    ]
    # A resource of no patient is claimed by its Type/id; without an id there is nothing to own.
    assert list(claims_of({"resourceType": "Location", "id": "l"}, "Location")) == [
        (("resource", "Location/l"), "Location.id")
    ]
    assert list(claims_of({"resourceType": "Location"}, "Location")) == []


class FlakyStore:
    """The ingest log, failing its writes while `down`."""

    def __init__(self) -> None:
        self.down = True
        self.rows: dict[tuple[str, str, str], str | None] = {}
        self.locked: list[list[tuple[str, str, str]]] = []

    def seen(self, keys: Any, _conn: Any = None) -> dict[tuple[str, str, str], str | None]:
        return {k: self.rows[k] for k in keys if k in self.rows}

    @contextmanager
    def versions_locked(self, keys: Any) -> Iterator[None]:
        self.locked.append(list(keys))
        yield None

    def record(
        self, _source: str, _at: Any, published: Any, _dup: int, _rej: Any, conn: Any = None
    ) -> None:
        if self.down:
            raise ConnectionError("database gone")
        self.rows.update({p.key: p.digest for p in published})

    def record_rejections(self, _rejected: Any) -> None:
        if self.down:
            raise ConnectionError("database gone")


class AckingPublisher:
    """A broker that acknowledges everything."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def check(self) -> None:
        pass

    def publish(self, messages: Any) -> list[Any]:
        from ingest.publish import Ack

        self.sent += [m.value for m in messages]
        return [Ack(0, n) for n, _ in enumerate(messages)]

    def dead_letter(self, *_args: Any) -> None:
        pass


def test_after_the_broker_acknowledged_the_answer_is_2xx_and_a_retry_publishes_nothing() -> None:
    from ingest.metrics import IngestMetrics
    from ingest.service import IngestService

    publisher = AckingPublisher()
    service = IngestService(None, publisher, IngestMetrics(), ownership=False)  # type: ignore[arg-type]
    store = FlakyStore()
    service.store = store  # type: ignore[assignment]
    item = prepare_resource(encounter(id="e-pending"), "Encounter")
    now = datetime.now(UTC)
    assert service.ingest("lab", now, [item], atomic=True).entries[0].status == 201
    again = prepare_resource(encounter(id="e-pending"), "Encounter")
    assert service.ingest("lab", now, [again], atomic=True).entries[0].status == 200
    assert len(publisher.sent) == 1
    store.down = False
    third = prepare_resource(encounter(id="e-pending"), "Encounter")
    assert service.ingest("lab", now, [third], atomic=True).entries[0].status == 200
    assert item.dedupe_key in store.rows and not service._pending_keys


def versioned_location(version: str = "1", **over: Any) -> dict[str, Any]:
    return {"resourceType": "Location", "id": "l-v", "meta": {"versionId": version}, **over}


def test_what_a_version_holds_leaves_out_its_name_and_date() -> None:
    from ingest.entries import content_digest

    base = versioned_location(name="A")
    same = [
        {**base, "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"}},
        {**base, "meta": {"versionId": "7"}},
        {k: v for k, v in base.items() if k != "meta"},
        {**base, "id": "other"},
    ]
    assert {content_digest(r) for r in same} == {content_digest(base)}
    other = [
        {**base, "name": "B"},
        {**base, "meta": {"versionId": "1", "tag": [{"code": "x"}]}},
    ]
    assert content_digest(base) not in {content_digest(r) for r in other}
    # Only the integrator's versions carry a digest: an h: version is named by its content.
    assert prepare_resource(base, "Location").digest == content_digest(base)
    assert prepare_resource({"resourceType": "Location", "name": "A"}, "Location").digest == ""


def test_an_ndjson_file_gives_one_content_per_version() -> None:
    lines = [
        versioned_location(name="A"),
        versioned_location(name="B"),
        versioned_location(name="A"),
    ]
    items = parse_ndjson(b"\n".join(json.dumps(r).encode() for r in lines))
    assert [i.status for i in items] == [0, 400, 0]
    assert items[1].reason == "conflicting-entries"
    assert [e for i in items[1].issues for e in i.expression] == ["Location.meta.versionId"]
    # meta.lastUpdated stamped again at each send is the same version.
    stamped = versioned_location(
        name="A", meta={"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"}
    )
    items = parse_ndjson(b"\n".join(json.dumps(r).encode() for r in (lines[0], stamped)))
    assert all(i.valid for i in items)


def conflict_service() -> tuple[Any, FlakyStore, AckingPublisher]:
    from ingest.metrics import IngestMetrics
    from ingest.service import IngestService

    publisher = AckingPublisher()
    service = IngestService(None, publisher, IngestMetrics(), ownership=False)  # type: ignore[arg-type]
    store = FlakyStore()
    store.down = False
    service.store = store  # type: ignore[assignment]
    return service, store, publisher


def test_a_version_received_with_other_content_is_409_and_not_published() -> None:
    service, store, publisher = conflict_service()
    now = datetime.now(UTC)
    first = prepare_resource(versioned_location(name="A"), "Location")
    assert service.ingest("lab", now, [first], atomic=True).entries[0].status == 201
    assert store.locked == [[first.dedupe_key]]
    again = prepare_resource(versioned_location(name="A"), "Location")
    assert service.ingest("lab", now, [again], atomic=True).entries[0].status == 200
    changed = prepare_resource(versioned_location(name="B"), "Location")
    with pytest.raises(Rejection) as caught:
        service.ingest("lab", now, [changed], atomic=True)
    assert caught.value.status == 409 and caught.value.reason == "version-conflict"
    assert [e for i in caught.value.issues for e in i.expression] == ["Location.meta.versionId"]
    # Not atomic (batch, $import): that entry alone.
    fresh = prepare_resource({"resourceType": "Location", "id": "l-new"}, "Location")
    changed = prepare_resource(versioned_location(name="B"), "Location")
    result = service.ingest("lab", now, [fresh, changed], atomic=False)
    assert [e.status for e in result.entries] == [201, 409]
    assert len(publisher.sent) == 2
    # A version stored without digest (before digests were kept) stays a duplicate.
    store.rows[first.dedupe_key] = None
    changed = prepare_resource(versioned_location(name="B"), "Location")
    assert service.ingest("lab", now, [changed], atomic=True).entries[0].status == 200
    assert len(publisher.sent) == 2


def test_a_version_acknowledged_but_not_yet_stored_keeps_its_digest() -> None:
    service, store, _ = conflict_service()
    store.down = True
    now = datetime.now(UTC)
    first = prepare_resource(versioned_location(name="A"), "Location")
    assert service.ingest("lab", now, [first], atomic=True).entries[0].status == 201
    changed = prepare_resource(versioned_location(name="B"), "Location")
    with pytest.raises(Rejection) as caught:
        service.ingest("lab", now, [changed], atomic=True)
    assert caught.value.status == 409


class LateStore(FlakyStore):
    """An ingest log where another request records the version between the first look and
    the lock: the look under the lock must see it."""

    def __init__(self, late: dict[tuple[str, str, str], str]) -> None:
        super().__init__()
        self.down = False
        self.late = late

    @contextmanager
    def versions_locked(self, keys: Any) -> Iterator[None]:
        self.rows.update(self.late)
        yield None


def test_a_version_published_meanwhile_is_seen_under_the_lock() -> None:
    from ingest.entries import content_digest

    service, _, publisher = conflict_service()
    now = datetime.now(UTC)
    same = prepare_resource(versioned_location(name="A"), "Location")
    other = content_digest(versioned_location(name="B"))
    service.store = LateStore({same.dedupe_key: same.digest})
    assert service.ingest("lab", now, [same], atomic=True).entries[0].status == 200
    service.store = LateStore({same.dedupe_key: other})
    with pytest.raises(Rejection) as caught:
        service.ingest(
            "lab", now, [prepare_resource(versioned_location(name="A"), "Location")], True
        )
    assert caught.value.status == 409
    service.store = LateStore({same.dedupe_key: other})
    fresh = prepare_resource({"resourceType": "Location", "id": "l-new"}, "Location")
    late = prepare_resource(versioned_location(name="A"), "Location")
    result = service.ingest("lab", now, [fresh, late], atomic=False)
    assert [e.status for e in result.entries] == [201, 409]
    assert publisher.sent == [fresh.value]


def test_process_locks_are_taken_whole_or_not_at_all() -> None:
    from ingest.dedupe import KeyLocks, VersionBusy

    locks = KeyLocks()
    with locks.hold([1, 2], wait_s=0):
        with locks.hold([3], wait_s=0):
            pass
        with pytest.raises(VersionBusy), locks.hold([3, 2], wait_s=0):
            pass
    with locks.hold([3, 2], wait_s=0):
        pass


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
    | st.sampled_from(["Patient", "Encounter", "Bundle", "urn:uuid:a", "#x", "Patient/a b"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "resourceType",
                    "id",
                    "entry",
                    "resource",
                    "fullUrl",
                    "request",
                    "method",
                    "url",
                    "type",
                    "subject",
                    "reference",
                    "contained",
                    "period",
                    "start",
                    "end",
                    "status",
                    "meta",
                    "versionId",
                    "name",
                ]
            )
            | st.text(max_size=5),
            children,
            max_size=5,
        )
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(value=JSON_VALUES, btype=st.sampled_from(["batch", "transaction", "collection", "message"]))
def test_preparing_any_json_refuses_or_accepts_but_never_crashes(value: Any, btype: str) -> None:
    import orjson

    item = prepare_resource(value, None)
    assert item.valid or 400 <= item.status < 500
    entries = value if isinstance(value, list) else [value]
    for body in (value, {"resourceType": "Bundle", "type": btype, "entry": entries}):
        try:
            prepared = prepare_bundle(body)
        except Rejection as rej:
            assert 400 <= rej.status < 500
            operation_outcome(rej.issues, rej.reason)
            continue
        for it in prepared.items:
            assert it.valid or 400 <= it.status < 500
            payload_of(it)
    parse_ndjson(orjson.dumps(value) + b"\n" + orjson.dumps(entries))


class SizeRefusingPublisher(AckingPublisher):
    """A broker whose topic refuses records above 100 bytes."""

    def publish(self, messages: Any) -> list[Any]:
        from kafka.errors import MessageSizeTooLargeError

        from ingest.publish import Ack

        out: list[Any] = []
        for n, m in enumerate(messages):
            if len(m.value) > 200:
                out.append(MessageSizeTooLargeError("record too large"))
            else:
                self.sent.append(m.value)
                out.append(Ack(0, n))
        return out


def test_a_record_the_broker_refuses_for_its_size_is_413_not_503() -> None:
    from ingest.metrics import IngestMetrics
    from ingest.service import IngestService

    service = IngestService(None, SizeRefusingPublisher(), IngestMetrics(), ownership=False)  # type: ignore[arg-type]
    store = FlakyStore()
    store.down = False
    service.store = store  # type: ignore[assignment]
    now = datetime.now(UTC)
    small = prepare_resource({"resourceType": "Location", "id": "s"}, "Location")
    big = prepare_resource({"resourceType": "Location", "id": "b", "name": "x" * 300}, "Location")
    result = service.ingest("lab", now, [small, big], atomic=False)
    assert [e.status for e in result.entries] == [201, 413]
    with pytest.raises(Rejection) as caught:
        service.ingest("lab", now, [big], atomic=True)
    assert caught.value.status == 413


def test_the_resource_limit_follows_the_topic_when_the_broker_says_less() -> None:
    from ingest.publish import RECORD_OVERHEAD_BYTES, Publisher
    from parcours.settings import Settings

    publisher = Publisher(Settings(ingest_max_resource_bytes=4_000_000))
    assert publisher.max_resource_bytes() == 4_000_000
    publisher._topic_max_bytes = 1_048_588
    assert publisher.max_resource_bytes() == 1_048_588 - RECORD_OVERHEAD_BYTES


class DeadLetterPublisher(AckingPublisher):
    """Acknowledges everything and keeps the dead letters."""

    def __init__(self) -> None:
        super().__init__()
        self.dead: list[tuple[bytes, dict[str, str]]] = []

    def dead_letter(self, _key: Any, payload: bytes, headers: dict[str, str]) -> None:
        self.dead.append((payload, headers))


class RecordingStore(FlakyStore):
    """The ingest log, up, keeping the rejection rows of each request."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.rejected: list[Any] = []

    def record(
        self, source: str, at: Any, published: Any, dup: int, rej: Any, conn: Any = None
    ) -> None:
        super().record(source, at, published, dup, rej)
        self.rejected += rej


def test_dead_letters_and_rejection_rows_are_capped_per_request() -> None:
    import orjson

    from ingest.metrics import IngestMetrics
    from ingest.outcome import MAX_ISSUES
    from ingest.service import IngestService

    publisher = DeadLetterPublisher()
    service = IngestService(None, publisher, IngestMetrics(), ownership=False)  # type: ignore[arg-type]
    store = RecordingStore()
    service.store = store  # type: ignore[assignment]
    bad = [
        prepare_resource({"resourceType": "Location", "id": f"bad {n}"}, "Location")
        for n in range(MAX_ISSUES + 150)
    ]
    good = prepare_resource({"resourceType": "Location", "id": "good"}, "Location")
    result = service.ingest("lab", datetime.now(UTC), [*bad, good], atomic=False)
    assert [e.status for e in result.entries] == [422] * len(bad) + [201]
    assert len(publisher.sent) == 1
    assert len(publisher.dead) == MAX_ISSUES + 1
    payload, headers = publisher.dead[-1]
    assert headers["reason-code"] == "more-rejections" and "150 more" in headers["reason"]
    assert orjson.loads(payload)["more"] == 150
    assert len(store.rejected) == MAX_ISSUES + 1
    assert store.rejected[-1].reason == "more-rejections"
    assert sum(r.count for r in store.rejected) == len(bad)


def test_database_waits_are_bounded_by_the_connections_statement_timeout() -> None:
    from ingest.db_waits import MARGIN_S, wait_limit

    dsn = "host=h dbname=d options='-c statement_timeout=2500 -c lock_timeout=2500'"
    assert wait_limit(dsn) == 2.5 + MARGIN_S
    assert wait_limit("host=h dbname=d") is None


def test_database_waits_work_on_descriptors_above_select_limit() -> None:
    """A busy gateway holds more than 1024 descriptors; the wait must still see its socket."""
    import resource
    import socket

    from ingest.db_waits import ready_within

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1500:
        pytest.skip(f"this machine allows only {hard} descriptors")
    if soft <= 1500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    left, right = socket.socketpair()
    high = os.dup2(left.fileno(), 1500)
    try:
        assert ready_within(high, select.POLLIN, 0.05) is False
        right.send(b"x")
        assert ready_within(high, select.POLLIN, 1.0) is True
    finally:
        os.close(high)
        left.close()
        right.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
