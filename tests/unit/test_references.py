"""Conditional references, creates and updates (ingest/references.py), with an in-memory index."""

from __future__ import annotations

from typing import Any

import pytest

from ingest.entries import prepare_bundle
from ingest.references import (
    CriteriaError,
    IdentifierKey,
    alias_id,
    is_conditional,
    parse_criteria,
    resolve_bundle,
)
from parcours.fhir_refs import merge_loops

SYN = "https://github.com/synthetichealth/synthea"
NPI = "http://hl7.org/fhir/sid/us-npi"


class FakeIndex:
    """(type, system, value) → ids, and pending aliases, as the SQL index answers them."""

    def __init__(
        self, rows: list[tuple[str, str, str, str]], pending: dict[IdentifierKey, str] | None = None
    ) -> None:
        self.rows = rows
        self.pending = pending or {}
        self.calls = 0

    def lookup(self, keys: set[IdentifierKey]) -> dict[IdentifierKey, set[str]]:
        self.calls += 1
        out: dict[IdentifierKey, set[str]] = {}
        for k in keys:
            ids = {
                rid
                for t, s, v, rid in self.rows
                if t == k.resource_type and v == k.value and (k.system is None or s == k.system)
            }
            if ids:
                out[k] = ids
        return out

    def aliases(self, keys: set[IdentifierKey]) -> dict[IdentifierKey, str]:
        return {k: a for k, a in self.pending.items() if k in keys}


def encounter(eid: str, location: str, provider: str) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:{eid}",
        "resource": {
            "resourceType": "Encounter",
            "id": eid,
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
            "subject": {"reference": "urn:uuid:pat-1"},
            "period": {"start": "2024-03-30T22:00:00+05:30", "end": "2024-03-31T01:00:00+05:30"},
            "serviceProvider": {"reference": provider},
            "participant": [{"individual": {"reference": f"Practitioner?identifier={NPI}|9999"}}],
            "location": [{"location": {"reference": location}}],
        },
        "request": {"method": "POST", "url": "Encounter"},
    }


def patient_bundle(
    location: str, provider: str = f"Organization?identifier={SYN}|org-1"
) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:pat-1",
                "resource": {"resourceType": "Patient", "id": "pat-1"},
                "request": {"method": "POST", "url": "Patient"},
            },
            encounter("enc-1", location, provider),
        ],
    }


def resolve(body: dict[str, Any], index: FakeIndex, defer: bool = False) -> Any:
    prepared = prepare_bundle(body)
    requests = [e.get("request") for e in body["entry"]]
    resolution = resolve_bundle(prepared.items, requests, index.lookup, index.aliases, defer)
    return prepared, resolution


INDEX = [
    ("Organization", SYN, "org-1", "org-1"),
    ("Location", SYN, "loc-1", "loc-1"),
    ("Location", SYN, "loc-twice", "loc-a"),
    ("Location", SYN, "loc-twice", "loc-b"),
    ("Practitioner", NPI, "9999", "prac-1"),
]


def test_criteria_are_parsed_from_references_and_if_none_exist() -> None:
    assert parse_criteria(f"Location?identifier={SYN}|abc").keys == (
        IdentifierKey("Location", SYN, "abc"),
    )
    encoded = parse_criteria("identifier=https%3A%2F%2Fx.org%7Cabc", "Organization")
    assert encoded.keys == (IdentifierKey("Organization", "https://x.org", "abc"),)
    assert parse_criteria("Patient?identifier=123").keys == (IdentifierKey("Patient", None, "123"),)
    with pytest.raises(CriteriaError, match="name"):
        parse_criteria("Patient?name=Smith")
    assert is_conditional(f"Location?identifier={SYN}|1")
    assert not is_conditional("Location/1")
    assert not is_conditional("http://x.org/fhir/Location?identifier=1")


def test_references_resolve_against_the_index() -> None:
    index = FakeIndex(INDEX)
    prepared, resolution = resolve(patient_bundle(f"Location?identifier={SYN}|loc-1"), index)
    enc = prepared.items[1]
    assert enc.valid, enc.issues
    assert enc.resource is not None
    assert enc.resource["location"][0]["location"]["reference"] == "Location/loc-1"
    assert enc.resource["serviceProvider"]["reference"] == "Organization/org-1"
    assert enc.resource["participant"][0]["individual"]["reference"] == "Practitioner/prac-1"
    assert b"Location/loc-1" in enc.value  # the published bytes follow the rewrite
    assert resolution.resolved == 3 and index.calls == 1


