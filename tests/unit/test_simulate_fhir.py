"""Every resource the simulator emits is valid R4 (fhir.resources R4B models) and follows
docs/FHIR_PROFILE.md; the deliberately invalid ones are not valid."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from simulate.fhir import OID_FINESS, OID_INS, OID_RPPS, SERVICE_SYSTEM, message_key
from simulate.imperfect import Deliverer, Delivery
from simulate.model import Simulation
from simulate.run import deliveries
from simulate.territory import Imperfections, Territory, default_territory, load_territory

SMALL = Path(__file__).resolve().parents[1] / "fixtures" / "simulate" / "small_territory.yaml"
START = datetime(2026, 3, 2, tzinfo=ZoneInfo("Europe/Paris"))

ENCOUNTER_STATUS = {"planned", "arrived", "triaged", "in-progress", "onleave", "finished"}
APPOINTMENT_STATUS = {"booked", "fulfilled", "noshow", "cancelled"}
LOCATION_ENTRY_STATUS = {"planned", "active", "reserved", "completed"}


@pytest.fixture(scope="module")
def territory() -> Territory:
    small = load_territory(SMALL)
    # More defects than the defaults, so that each kind shows up in a week.
    return replace(
        small,
        imperfections=Imperfections(
            duplicate_rate=0.03,
            out_of_order_rate=0.03,
            late_rate=0.02,
            missing_discharge_rate=0.05,
            invalid_rate=0.02,
        ),
    )


@pytest.fixture(scope="module")
def week(territory: Territory) -> list[Delivery]:
    sim = Simulation(territory, 17, START, 7)
    return list(deliveries(sim, Deliverer(territory.imperfections, 17)))


CLEAN = Imperfections(
    duplicate_rate=0,
    out_of_order_rate=0,
    late_rate=0,
    missing_discharge_rate=0,
    invalid_rate=0,
)


def validate(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_every_emitted_resource_validates_except_the_invalid_ones(week: list[Delivery]) -> None:
    types: Counter[str] = Counter()
    invalid = 0
    for d in week:
        if d.valid:
            validate(d.resource)
            types[d.resource["resourceType"]] += 1
        else:
            invalid += 1
            with pytest.raises(ValidationError):
                validate(d.resource)
    assert invalid > 20
    expected = {
        "Organization",
        "Location",
        "Practitioner",
        "Patient",
        "Encounter",
        "ServiceRequest",
        "Appointment",
        "EpisodeOfCare",
    }
    assert expected <= set(types), types
    classes = {
        d.resource["class"]["code"] for d in week if d.resource["resourceType"] == "Encounter"
    }
    assert {"AMB", "EMER", "IMP"} <= classes


def test_default_territory_places_and_people_validate() -> None:
    territory = default_territory()
    sim = Simulation(territory, 1, START, 0.01, warmup_days=0)
    resources = [d.resource for d in deliveries(sim, Deliverer(CLEAN, 1))]
    for r in resources:
        validate(r)
    orgs = [r for r in resources if r["resourceType"] == "Organization"]
    assert len(orgs) == 4 + 12
    assert all(r["identifier"][0]["system"] == OID_FINESS for r in orgs)
    assert all(len(r["identifier"][0]["value"]) == 9 for r in orgs)
    gps = [r for r in resources if r["resourceType"] == "Practitioner"]
    assert len(gps) == 150
    assert all(
        r["identifier"][0]["system"] == OID_RPPS and len(r["identifier"][0]["value"]) == 11
        for r in gps
    )
    chu_wards = [
        r
        for r in resources
        if r["resourceType"] == "Location"
        and r["physicalType"]["coding"][0]["code"] == "wa"
        and r["managingOrganization"]["reference"] == "Organization/chu-dijon"
    ]
    assert len(chu_wards) >= 20


def test_locations_form_site_ward_bed_with_capacity_as_active_beds(
    territory: Territory, week: list[Delivery]
) -> None:
    locations = {
        d.resource["id"]: d.resource for d in week if d.resource["resourceType"] == "Location"
    }
    kind = {i: r["physicalType"]["coding"][0]["code"] for i, r in locations.items()}
    beds_per_ward: Counter[str] = Counter()
    for loc_id, r in locations.items():
        if kind[loc_id] == "wa":
            assert kind[r["partOf"]["reference"].removeprefix("Location/")] == "si"
            coding = r["type"][0]["coding"][0]
            assert coding["system"] == SERVICE_SYSTEM and coding["code"] and coding["display"]
        elif kind[loc_id] == "bd":
            parent = r["partOf"]["reference"].removeprefix("Location/")
            assert kind[parent] == "wa"
            if r["status"] == "active":
                beds_per_ward[parent] += 1
        else:
            assert kind[loc_id] == "si" and "partOf" not in r
    assert {w.id: w.beds for w in territory.wards} == dict(beds_per_ward)
    ed = [
        r
        for r in locations.values()
        if r.get("type", [{}])[0].get("coding", [{}])[0].get("code") == "urgences"
    ]
    assert len(ed) == 1


def test_patients_carry_an_ins_and_references_use_type_slash_id(week: list[Delivery]) -> None:
    patients = [d.resource for d in week if d.resource["resourceType"] == "Patient"]
    assert patients
    for p in patients:
        ins = p["identifier"][0]
        assert ins["system"] == OID_INS and len(ins["value"]) == 15
        assert int(ins["value"][-2:]) == 97 - int(ins["value"][:13]) % 97
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("reference"), str):
                refs.append(node["reference"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for d in week:
        walk(d.resource)
    assert refs and all(r.count("/") == 1 and not r.startswith("urn:") for r in refs)


def test_every_patient_resource_is_preceded_by_its_patient(territory: Territory) -> None:
    # Delivery may reorder a little (late, out of order); the clean stream never does.
    sim = Simulation(territory, 5, START, 2)
    sim_order = [d.resource for d in deliveries(sim, Deliverer(CLEAN, 5))]
    seen: set[str] = set()
    for r in sim_order:
        if r["resourceType"] == "Patient":
            seen.add(r["id"])
        key = message_key(r)
        if "/" not in key:
            assert key in seen, r["resourceType"]


def test_encounter_versions_follow_the_adt_story(week: list[Delivery]) -> None:
    versions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in week:
        r = d.resource
        if r["resourceType"] == "Encounter" and d.tag in ("ok", "late", "out_of_order"):
            versions[r["id"]].append(r)
    imp_seen = transfer_seen = 0
    last_start_of_window = START.isoformat()
    for enc_id, vs in versions.items():
        vs.sort(key=lambda r: int(r["meta"]["versionId"]))
        numbers = [int(r["meta"]["versionId"]) for r in vs]
        assert numbers == sorted(set(numbers)), enc_id
        stamps = [datetime.fromisoformat(r["meta"]["lastUpdated"]) for r in vs]
        assert stamps == sorted(stamps), enc_id
        for r in vs:
            assert r["status"] in ENCOUNTER_STATUS
            entries = r.get("location", [])
            assert all(e["status"] in LOCATION_ENTRY_STATUS for e in entries)
            active = [e for e in entries if e["status"] == "active"]
            if r["status"] == "in-progress":
                assert len(active) == 1 and "end" not in active[0]["period"]
            elif r["status"] == "finished" and r["class"]["code"] != "AMB":
                assert not active
                for earlier, later in itertools.pairwise(entries):
                    assert earlier["period"]["end"] == later["period"]["start"]
        last = vs[-1]
        if last["class"]["code"] == "IMP":
            imp_seen += 1
            if len(last["location"]) > 1:
                transfer_seen += 1
            if last["status"] == "finished" and "end" in last["period"]:
                disposition = last["hospitalization"]["dischargeDisposition"]["coding"][0]
                assert disposition["code"] in {"home", "rehab", "other-hcf", "exp"}
                assert last["period"]["end"] == last["location"][-1]["period"]["end"]
            assert last["hospitalization"]["admitSource"]["coding"][0]["code"] in {"emd", "gp"}
            # Stays open at the start come in the initial load; their ED visit, over before the
            # start, does not.
            if "partOf" in last and last["period"]["start"] >= last_start_of_window:
                assert last["partOf"]["reference"].removeprefix("Encounter/") in versions
    assert imp_seen > 100 and transfer_seen > 0


def test_appointments_service_requests_and_home_care(week: list[Delivery]) -> None:
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in week:
        if d.valid:
            by_type[d.resource["resourceType"]].append(d.resource)
    assert {a["status"] for a in by_type["Appointment"]} >= {"booked", "fulfilled", "noshow"}
    assert {a["status"] for a in by_type["Appointment"]} <= APPOINTMENT_STATUS
    for a in by_type["Appointment"]:
        actors = [p["actor"]["reference"] for p in a["participant"]]
        assert any(x.startswith("Patient/") for x in actors)
        assert message_key(a) == actors[0].removeprefix("Patient/")
    for sr in by_type["ServiceRequest"]:
        assert sr["requester"]["reference"].startswith("Practitioner/")
        assert sr["performer"][0]["reference"].startswith("Organization/")
        assert sr["subject"]["reference"].startswith("Patient/") and sr["authoredOn"]
    for ep in by_type["EpisodeOfCare"]:
        assert ep["status"] in {"active", "finished"}
        assert ep["patient"]["reference"].startswith("Patient/")


def test_kafka_keys_are_patient_ids_or_type_slash_id(week: list[Delivery]) -> None:
    for d in week[:5000]:
        r = d.resource
        key = message_key(r)
        if r["resourceType"] in ("Organization", "Location", "Practitioner"):
            assert key == f"{r['resourceType']}/{r['id']}"
        else:
            assert "/" not in key and key.startswith("pat-")
