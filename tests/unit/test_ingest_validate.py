"""Pure validation and request preparation: expressions name the failing element."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class

from ingest.entries import etag_value, parse_ndjson, prepare_bundle, prepare_resource
from ingest.limits import repeated_name_issue
from ingest.outcome import Rejection, outcome_reason
from ingest.responses import capability_statement
from ingest.service import precondition_holds
from ingest.validate import (
    MAPPED_TYPES,
    model_types_from_fhir_resources,
    resource_types,
    validate_resource,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"


def encounter(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "resourceType": "Encounter",
        "id": "enc-1",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/pat-1"},
    }
    base.update(over)
    return base


def test_every_mapped_type_is_an_r4_resource_type() -> None:
    assert resource_types() == model_types_from_fhir_resources()
    assert set(MAPPED_TYPES) <= resource_types()
    assert "HumanName" not in resource_types()
    assert "Bundle" in resource_types()


def test_valid_encounter_passes() -> None:
    assert validate_resource(encounter(), "Encounter") == (0, "", [])
    v2_inpatient = {"system": "http://terminology.hl7.org/CodeSystem/v2-0004", "code": "I"}
    assert validate_resource(encounter(**{"class": v2_inpatient}), "Encounter") == (0, "", [])


@pytest.mark.parametrize(
    ("resource", "status", "expression"),
    [
        (encounter(period={"start": "yesterday"}), 422, "Encounter.period.start"),
        (
            encounter(
                location=[{"location": {"reference": "Location/b"}, "period": {"start": "x"}}]
            ),
            422,
            "Encounter.location[0].period.start",
        ),
        (encounter(bogus=1), 422, "Encounter.bogus"),
        (encounter(status="done"), 422, "Encounter.status"),
        ({k: v for k, v in encounter().items() if k != "class"}, 422, "Encounter.class"),
        (
            encounter(
                **{
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0004",
                        "code": "Z",
                    }
                }
            ),
            422,
            "Encounter.class.code",
        ),
        (encounter(**{"class": {"code": "WARD"}}), 422, "Encounter.class.code"),
        (encounter(resourceType="Patient"), 400, "Patient.resourceType"),
        (encounter(id="has space"), 422, "Encounter.id"),
        ({"id": "x"}, 400, "Encounter.resourceType"),
        ([1, 2], 400, "Encounter"),
    ],
)
def test_invalid_resources_name_the_failing_element(
    resource: object, status: int, expression: str
) -> None:
    got_status, _reason, issues = validate_resource(resource, "Encounter")
    assert got_status == status
    assert expression in [e for i in issues for e in i.expression], issues


def test_unknown_resource_type() -> None:
    status, reason, issues = validate_resource({"resourceType": "Frobnicator"}, None)
    assert (status, reason) == (400, "unknown-type")
    assert issues[0].expression == ("Frobnicator.resourceType",)


def test_transaction_entries_are_resolved_keyed_and_versioned() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:p1",
                "resource": {"resourceType": "Patient", "meta": {"versionId": "3"}},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:e1",
                "resource": {**encounter(id=None), "subject": {"reference": "urn:uuid:p1"}},
                "request": {"method": "POST", "url": "Encounter"},
            },
            {
                "resource": {"resourceType": "Organization", "name": "CHU"},
                "request": {"method": "PUT", "url": "Organization/chu"},
            },
        ],
    }
    bundle["entry"][1]["resource"].pop("id")  # type: ignore[index]
    prepared = prepare_bundle(bundle)
    assert prepared.atomic
    assert [i.issues for i in prepared.items][:2] == [[], []]
    patient, enc, org = prepared.items
    assert (patient.key, patient.version) == ("p1", "v:3")
    assert enc.key == "p1" and enc.resource_id == "e1"
    assert json.loads(enc.value)["subject"] == {"reference": "Patient/p1"}
    assert enc.version.startswith("h:")
    # A PUT whose url id differs from the (content-derived) resource id is refused.
    assert org.status == 400 and org.issues[0].expression == ("Bundle.entry[2].resource.id",)


def test_same_content_gets_same_id_and_version() -> None:
    a = prepare_resource({"resourceType": "Organization", "name": "CHU"}, "Organization")
    b = prepare_resource({"resourceType": "Organization", "name": "CHU"}, "Organization")
    c = prepare_resource({"resourceType": "Organization", "name": "CHD"}, "Organization")
    assert a.dedupe_key == b.dedupe_key != c.dedupe_key
    assert a.key == f"Organization/{a.resource_id}"


@pytest.mark.parametrize(
    ("bundle", "status", "expression"),
    [
        ({"resourceType": "Patient"}, 400, "Bundle.resourceType"),
        ({"resourceType": "Bundle", "type": "searchset"}, 422, "Bundle.type"),
        (
            {"resourceType": "Bundle", "type": "message", "entry": [{"resource": encounter()}]},
            422,
            "Bundle.entry[0].resource",
        ),
        ({"resourceType": "Bundle", "type": "batch", "entry": "x"}, 400, "Bundle.entry"),
    ],
)
def test_bundle_envelope_errors(bundle: object, status: int, expression: str) -> None:
    with pytest.raises(Rejection) as caught:
        prepare_bundle(bundle)
    assert caught.value.status == status
    assert caught.value.issues[0].expression == (expression,)
    assert outcome_reason(caught.value.outcome()) == caught.value.reason


def test_batch_entry_without_request_or_with_delete_is_refused() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": encounter()},
            {
                "resource": encounter(id="e2"),
                "request": {"method": "DELETE", "url": "Encounter/e2"},
            },
            {"resource": encounter(id="e3"), "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    items = prepare_bundle(bundle).items
    assert [i.issues[0].expression[0] for i in items] == [
        "Bundle.entry[0].request",
        "Bundle.entry[1].request.method",
        "Bundle.entry[2].request.url",
    ]


def test_ndjson_lines_are_numbered() -> None:
    data = b"\n".join(
        [
            json.dumps(encounter()).encode(),
            b"",
            b"{oops",
            json.dumps(encounter(status="x")).encode(),
        ]
    )
    items = parse_ndjson(data)
    assert [i.index for i in items] == [1, 3, 4]
    assert items[0].valid
    assert items[1].reason == "invalid-json" and "line 3" in items[1].issues[0].diagnostics
    assert items[2].issues[0].expression == ("Encounter.status",)


def test_an_ndjson_line_that_gives_a_name_twice_is_refused_alone() -> None:
    twice = json.dumps(encounter()).replace('"status": ', '"status": "planned", "status": ', 1)
    items = parse_ndjson(b"\n".join([json.dumps(encounter()).encode(), twice.encode()]))
    assert items[0].valid
    assert items[1].reason == "invalid-json" and items[1].status == 400
    assert items[1].issues[0].expression == ("Encounter.status",)
    assert "line 2" in items[1].issues[0].diagnostics


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"resourceType": "Patient", "a": 1}', None),
        ('{"a": 1, "a": 1}', "Patient.a"),
        ('{"x": [{}, {"y": {"z": 1, "z": 2}}]}', "Patient.x[1].y.z"),
        ('{"x": {"a b": 1, "a b": 2}}', "Patient.x['a b']"),
        ('[{"k": 1}, {"k": 1, "k": 2}]', "Patient[1].k"),
    ],
)
def test_the_first_name_given_twice_is_named_by_its_path(text: str, where: str | None) -> None:
    issue = repeated_name_issue(text.encode(), "Patient")
    assert (issue.expression[0] if issue else None) == where


def test_capability_statement_is_valid_r4() -> None:
    cs = capability_statement("0.1.0", 10)
    get_fhir_model_class("CapabilityStatement").model_validate(cs)
    types = {r["type"] for r in cs["rest"][0]["resource"]}
    assert set(MAPPED_TYPES) <= types


def test_synthea_bundle_prepares_without_issues(shared_data: Path) -> None:
    path = sorted((shared_data / "fhir" / "synthea-r4-2019").glob("*.json"))[0]
    prepared = prepare_bundle(json.loads(path.read_text()))
    assert prepared.invalid() == []
    patient_id = next(i.resource_id for i in prepared.items if i.resource_type == "Patient")
    keyed = {i.key for i in prepared.items if i.resource_type in ("Encounter", "Observation")}
    assert keyed == {patient_id}


def test_entries_that_are_not_objects_are_refused_not_crashing() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": "Patient/1"}, {"fullUrl": "urn:uuid:x"}, {"resource": encounter()}],
    }
    items = prepare_bundle(bundle).items
    assert [i.issues[0].code if i.issues else None for i in items] == [
        "structure",
        "required",
        None,
    ]


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ('W/"3"', "3"),
        ('"3"', "3"),
        ("3", "3"),
        (" * ", "*"),
        ('W/""', None),
        ("W/", None),
        ('W/"a b"', None),
        ('"a"b"', None),
        ("1,2", None),
        ("", None),
    ],
)
def test_an_if_match_names_one_version_or_any(text: str, tag: str | None) -> None:
    assert etag_value(text) == tag


@pytest.mark.parametrize(
    ("if_match", "current", "holds"),
    [
        ("3", "v:3", True),
        ("3", "v:4", False),
        ("3", None, False),
        ("3", "h:3", False),
        ("*", "h:abc", True),
        ("*", None, False),
    ],
)
def test_an_if_match_holds_only_on_the_current_version(
    if_match: str, current: str | None, holds: bool
) -> None:
    item = prepare_resource(encounter(), "Encounter")
    item.if_match = if_match
    assert precondition_holds(item, current) is holds