def test_no_match_and_two_matches_fail_the_entry_naming_the_reference() -> None:
    index = FakeIndex(INDEX)
    prepared, _ = resolve(patient_bundle(f"Location?identifier={SYN}|nowhere"), index)
    enc = prepared.items[1]
    assert enc.status == 422 and enc.reason == "unresolved-reference"
    (issue,) = enc.issues
    assert issue.code == "not-found"
    assert issue.expression == ("Bundle.entry[1].resource.location[0].location.reference",)
    assert "nowhere" in issue.diagnostics and "Bundle.entry[1]" in issue.diagnostics

    prepared, _ = resolve(patient_bundle(f"Location?identifier={SYN}|loc-twice"), index)
    enc = prepared.items[1]
    assert enc.reason == "ambiguous-reference"
    assert "loc-a" in enc.issues[0].diagnostics and "loc-b" in enc.issues[0].diagnostics


def test_deferral_points_at_the_alias_and_is_recorded_by_element() -> None:
    index = FakeIndex(INDEX)
    prepared, resolution = resolve(
        patient_bundle(f"Location?identifier={SYN}|later"), index, defer=True
    )
    enc = prepared.items[1]
    assert enc.valid
    key = IdentifierKey("Location", SYN, "later")
    assert enc.resource is not None
    assert enc.resource["location"][0]["location"]["reference"] == f"Location/{alias_id(key)}"
    (deferred,) = resolution.deferred
    assert deferred.key == key and deferred.element == "Encounter.location.location"
    # An ambiguous reference is never deferred.
    prepared, _ = resolve(patient_bundle(f"Location?identifier={SYN}|loc-twice"), index, True)
    assert not prepared.items[1].valid


def hospital_batch(loc_id: str = "loc-new", org_id: str = "org-1") -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{org_id}",
                "resource": {
                    "resourceType": "Organization",
                    "id": org_id,
                    "identifier": [{"system": SYN, "value": org_id}],
                    "name": "CH",
                },
                "request": {
                    "method": "POST",
                    "url": "Organization",
                    "ifNoneExist": f"identifier={SYN}|{org_id}",
                },
            },
            {
                "fullUrl": f"urn:uuid:{loc_id}",
                "resource": {
                    "resourceType": "Location",
                    "id": loc_id,
                    "identifier": [{"system": SYN, "value": loc_id}],
                    "managingOrganization": {"reference": f"urn:uuid:{org_id}"},
                },
                "request": {
                    "method": "POST",
                    "url": "Location",
                    "ifNoneExist": f"identifier={SYN}|{loc_id}",
                },
            },
        ],
    }


def test_conditional_create_matches_existing_and_creates_the_rest() -> None:
    index = FakeIndex([("Organization", SYN, "org-1", "org-existing")])
    prepared, resolution = resolve(hospital_batch(), index)
    org, loc = prepared.items
    # The Organization exists under another id: answered, not created; the Location created
    # in the same Bundle now points at the existing one.
    assert resolution.existing == {0: "org-existing"}
    assert org.resource_id == "org-existing"
    assert loc.valid and loc.resource is not None
    assert loc.resource["managingOrganization"]["reference"] == "Organization/org-existing"


def test_a_target_created_after_deferral_takes_the_alias() -> None:
    key = IdentifierKey("Location", SYN, "loc-new")
    index = FakeIndex([], pending={key: alias_id(key)})
    prepared, resolution = resolve(hospital_batch(), index)
    loc = prepared.items[1]
    assert loc.resource_id == alias_id(key)
    assert resolution.existing == {}


def test_two_matches_for_a_conditional_create_is_412() -> None:
    index = FakeIndex([("Organization", SYN, "org-1", "a"), ("Organization", SYN, "org-1", "b")])
    prepared, _ = resolve(hospital_batch(), index)
    assert prepared.items[0].status == 412 and prepared.items[0].reason == "multiple-matches"
    assert prepared.items[1].valid


def test_conditional_update_takes_the_matched_id() -> None:
    body = hospital_batch()
    body["entry"][1]["request"] = {"method": "PUT", "url": f"Location?identifier={SYN}|loc-new"}
    index = FakeIndex([("Location", SYN, "loc-new", "loc-stored")])
    prepared, resolution = resolve(body, index)
    assert prepared.items[1].resource_id == "loc-stored"
    assert resolution.existing == {}


