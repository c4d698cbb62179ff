"""The patient a resource is folded under (`parcours.fhir_refs.pathway_patient`): the gateway
refuses exactly the resources the stream worker would dead-letter for want of one, and keys the
others by the patient the worker folds them under."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.bundle import patient_key
from ingest.entries import Item, finalise, refuse_unusable_patient
from parcours.fhir_refs import pathway_patient
from streams.core.fhir_map import MappingError, map_resource, patient_events

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def encounter(subject: Any = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "in-progress",
        "class": {"system": ACT, "code": "IMP"},
        "period": {"start": "2026-01-12T07:15:00+00:00"},
    }
    if subject is not None:
        res["subject"] = subject
    return res


def service_request(subject: Any) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": "sr1",
        "status": "active",
        "intent": "order",
        "subject": subject,
        "authoredOn": "2026-01-10T09:00:00+01:00",
        "requester": {"reference": "Practitioner/gp1"},
    }


def episode(patient: Any) -> dict[str, Any]:
    return {
        "resourceType": "EpisodeOfCare",
        "id": "ep1",
        "status": "active",
        "patient": patient,
        "period": {"start": "2026-01-10"},
    }


def appointment(*actors: str) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": "a1",
        "status": "booked",
        "created": "2026-01-10T09:00:00+01:00",
        "start": "2026-02-01T09:00:00+01:00",
        "participant": [{"actor": {"reference": a}, "status": "accepted"} for a in actors],
    }


def gateway(resource: dict[str, Any], root: str | None = None) -> Item:
    """The item as `IngestService.ingest` sees it, after the gateway's own rule."""
    item = Item(index=0, resource=None, raw=resource, root=root or resource["resourceType"])
    finalise(item, resource)
    refuse_unusable_patient(item)
    return item


def worker(resource: dict[str, Any]) -> set[str] | None:
    """The patients the worker folds the resource's events under; None when it dead-letters."""
    try:
        return {ev.patient_id for ev in patient_events(map_resource(resource))}
    except MappingError:
        return None


REFUSED = [
    # (reference, element named)
    ("Patient/x/", "subject.reference"),
    ("Group/g", "subject.reference"),
    ("   ", "subject.reference"),
    ("Patient/", "subject.reference"),
    ("Patient//x", "subject.reference"),
    ("Patient/a?b", "subject.reference"),
    ("Patient/a#b", "subject.reference"),
    ("Patient/a b", "subject.reference"),
    ("http://x.org/fhir/Patient/a b", "subject.reference"),
    ("http://x.org/fhir/Patient/" + "y" * 200, "subject.reference"),
    ("Patient/_history/2", "subject.reference"),
    ("patient/p1", "subject.reference"),
    ("#p1", "subject.reference"),
    ("Patient?identifier=urn:oid:1.2|123", "subject.reference"),
]
ACCEPTED = [
    ("Patient/p1", "p1"),
    ("Patient/p1/_history/2", "p1"),
    ("http://x.org/fhir/Patient/p1", "p1"),
    ("https://x.org/fhir/Patient/p1/_history/3", "p1"),
    ("urn:uuid:0f1c2d1e-93a4-4f8e-9b0e-7d1f0c1a5e11", "0f1c2d1e-93a4-4f8e-9b0e-7d1f0c1a5e11"),
]


@pytest.mark.parametrize(("ref", "element"), REFUSED)
def test_an_unusable_subject_is_refused_naming_it_and_the_worker_dead_letters_it(
    ref: str, element: str
) -> None:
    resource = encounter({"reference": ref})
    item = gateway(resource)
    assert (item.status, item.reason) == (422, "patient-reference")
    assert item.issues[0].expression == (f"Encounter.{element}",)
    assert worker(resource) is None


@pytest.mark.parametrize(("ref", "patient"), ACCEPTED)
def test_a_usable_subject_is_accepted_and_keyed_as_the_worker_folds_it(
    ref: str, patient: str
) -> None:
    resource = encounter({"reference": ref})
    item = gateway(resource)
    assert item.valid
    assert item.key == patient
    assert worker(resource) == {patient}


@pytest.mark.parametrize(
    ("subject", "element"),
    [
        (None, "subject"),
        ({"display": "Jean Martin"}, "subject"),
        ({"identifier": {"system": "urn:oid:1.2", "value": "1"}}, "subject"),
    ],
)
def test_an_encounter_without_a_patient_reference_is_refused(
    subject: dict[str, Any] | None, element: str
) -> None:
    resource = encounter(subject)
    item = gateway(resource, "Bundle.entry[2].resource")
    assert item.reason == "patient-reference"
    assert item.issues[0].expression == (f"Bundle.entry[2].resource.{element}",)
    assert worker(resource) is None


