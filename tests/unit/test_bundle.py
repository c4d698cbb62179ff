"""urn:uuid resolution and patient keys, on a hand-made Bundle and on the real Synthea files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ingest.bundle import patient_key, resolve_entries


def test_urn_uuid_references_become_type_and_id() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient"}},
            {
                "fullUrl": "urn:uuid:e1",
                "resource": {
                    "resourceType": "Encounter",
                    "subject": {"reference": "urn:uuid:p1"},
                    "serviceProvider": {"reference": "Organization/known"},
                },
            },
        ],
    }
    patient, encounter = resolve_entries(bundle)
    assert patient["id"] == "p1"
    assert encounter["id"] == "e1"
    assert encounter["subject"]["reference"] == "Patient/p1"
    assert encounter["serviceProvider"]["reference"] == "Organization/known"
    assert bundle["entry"][1]["resource"]["subject"]["reference"] == "urn:uuid:p1"
    assert [patient_key(r) for r in (patient, encounter)] == ["p1", "p1"]


def test_urn_uuid_references_match_their_full_url_whatever_the_case() -> None:
    upper = "urn:uuid:9A1B2C3D-0000-4000-8000-00000000000A"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": upper, "resource": {"resourceType": "Patient"}},
            {
                "fullUrl": "urn:uuid:e2",
                "resource": {"resourceType": "Encounter", "subject": {"reference": upper.lower()}},
            },
        ],
    }
    patient, encounter = resolve_entries(bundle)
    assert encounter["subject"]["reference"] == f"Patient/{patient['id']}"
    assert patient_key(encounter) == patient_key(patient) == upper.removeprefix("urn:uuid:")


def test_an_appointment_is_keyed_by_its_patient_participant() -> None:
    appointment = {
        "resourceType": "Appointment",
        "id": "a1",
        "participant": [
            {"actor": {"reference": "Practitioner/dr-1"}, "status": "accepted"},
            {"actor": {"reference": "Patient/p9"}, "status": "accepted"},
        ],
    }
    assert patient_key(appointment) == "p9"
    assert patient_key({**appointment, "participant": appointment["participant"][:1]}) is None


def test_organisations_have_no_patient_key() -> None:
    assert patient_key({"resourceType": "Organization", "id": "o"}) is None
    assert patient_key({"resourceType": "Claim", "patient": {"reference": "Patient/x"}}) == "x"
    assert (
        patient_key({"resourceType": "ExplanationOfBenefit", "patient": {"reference": "#c"}})
        is None
    )


def test_every_synthea_entry_of_a_patient_is_keyed_to_that_patient(shared_data: Path) -> None:
    for path in sorted((shared_data / "fhir" / "synthea-r4-2019").glob("*.json")):
        bundle = json.loads(path.read_text())
        resources = resolve_entries(bundle)
        patients = [r["id"] for r in resources if r["resourceType"] == "Patient"]
        assert len(patients) == 1, path.name
        keys = Counter(patient_key(r) for r in resources)
        unkeyed = {r["resourceType"] for r in resources if patient_key(r) is None}
        assert set(keys) - {None} == {patients[0]}, path.name
        assert unkeyed <= {"Organization", "Practitioner"}, (path.name, unkeyed)
        assert not any(ref.startswith("urn:uuid:") for r in resources for ref in _refs(r)), (
            path.name
        )


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return own + [x for v in node.values() for x in _refs(v)]
    if isinstance(node, list):
        return [x for v in node for x in _refs(v)]
    return []


def test_a_patient_named_by_an_absolute_url_is_that_patient() -> None:
    for form in (
        "http://h.example/fhir/Patient/p1",
        "https://x/Patient/p1/_history/2",
        "a/Patient/p1",
    ):
        encounter = {"resourceType": "Encounter", "id": "e", "subject": {"reference": form}}
        assert patient_key(encounter) == "p1"
    appointment = {
        "resourceType": "Appointment",
        "participant": [
            {"actor": {"reference": "Practitioner/dr"}},
            {"actor": {"reference": "http://h.example/Patient/p2"}},
            {"actor": {"reference": "Patient/p3"}},
        ],
    }
    # The first Patient actor, as the stream mapping reads it.
    assert patient_key(appointment) == "p2"