def test_references_resolve_within_the_bundle_first() -> None:
    body = hospital_batch()
    body["type"] = "transaction"
    body["entry"].append(encounter("enc-9", f"Location?identifier={SYN}|loc-new", "urn:uuid:org-1"))
    body["entry"].insert(
        0,
        {
            "fullUrl": "urn:uuid:pat-1",
            "resource": {"resourceType": "Patient", "id": "pat-1"},
            "request": {"method": "POST", "url": "Patient"},
        },
    )
    index = FakeIndex([("Practitioner", NPI, "9999", "prac-1")])
    prepared, _ = resolve(body, index)
    enc = prepared.items[-1]
    assert enc.valid, enc.issues
    assert enc.resource is not None
    assert enc.resource["location"][0]["location"]["reference"] == "Location/loc-new"


def test_a_merged_patient_s_records_go_to_the_patient_that_replaced_it() -> None:
    from ingest.references import MERGED_SYSTEM, apply_merges

    body = patient_bundle(f"Location?identifier={SYN}|loc-1")
    body["entry"][0]["resource"]["link"] = [
        {"other": {"reference": "Patient/pat-keep"}, "type": "replaced-by"}
    ]
    prepared = prepare_bundle(body)
    merges = apply_merges(prepared.items, FakeIndex([]).lookup)
    assert merges == {"pat-1": "pat-keep"}
    enc = prepared.items[1]
    assert enc.key == "pat-keep"
    assert enc.resource is not None and enc.resource["subject"]["reference"] == "Patient/pat-keep"

    # A later Bundle for the replaced id follows the recorded merge.
    later = prepare_bundle(patient_bundle(f"Location?identifier={SYN}|loc-1"))
    index = FakeIndex([("Patient", MERGED_SYSTEM, "pat-1", "pat-keep")])
    assert apply_merges(later.items, index.lookup) == {}
    assert later.items[1].key == "pat-keep"
    assert later.items[0].key == "pat-1"  # the replaced Patient itself keeps its id


def test_a_reference_by_identifier_only_gets_its_target_when_one_matches() -> None:
    body = hospital_batch()
    body["entry"][1]["resource"]["managingOrganization"] = {
        "identifier": {"system": SYN, "value": "org-1"},
        "display": "CH",
    }
    body["entry"][1]["resource"]["partOf"] = {"identifier": {"system": SYN, "value": "nowhere"}}
    prepared, _ = resolve(body, FakeIndex([]))
    loc = prepared.items[1]
    assert loc.valid and loc.resource is not None
    # Within the Bundle; the identifier stays beside the new reference.
    assert loc.resource["managingOrganization"]["reference"] == "Organization/org-1"
    assert loc.resource["managingOrganization"]["identifier"]["value"] == "org-1"
    # No match: a logical reference is valid FHIR and is left as it is.
    assert "reference" not in loc.resource["partOf"]


def test_two_matching_patients_are_not_named_in_the_error() -> None:
    """They may be another integrator's: the message counts them, and names no id."""
    ins = "urn:oid:1.2.250.1.213.1.4.8"
    index = FakeIndex([("Patient", ins, "123", "theirs-a"), ("Patient", ins, "123", "theirs-b")])
    body = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": ins, "value": "123"}],
                },
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier={ins}|123",
                },
            },
            {
                "resource": {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {"code": "AMB"},
                    "subject": {"reference": f"Patient?identifier={ins}|123"},
                },
                "request": {"method": "POST", "url": "Encounter"},
            },
        ],
    }
    prepared, _ = resolve(body, index)
    texts = [i.diagnostics for item in prepared.items for i in item.issues]
    assert any("2 resources" in t for t in texts), texts
    assert not any("theirs" in t for t in texts), texts


@pytest.mark.parametrize(
    ("merged", "into", "recorded", "loops"),
    [
        ("a", "b", {}, False),
        ("a", "a", {}, True),
        ("a", "b", {"b": "a"}, True),
        ("a", "c", {"c": "b", "b": "a"}, True),
        ("a", "c", {"c": "b", "b": "d"}, False),
        # A loop elsewhere in the records is followed no further than the chain limit.
        ("a", "b", {"b": "c", "c": "b"}, False),
    ],
)
def test_a_merge_loops_when_the_merges_from_its_target_come_back(
    merged: str, into: str, recorded: dict[str, str], loops: bool
) -> None:
    assert merge_loops(merged, into, recorded.get) is loops