def test_each_folded_type_is_read_where_the_worker_reads_it() -> None:
    assert gateway(service_request({"reference": "Group/g"})).issues[0].expression == (
        "ServiceRequest.subject.reference",
    )
    assert worker(service_request({"reference": "Group/g"})) is None
    assert gateway(service_request({"reference": "Patient/p1"})).key == "p1"
    assert gateway(episode({"reference": "Patient/x/"})).issues[0].expression == (
        "EpisodeOfCare.patient.reference",
    )
    assert worker(episode({"reference": "Patient/x/"})) is None
    assert worker(episode({"reference": "Patient/p2"})) == {"p2"}
    # An Appointment's patient is its first participant actor that names one.
    only_places = appointment("Location/w1", "Practitioner/dr1")
    assert gateway(only_places).issues[0].expression == ("Appointment.participant",)
    assert worker(only_places) is None
    broken = appointment("Practitioner/dr1", "Patient/p 1")
    assert gateway(broken).issues[0].expression == ("Appointment.participant[1].actor.reference",)
    assert worker(broken) is None
    # A participant the worker skips does not decide the key: the patient it folds under does.
    second = appointment("http://x.org/Patient/a b", "Patient/p3")
    assert gateway(second).valid
    assert gateway(second).key == "p3" == patient_key(second)
    assert worker(second) == {"p3"}


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Organization", "id": "o1", "name": "CHU"},
        {"resourceType": "Location", "id": "l1", "name": "Ward"},
        {"resourceType": "Practitioner", "id": "dr1"},
        {"resourceType": "Patient", "id": "p1"},
        # Types the worker does not fold onto a pathway are published raw, whatever they name.
        {
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Group/g"},
        },
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/x/"}},
    ],
)
def test_resources_of_no_pathway_patient_are_not_refused(resource: dict[str, Any]) -> None:
    assert pathway_patient(resource) is None
    assert gateway(resource).valid
    assert worker(resource) is not None


def test_an_item_already_refused_keeps_its_own_reason() -> None:
    item = Item(index=0, resource=None, raw={})
    item.reject(400, "invalid-json", [])
    refuse_unusable_patient(item)
    assert item.reason == "invalid-json"


PIECES = st.sampled_from(
    ["Patient", "Group", "patient", "_history", "p1", "a b", "", " ", "?", "#", "é", "x" * 70]
)
REFERENCES = st.one_of(
    st.lists(PIECES, max_size=5).map("/".join),
    st.lists(PIECES, max_size=4).map(lambda parts: "http://x.org/fhir/" + "/".join(parts)),
    st.text(max_size=12).map(lambda t: "urn:uuid:" + t),
    st.text(max_size=20),
)


@given(ref=REFERENCES, kind=st.sampled_from(["Encounter", "EpisodeOfCare", "Appointment"]))
def test_the_gateway_refuses_exactly_what_the_worker_dead_letters(ref: str, kind: str) -> None:
    if kind == "Encounter":
        resource = encounter({"reference": ref})
    elif kind == "EpisodeOfCare":
        resource = episode({"reference": ref})
    else:
        resource = appointment("Location/w1", ref)
    item = gateway(resource)
    folded = worker(resource)
    assert item.valid == (folded is not None), (ref, item.issues)
    if folded is not None:
        assert folded == {item.key}


TIMES = st.builds(
    "{}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}{}".format,
    st.sampled_from([1899, 1900, 2026, 2099, 2100]),
    st.sampled_from([1, 12]),
    st.sampled_from([1, 31]),
    st.sampled_from([0, 12, 23]),
    st.sampled_from([0, 30, 59]),
    st.sampled_from([0, 59, 60]),
    st.sampled_from(["Z", "+14:00", "-12:00", "+01:00", "-01:00"]),
) | st.sampled_from(["1899-12-31", "1900-01-01", "2099-12-31", "2100-01-01", "1900", "2099"])


@given(start=TIMES)
def test_the_gateway_refuses_exactly_the_care_times_the_worker_dead_letters(start: str) -> None:
    from ingest.validate import validate_resource

    resource = encounter({"reference": "Patient/p1"})
    resource["period"] = {"start": start}
    status, _, issues = validate_resource(resource, "Encounter")
    assert (status == 0) == (worker(resource) is not None), (start, issues)
