"""FHIR R4 → canonical events: golden hand-made fixtures, refusals, and the real Synthea bundles."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ingest.bundle import resolve_entries
from streams.core.events import (
    AppointmentBooked,
    CommunityVisited,
    EdArrived,
    EdDeparted,
    EncounterRecorded,
    HomeCareEnded,
    HomeCareStarted,
    LocationRecorded,
    OrganizationRecorded,
    PatientAdmitted,
    PatientDied,
    PatientDischarged,
    PatientEvent,
    PatientTransferred,
    ReferralSent,
    ResourceRetracted,
    patient_event_from_json,
    patient_event_to_json,
)
from streams.core.fhir_map import (
    MAX_MOVES,
    MappingError,
    discharge_disposition,
    map_resource,
    parse_time,
    patient_events,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"
SYNTHEA = "fhir/synthea-r4-2019"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def kinds(events: list[Any]) -> list[str]:
    return [type(ev).__name__ for ev in events]


# --- Golden fixtures -----------------------------------------------------------------------------


def test_emer_encounter_gives_arrival_and_departure() -> None:
    events = map_resource(load("encounter_emer"))
    assert kinds(events) == ["EncounterRecorded", "EdArrived", "EdDeparted"]
    _, arrived, departed = events
    assert isinstance(arrived, EdArrived) and isinstance(departed, EdDeparted)
    assert arrived.at == utc("2026-01-12T07:15:00+00:00")
    assert arrived.hospital == "chu-dijon"
    assert departed.at == utc("2026-01-12T10:40:00+00:00")
    assert departed.admitted is False
    assert (arrived.part, arrived.parts, departed.part, departed.parts) == (1, 2, 2, 2)
    assert arrived.source == departed.source
    assert (arrived.source.resource_type, arrived.source.resource_id) == ("Encounter", "enc-emer-1")


def test_imp_encounter_gives_admission_moves_and_discharge() -> None:
    events = map_resource(load("encounter_imp_transfers"))
    assert kinds(events) == [
        "EncounterRecorded",
        "PatientAdmitted",
        "PatientTransferred",
        "PatientDischarged",
    ]
    _, admitted, moved, discharged = events
    assert isinstance(admitted, PatientAdmitted)
    assert admitted.stay_id == "enc-imp-1"
    assert admitted.at == utc("2026-01-12T10:40:00+00:00")
    # The ward entry and the bed entry that start together are one place.
    assert (admitted.ward, admitted.bed) == ("ward-cardio", "bed-cardio-12")
    assert admitted.admit_source == "emd"
    assert admitted.from_ed_encounter == "enc-emer-1"
    assert admitted.service == "cardio"
    assert admitted.hospital == "chu-dijon"
    assert isinstance(moved, PatientTransferred)
    assert moved.at == utc("2026-01-14T08:00:00+00:00")
    assert (moved.location, moved.ward, moved.bed) == ("bed-usic-3", "ward-usic", "bed-usic-3")
    assert moved.until == utc("2026-01-16T09:00:00+00:00")
    # The planned bed of a later day is not a move.
    assert isinstance(discharged, PatientDischarged)
    assert discharged.at == utc("2026-01-16T09:00:00+00:00")
    assert discharged.disposition == "home"
    assert {ev.source.version for ev in events} == {"3"}


def test_amb_encounter_is_a_community_visit_answering_its_referral() -> None:
    [recorded, visit] = map_resource(load("encounter_amb"))
    assert isinstance(recorded, EncounterRecorded)
    assert isinstance(visit, CommunityVisited)
    assert visit.class_code == "AMB"
    assert visit.based_on == "sr-1"
    assert visit.end == utc("2026-01-20T08:20:00+00:00")
    assert visit.provider == "cabinet-talant"


@pytest.mark.parametrize("code", ["HH", "VR"])
def test_home_and_virtual_encounters_are_community_visits(code: str) -> None:
    resource = load("encounter_amb") | {"class": {"code": code}}
    visits = [ev for ev in map_resource(resource) if isinstance(ev, CommunityVisited)]
    assert [v.class_code for v in visits] == [code]


V2_CLASS = "http://terminology.hl7.org/CodeSystem/v2-0004"


@pytest.mark.parametrize(
    ("klass", "kind"),
    [
        ({"system": V2_CLASS, "code": "I"}, PatientAdmitted),
        ({"system": V2_CLASS, "code": "E"}, EdArrived),
        ({"system": V2_CLASS, "code": "O"}, CommunityVisited),
        ({"code": "inpatient"}, PatientAdmitted),
        ({"code": "emergency"}, EdArrived),
        ({"code": "ambulatory"}, CommunityVisited),
        ({"system": "http://example.org/local-classes", "code": "IMP"}, PatientAdmitted),
    ],
)
def test_classes_of_other_systems_that_feeds_send_are_read(
    klass: dict[str, str], kind: type
) -> None:
    resource = load("encounter_imp_transfers") | {"class": klass}
    assert any(isinstance(ev, kind) for ev in map_resource(resource))


@pytest.mark.parametrize(
    "klass", [{"system": V2_CLASS, "code": "N"}, {"system": "http://example.org/x", "code": "Z"}]
)
def test_a_class_that_means_nothing_known_names_the_element(klass: dict[str, str]) -> None:
    with pytest.raises(MappingError, match=r"Encounter\.class\.code"):
        map_resource(load("encounter_imp_transfers") | {"class": klass})


@pytest.mark.parametrize("status", ["cancelled", "entered-in-error", "planned"])
def test_encounters_that_did_not_happen_retract(status: str) -> None:
    resource = load("encounter_cancelled") | {"status": status}
    events = map_resource(resource)
    assert kinds(events) == ["EncounterRecorded", "ResourceRetracted"]
    retracted = events[1]
    assert isinstance(retracted, ResourceRetracted)
    assert retracted.reason == f"Encounter.status {status}"
    assert retracted.source.resource_id == "enc-imp-2"
    # The walking skeleton's row still records what the source said.
    assert isinstance(events[0], EncounterRecorded) and events[0].status == status


def test_in_progress_stay_has_no_discharge_and_active_location() -> None:
    resource = load("encounter_imp_transfers")
    resource["status"] = "in-progress"
    del resource["period"]["end"]
    resource["location"] = resource["location"][:2]
    resource["location"][0]["status"] = resource["location"][1]["status"] = "active"
    del resource["location"][0]["period"]["end"]
    del resource["location"][1]["period"]["end"]
    assert kinds(patient_events(map_resource(resource))) == ["PatientAdmitted"]


def test_location_without_physical_type_is_taken_as_the_bed() -> None:
    resource = load("encounter_imp_transfers")
    resource["location"] = [
        {"location": {"reference": "Location/x1"}, "status": "completed"},
        {
            "location": {"reference": "Location/x2"},
            "status": "active",
            "period": {"start": "2026-01-13T10:00:00+01:00"},
        },
    ]
    admitted, moved = patient_events(map_resource(resource))[:2]
    assert isinstance(admitted, PatientAdmitted) and isinstance(moved, PatientTransferred)
    assert (admitted.ward, admitted.bed) == (None, "x1")
    assert (moved.location, moved.bed) == ("x2", "x2")


def test_died_disposition_gives_death() -> None:
    resource = load("encounter_imp_transfers")
    resource["hospitalization"]["dischargeDisposition"] = {
        "coding": [{"system": "http://www.nubc.org/patient-discharge", "code": "20"}]
    }
    events = patient_events(map_resource(resource))
    assert kinds(events)[-2:] == ["PatientDischarged", "PatientDied"]
    assert events[-1].at == events[-2].at
    assert isinstance(events[-2], PatientDischarged) and events[-2].disposition == "exp"


@pytest.mark.parametrize(
    ("system", "code", "expected"),
    [
        ("http://www.nubc.org/patient-discharge", "01", "home"),
        ("http://www.nubc.org/patient-discharge", "99", "nubc:99"),
        ("http://terminology.hl7.org/CodeSystem/discharge-disposition", "other-hcf", "other-hcf"),
        ("urn:local", "x", "x"),
    ],
)
def test_dispositions_read_one_vocabulary(system: str, code: str, expected: str) -> None:
    hosp = {"dischargeDisposition": {"coding": [{"system": system, "code": code}]}}
    assert discharge_disposition(hosp) == expected


def test_referral_from_a_community_practitioner() -> None:
    [referral] = map_resource(load("service_request_referral"))
    assert isinstance(referral, ReferralSent)
    assert referral.referral_id == "sr-1"
    assert referral.at == utc("2026-01-05T15:45:00+00:00")
    assert (referral.requester, referral.performer) == ("gp-martin", "chu-dijon")


def test_service_request_without_a_practitioner_requester_is_no_referral() -> None:
    resource = load("service_request_referral")
    resource["requester"] = {"reference": "Organization/labo"}
    assert map_resource(resource) == []


@pytest.mark.parametrize("status", ["revoked", "entered-in-error", "draft"])
def test_withdrawn_referral_retracts(status: str) -> None:
    [ev] = map_resource(load("service_request_referral") | {"status": status})
    assert isinstance(ev, ResourceRetracted)


def test_appointment_booked_at_creation_for_its_start() -> None:
    [appt] = map_resource(load("appointment_booked"))
    assert isinstance(appt, AppointmentBooked)
    assert appt.patient_id == "pat-1"
    assert appt.at == utc("2026-01-06T08:55:00+00:00")
    assert appt.start == utc("2026-01-19T13:00:00+00:00")
    assert appt.based_on == "sr-1"
    assert appt.service is None and appt.location is None


def test_appointment_names_its_service_and_location() -> None:
    resource = load("appointment_booked")
    resource["serviceType"] = [{"coding": [{"system": "urn:x", "code": "cardio"}]}]
    resource["participant"].append({"actor": {"reference": "Location/ward-c1"}})
    [appt] = map_resource(resource)
    assert isinstance(appt, AppointmentBooked)
    assert (appt.service, appt.location, appt.patient_id) == ("cardio", "ward-c1", "pat-1")


@pytest.mark.parametrize("status", ["cancelled", "noshow", "entered-in-error", "proposed"])
def test_appointment_not_kept_retracts(status: str) -> None:
    [ev] = map_resource(load("appointment_booked") | {"status": status})
    assert isinstance(ev, ResourceRetracted)


def test_finished_episode_of_care_starts_and_ends_home_care() -> None:
    started, ended = map_resource(load("episode_of_care_home"))
    assert isinstance(started, HomeCareStarted) and isinstance(ended, HomeCareEnded)
    assert started.care_type == "hacc"
    assert ended.at == utc("2026-02-20T16:00:00+00:00")


def test_active_episode_of_care_only_starts() -> None:
    resource = load("episode_of_care_home") | {"status": "active"}
    del resource["period"]["end"]
    assert kinds(map_resource(resource)) == ["HomeCareStarted"]


def test_deceased_patient_dies_at_the_recorded_time() -> None:
    [died] = map_resource(load("patient_deceased"))
    assert isinstance(died, PatientDied)
    assert died.patient_id == "pat-2"
    assert died.at == utc("2026-03-01T22:10:00+00:00")


def test_deceased_boolean_uses_last_updated_and_alive_patient_gives_nothing() -> None:
    resource = load("patient_deceased")
    del resource["deceasedDateTime"]
    resource["deceasedBoolean"] = True
    [died] = map_resource(resource)
    assert died.at == utc("2026-03-02T07:00:00+00:00")
    assert map_resource(resource | {"deceasedBoolean": False}) == []
    del resource["meta"]
    with pytest.raises(MappingError, match="deceasedBoolean"):
        map_resource(resource)


def test_a_merged_record_deceased_without_a_time_still_moves_to_its_survivor() -> None:
    """The merge is what the worker needs of a replaced record (its pathway moves to the
    survivor, whose own record says the death): an untimed death does not dead-letter it,
    which would leave its stays counted twice."""
    resource = {
        "resourceType": "Patient",
        "id": "pat-old",
        "deceasedBoolean": True,
        "link": [{"other": {"reference": "Patient/pat-keep"}, "type": "replaced-by"}],
    }
    [replaced] = map_resource(resource)
    assert type(replaced).__name__ == "PatientReplaced"
    assert (replaced.patient_id, replaced.replaced_by) == ("pat-old", "pat-keep")


def test_locations_are_recorded_with_their_service_and_parent() -> None:
    [ward] = map_resource(load("location_ward"))
    [bed] = map_resource(load("location_bed"))
    assert isinstance(ward, LocationRecorded) and isinstance(bed, LocationRecorded)
    assert (ward.physical_type, ward.service_code, ward.service_name) == (
        "wa",
        "cardio",
        "Cardiologie",
    )
    assert (ward.part_of, ward.organization) == ("chu-dijon-site", "chu-dijon")
    assert (bed.physical_type, bed.part_of, bed.status) == ("bd", "ward-cardio", "active")


def test_types_without_pathway_meaning_map_to_nothing() -> None:
    assert map_resource({"resourceType": "Observation", "id": "o"}) == []
    # Valid R4 that R4B withdrew: nothing either.
    assert map_resource({"resourceType": "MedicinalProduct", "id": "m"}) == []


def test_patient_event_json_round_trip() -> None:
    for name in ("encounter_imp_transfers", "appointment_booked", "episode_of_care_home"):
        for ev in patient_events(map_resource(load(name))):
            data = json.loads(json.dumps(patient_event_to_json(ev)))
            assert patient_event_from_json(data) == ev


def test_version_falls_back_to_last_updated_then_a_content_hash() -> None:
    resource = load("encounter_amb")
    resource["meta"] = {"lastUpdated": "2026-01-20T09:30:00+01:00"}
    assert map_resource(resource)[0].source.version == "2026-01-20T09:30:00+01:00"
    del resource["meta"]
    first = map_resource(resource)[0].source.version
    assert first.startswith("sha256:")
    assert map_resource(copy.deepcopy(resource))[0].source.version == first
    resource["period"]["end"] = "2026-01-20T09:40:00+01:00"
    assert map_resource(resource)[0].source.version != first


def test_dates_without_a_time_are_midnight_utc_unless_a_zone_is_given() -> None:
    assert parse_time("2026-01-12") == datetime(2026, 1, 12, tzinfo=UTC)
    assert parse_time("2026") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_time("2026-01-12T08:15:00Z") == datetime(2026, 1, 12, 8, 15, tzinfo=UTC)


def test_a_stay_given_by_dates_starts_and_ends_at_midnight_in_the_territory() -> None:
    paris = ZoneInfo("Europe/Paris")
    stay = {
        "resourceType": "Encounter",
        "id": "s-dates",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/p-dates"},
        # Winter, then summer time: 23:00 and 22:00 UTC the day before.
        "period": {"start": "2026-03-20", "end": "2026-04-02"},
    }
    events = map_resource(stay, paris)
    admitted = next(ev for ev in events if isinstance(ev, PatientAdmitted))
    discharged = next(ev for ev in events if isinstance(ev, PatientDischarged))
    assert admitted.at == datetime(2026, 3, 19, 23, tzinfo=UTC)
    assert discharged.at == datetime(2026, 4, 1, 22, tzinfo=UTC)
    # A time, with its offset, is that instant whatever the zone; without a zone given, UTC.
    stay["status"] = "in-progress"

    def admitted_at(zone: ZoneInfo | None = None) -> datetime:
        events = map_resource(stay, zone) if zone else map_resource(stay)
        return next(ev.at for ev in events if isinstance(ev, PatientAdmitted))

    stay["period"] = {"start": "2026-03-20T10:00:00+01:00"}
    assert admitted_at(paris) == datetime(2026, 3, 20, 9, tzinfo=UTC)
    stay["period"] = {"start": "2026-03-20"}
    assert admitted_at() == datetime(2026, 3, 20, tzinfo=UTC)


# --- Refusals: each names the element, so the dead letter says what to fix -----------------------


def _patched(name: str, path: list[str | int], value: Any) -> dict[str, Any]:
    resource = load(name)
    node: Any = resource
    for key in path[:-1]:
        node = node[key]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return resource


@pytest.mark.parametrize(
    ("name", "path", "value", "message"),
    [
        ("encounter_emer", ["period", "start"], ..., "period.start is missing"),
        ("encounter_emer", ["period", "end"], "2026-01-11T00:00:00Z", "before period.start"),
        ("encounter_emer", ["period", "start"], "yesterday", "Encounter.period.start"),
        ("encounter_emer", ["subject"], {"reference": "Group/g1"}, "Encounter.subject"),
        ("encounter_emer", ["id"], ..., "Encounter.id"),
        ("encounter_imp_transfers", ["location", 0, "status"], "busy", "location[0].status"),
        ("encounter_imp_transfers", ["location", 0], "ward", "location[0]"),
        ("service_request_referral", ["status"], "sent", "ServiceRequest.status"),
        ("service_request_referral", ["subject"], ..., "ServiceRequest.subject"),
        ("appointment_booked", ["participant"], [], "Patient actor"),
        ("appointment_booked", ["status"], "ok", "Appointment.status"),
        ("episode_of_care_home", ["period", "end"], ..., "period.end is missing"),
        ("episode_of_care_home", ["status"], "done", "EpisodeOfCare.status"),
        ("location_ward", ["status"], "closed", "Location.status"),
        ("encounter_emer", ["class"], "EMER", "malformed Encounter"),
        ("encounter_emer", ["period", "start"], "0001-01-01T00:00:00Z", "Encounter.period.start"),
        ("encounter_emer", ["period", "end"], "9999-12-31T23:00:00Z", "years 1900–2099"),
        ("encounter_emer", ["period", "end"], "9999-12-31T23:00:00-14:00", "out of range"),
        ("appointment_booked", ["start"], "2100-01-01T00:00:00Z", "Appointment.start"),
        ("encounter_emer", ["period", "end"], "2026-01-12T23:59:60Z", "a leap second"),
        ("encounter_emer", ["period", "start"], "2026-02-30", "is not a FHIR dateTime"),
        # What SQL cannot store is refused here, for this resource alone.
        ("encounter_emer", ["id"], "e\x00x", "Encounter.id 'e\\x00x' is not a FHIR id"),
        ("encounter_emer", ["id"], "e\x1b[31m", "is not a FHIR id"),
        ("encounter_emer", ["id"], "e" * 65, "is not a FHIR id"),
        ("encounter_emer", ["id"], 12, "Encounter.id 12 is not a FHIR id"),
        ("location_ward", ["id"], "w\x00", "Location.id"),
        ("location_ward", ["name"], "Ward\x00A", "the name 'Ward\\x00A' holds a NUL"),
        ("encounter_emer", ["serviceProvider"], {"reference": "Organization/o\x00"}, "NUL"),
        ("encounter_emer", ["serviceProvider"], {"reference": "Organization/" + "o" * 129}, "128"),
        ("encounter_emer", ["meta", "versionId"], "1\x00", "the version '1\\x00' holds a NUL"),
        (
            "encounter_emer",
            ["hospitalization"],
            {"dischargeDisposition": {"coding": [{"code": "home\x00"}]}},
            "the disposition 'home\\x00' holds a NUL",
        ),
        (
            "encounter_imp_transfers",
            ["location", 0, "location"],
            {"reference": "Location/b\x00"},
            "holds a NUL",
        ),
    ],
)
def test_unmappable_resources_are_refused_with_a_reason(
    name: str, path: list[str | int], value: Any, message: str
) -> None:
    with pytest.raises(MappingError, match=re.escape(message)):
        map_resource(_patched(name, path, value))


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "Encounter",
        {"id": "x"},
        None,
        {"resourceType": ["Encounter"]},
        {"resourceType": "Foo", "id": "x"},
        {"resourceType": "encounter", "id": "x"},
    ],
)
def test_non_resources_are_refused(payload: Any) -> None:
    with pytest.raises(MappingError, match="resourceType"):
        map_resource(payload)


def test_a_nul_where_nothing_is_stored_is_not_refused() -> None:
    resource = load("encounter_emer")
    resource["identifier"] = [{"system": "urn:x", "value": "v\x00"}]
    assert kinds(map_resource(resource)) == ["EncounterRecorded", "EdArrived", "EdDeparted"]


# --- The real Synthea bundles --------------------------------------------------------------------


def _synthea_resources(shared_data: Path) -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = []
    for path in sorted((shared_data / SYNTHEA).glob("*.json")):
        resources.extend(resolve_entries(json.loads(path.read_text())))
    return resources


def test_every_synthea_entry_maps_and_the_counts_match_the_files(shared_data: Path) -> None:
    resources = _synthea_resources(shared_data)
    encounters = [r for r in resources if r["resourceType"] == "Encounter"]
    by_class = Counter(r["class"]["code"] for r in encounters)
    finished_by_class = Counter(r["class"]["code"] for r in encounters if r["status"] == "finished")
    deceased = [
        r for r in resources if r["resourceType"] == "Patient" and r.get("deceasedDateTime")
    ]
    died_dispositions = sum(
        1
        for r in encounters
        if discharge_disposition(r.get("hospitalization")) == "exp" and r["status"] == "finished"
    )

    events: list[Any] = []
    for resource in resources:
        events.extend(map_resource(resource))
    got = Counter(type(ev).__name__ for ev in events)

    assert got["EncounterRecorded"] == len(encounters)
    assert got["CommunityVisited"] == by_class["AMB"] + by_class["HH"] + by_class["VR"]
    assert got["EdArrived"] == by_class["EMER"]
    assert got["EdDeparted"] == finished_by_class["EMER"]
    assert got["PatientAdmitted"] == by_class["IMP"]
    assert got["PatientDischarged"] == finished_by_class["IMP"]
    assert got["PatientDied"] == len(deceased) + died_dispositions
    # The README's figures, as a cross-check of the test's own counting.
    assert (len(encounters), by_class["AMB"], by_class["EMER"], by_class["IMP"]) == (
        868,
        665,
        77,
        126,
    )

    # Each stay's times are the Encounter's period; the patient key is the subject.
    periods = {r["id"]: r["period"] for r in encounters}
    subjects = {r["id"]: r["subject"]["reference"].removeprefix("Patient/") for r in encounters}
    for ev in events:
        if isinstance(ev, PatientAdmitted):
            assert ev.at == parse_time(periods[ev.stay_id]["start"])
            assert ev.patient_id == subjects[ev.stay_id]
        elif isinstance(ev, PatientDischarged):
            assert ev.at == parse_time(periods[ev.stay_id]["end"])
            assert ev.at - parse_time(periods[ev.stay_id]["start"]) > timedelta(0)  # type: ignore[operator]
    for ev in events:
        if isinstance(ev, PatientEvent):
            assert ev.at.tzinfo is not None
            assert 1 <= ev.part <= ev.parts


def test_an_encounter_that_became_inpatient_keeps_its_ed_part() -> None:
    resource = load("encounter_imp_transfers")
    resource["period"]["start"] = "2026-01-12T08:15:00+01:00"
    resource["classHistory"] = [
        {
            "class": {"code": "EMER"},
            "period": {"start": "2026-01-12T08:15:00+01:00", "end": "2026-01-12T11:40:00+01:00"},
        },
        {"class": {"code": "IMP"}, "period": {"start": "2026-01-12T11:40:00+01:00"}},
    ]
    resource["location"].insert(
        0,
        {
            "location": {"reference": "Location/ed-box-3"},
            "status": "completed",
            "period": {"start": "2026-01-12T08:15:00+01:00", "end": "2026-01-12T11:40:00+01:00"},
        },
    )
    events = patient_events(map_resource(resource))
    assert kinds(events) == [
        "EdArrived",
        "EdDeparted",
        "PatientAdmitted",
        "PatientTransferred",
        "PatientDischarged",
    ]
    arrived, departed, admitted = events[:3]
    assert isinstance(arrived, EdArrived) and isinstance(departed, EdDeparted)
    assert isinstance(admitted, PatientAdmitted)
    assert arrived.at == utc("2026-01-12T07:15:00+00:00")
    assert departed.at == admitted.at == utc("2026-01-12T10:40:00+00:00")
    assert departed.admitted is True
    # The ED box is the ED's place, not the stay's.
    assert (admitted.ward, admitted.bed) == ("ward-cardio", "bed-cardio-12")


def test_class_history_without_an_ed_part_changes_nothing() -> None:
    resource = load("encounter_imp_transfers")
    resource["classHistory"] = [
        {"class": {"code": "IMP"}, "period": {"start": "2026-01-12T11:40:00+01:00"}}
    ]
    assert kinds(patient_events(map_resource(resource)))[0] == "PatientAdmitted"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("arrived", ["EdArrived"]),
        ("triaged", ["EdArrived"]),
        ("in-progress", ["EdArrived"]),
        ("finished", ["EdArrived", "EdDeparted"]),
        ("unknown", ["ResourceRetracted"]),
    ],
)
def test_ed_encounter_by_status(status: str, expected: list[str]) -> None:
    resource = load("encounter_emer") | {"status": status}
    if status != "finished":
        del resource["period"]["end"]
    assert kinds(patient_events(map_resource(resource))) == expected


def test_a_patient_on_leave_is_still_in_the_stay() -> None:
    resource = load("encounter_imp_transfers") | {"status": "onleave"}
    del resource["period"]["end"]
    assert "PatientDischarged" not in kinds(map_resource(resource))


@pytest.mark.parametrize(
    "reference",
    [
        "Patient/pat-9",
        "https://fhir.example/Patient/pat-9",
        "https://fhir.example/Patient/pat-9/_history/3",
        "urn:uuid:pat-9",
    ],
)
def test_patient_references_in_their_forms(reference: str) -> None:
    resource = load("encounter_amb") | {"subject": {"reference": reference}}
    assert {ev.patient_id for ev in map_resource(resource)} == {"pat-9"}  # type: ignore[union-attr]


def test_a_finished_encounter_without_its_end_ends_when_it_was_recorded() -> None:
    resource = load("encounter_imp_transfers")
    del resource["period"]["end"]
    del resource["location"][3]["period"]["end"]
    discharged = patient_events(map_resource(resource))[-1]
    assert isinstance(discharged, PatientDischarged)
    assert discharged.at == utc("2026-01-16T09:05:00+00:00")  # meta.lastUpdated
    [recorded] = [ev for ev in map_resource(resource) if isinstance(ev, EncounterRecorded)]
    assert recorded.end is None  # the encounters row keeps what the source said
    del resource["meta"]["lastUpdated"]
    with pytest.raises(MappingError, match=r"period\.end is missing"):
        map_resource(resource)


@pytest.mark.parametrize(
    "reference",
    [
        {"reference": "Location?identifier=https://github.com/synthetichealth/synthea|x"},
        {"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.2", "value": "210780581"}},
        {"reference": "Organization/o"},
    ],
)
def test_a_place_not_known_yet_keeps_the_stay_and_its_hospital(reference: Any) -> None:
    resource = _patched("encounter_imp_transfers", ["location", 0, "location"], reference)
    events = map_resource(resource)
    (admitted,) = [e for e in events if isinstance(e, PatientAdmitted)]
    assert admitted.at == parse_time(resource["period"]["start"])
    assert admitted.hospital == resource["serviceProvider"]["reference"].split("/")[-1]


def test_codes_longer_than_the_columns_are_cut_not_left_to_sql() -> None:
    resource = load("encounter_imp_transfers")
    resource["hospitalization"] = {
        "admitSource": {"coding": [{"code": "a" * 100}]},
        "dischargeDisposition": {"coding": [{"system": "urn:x", "code": "d" * 300}]},
    }
    events = map_resource(resource)
    admitted = next(ev for ev in events if isinstance(ev, PatientAdmitted))
    discharged = next(ev for ev in events if isinstance(ev, PatientDischarged))
    assert admitted.admit_source == "a" * 64
    assert discharged.disposition == "d" * 64


def test_an_organization_gives_its_name_cut_to_what_sql_keeps() -> None:
    [named] = map_resource(
        {"resourceType": "Organization", "id": "ch1", "meta": {"versionId": "2"}, "name": " CH "}
    )
    assert isinstance(named, OrganizationRecorded)
    assert (named.organization_id, named.name, named.source.resource_type) == (
        "ch1",
        "CH",
        "Organization",
    )
    [long] = map_resource({"resourceType": "Organization", "id": "ch2", "name": "x" * 300})
    assert isinstance(long, OrganizationRecorded) and long.name == "x" * 256
    [odd] = map_resource({"resourceType": "Organization", "id": "ch3", "name": ["not", "text"]})
    assert isinstance(odd, OrganizationRecorded) and odd.name is None
    with pytest.raises(MappingError, match="id"):
        map_resource({"resourceType": "Organization", "name": "no id"})


def test_a_stay_of_more_moves_than_any_stay_makes_is_refused() -> None:
    resource = load("encounter_imp_transfers")
    start = parse_time(resource["period"]["start"])
    assert start is not None

    def moves(n: int) -> list[dict[str, Any]]:
        return [
            {
                "location": {"reference": f"Location/w{i % 7}"},
                "status": "completed",
                "physicalType": {"coding": [{"code": "wa"}]},
                "period": {"start": (start + timedelta(minutes=i)).isoformat()},
            }
            for i in range(n)
        ]

    resource["period"]["end"] = (start + timedelta(days=2)).isoformat()
    resource["location"] = moves(MAX_MOVES)
    transfers = [ev for ev in map_resource(resource) if isinstance(ev, PatientTransferred)]
    assert len(transfers) == MAX_MOVES - 1
    resource["location"] = moves(MAX_MOVES + 1)
    with pytest.raises(MappingError, match=f"holds {MAX_MOVES + 1} moves"):
        map_resource(resource)
