"""HL7 v2 ADT (IHE PAM / PAM.fr) → FHIR: one test per trigger and per cancel, from PAM.fr-style
messages (tests/hl7_messages.py), checked down to the pathway events streams/core/fhir_map.py
makes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ingest.hl7_map import (
    AdtMessage,
    EncounterState,
    Hl7Rejection,
    ack_message,
    apply_adt,
    encounter_resource,
    encounter_status,
    location_resources,
    parse_adt,
    parse_ts,
    patient_resource,
    read_header,
    withdrawn_encounter,
)
from ingest.validate import validate_resource
from parcours.timeutil import outside_care_years
from streams.core.fhir_map import map_resource
from tests.hl7_messages import INS_OID, adt

PARIS = ZoneInfo("Europe/Paris")


def parse(raw: bytes) -> AdtMessage:
    return parse_adt(raw, PARIS)


def run(*messages: bytes) -> EncounterState:
    """Apply messages in order, as the listener does."""
    state: EncounterState | None = None
    for raw in messages:
        state = apply_adt(state, parse(raw))
    assert state is not None
    return replace(state, version=1)


def kinds(resource: dict[str, Any]) -> list[str]:
    return [type(e).__name__ for e in map_resource(resource)]


def assert_valid(resource: dict[str, Any]) -> None:
    _status, reason, issues = validate_resource(resource, resource["resourceType"])
    assert not issues, (reason, issues)


ADMIT = adt("A01", movement="M1", at="20260301100000")


# --- Triggers -----------------------------------------------------------------------------------


def test_a01_admission_gives_an_inpatient_encounter_in_its_ward_and_bed() -> None:
    msg = parse(ADMIT)
    enc = encounter_resource(run(ADMIT))
    assert_valid(enc)
    assert enc["status"] == "in-progress"
    assert enc["class"]["code"] == "IMP"
    assert enc["subject"] == {"reference": "Patient/IPP001"}
    assert enc["period"] == {"start": "2026-03-01T10:00:00+01:00"}
    assert enc["serviceProvider"] == {"reference": "Organization/CHU21"}
    places = [
        (e["location"]["reference"], e["physicalType"]["coding"][0]["code"], e["status"])
        for e in enc["location"]
    ]
    assert places == [
        ("Location/CHU21-CARDIO", "wa", "active"),
        ("Location/CHU21-CARDIO-101-1", "bd", "active"),
    ]
    assert kinds(enc) == ["EncounterRecorded", "PatientAdmitted"]
    admitted = map_resource(enc)[1]
    assert admitted.ward == "CHU21-CARDIO" and admitted.bed == "CHU21-CARDIO-101-1"  # type: ignore[attr-defined]
    assert msg.movement is not None and msg.movement.movement_id == "CHU21:M1"


def test_pid3_gives_the_ipp_and_the_ins_with_its_oid() -> None:
    patient = patient_resource(parse(ADMIT).patient, 1)
    assert_valid(patient)
    by_system = {i["system"]: i for i in patient["identifier"]}
    assert by_system["urn:oid:1.2.250.1.71.4.2.2"]["value"] == "IPP001"
    assert by_system["urn:oid:1.2.250.1.71.4.2.2"]["type"]["coding"][0]["code"] == "PI"
    ins = by_system[f"urn:oid:{INS_OID}"]
    assert ins["value"] == "2850475123456"
    assert ins["type"]["coding"][0]["code"] == "INS-NIR"
    assert patient["name"] == [{"use": "official", "family": "MARTIN", "given": ["Élodie"]}]
    assert patient["birthDate"] == "1985-04-12" and patient["gender"] == "female"


def test_location_hierarchy_is_bed_room_ward_facility() -> None:
    place = parse(ADMIT).visit.place  # type: ignore[union-attr]
    assert place is not None
    locs = {r["id"]: r for r in location_resources(place)}
    for r in locs.values():
        assert_valid(r)
    bed = locs["CHU21-CARDIO-101-1"]
    assert bed["physicalType"]["coding"][0]["code"] == "bd"
    room = locs[bed["partOf"]["reference"].removeprefix("Location/")]
    assert room["physicalType"]["coding"][0]["code"] == "ro"
    ward = locs[room["partOf"]["reference"].removeprefix("Location/")]
    assert ward["physicalType"]["coding"][0]["code"] == "wa" and ward["name"] == "CARDIO"
    site = locs[ward["partOf"]["reference"].removeprefix("Location/")]
    assert site["physicalType"]["coding"][0]["code"] == "si"
    assert site["managingOrganization"] == {"reference": "Organization/CHU21"}


@pytest.mark.parametrize(
    ("pv1_2", "fhir_class", "event"), [("E", "EMER", "EdArrived"), ("O", "AMB", "CommunityVisited")]
)
def test_a04_registration_takes_its_class_from_pv1_2(
    pv1_2: str, fhir_class: str, event: str
) -> None:
    enc = encounter_resource(run(adt("A04", patient_class=pv1_2)))
    assert enc["class"]["code"] == fhir_class and enc["status"] == "in-progress"
    assert kinds(enc)[1] == event


def test_a05_preadmission_is_planned_and_not_on_the_pathway_yet() -> None:
    enc = encounter_resource(run(adt("A05", patient_class="P", at="20260310080000")))
    assert_valid(enc)
    assert enc["status"] == "planned"
    assert {e["status"] for e in enc["location"]} == {"planned"}
    assert kinds(enc) == ["EncounterRecorded", "ResourceRetracted"]


def test_a05_then_a01_admits_at_the_admission_time() -> None:
    enc = encounter_resource(
        run(
            adt("A05", movement="P1", at="20260301080000"),
            adt("A01", movement="M1", at="20260302100000"),
        )
    )
    assert enc["status"] == "in-progress"
    assert enc["period"]["start"] == "2026-03-02T10:00:00+01:00"


def test_a02_transfer_closes_the_previous_place() -> None:
    enc = encounter_resource(
        run(ADMIT, adt("A02", movement="M2", at="20260302120000", ward="NEURO", room="", bed=""))
    )
    assert_valid(enc)
    entries = [(e["location"]["reference"], e["status"], e["period"]) for e in enc["location"]]
    assert entries[0] == (
        "Location/CHU21-CARDIO",
        "completed",
        {"start": "2026-03-01T10:00:00+01:00", "end": "2026-03-02T12:00:00+01:00"},
    )
    assert entries[-1] == ("Location/CHU21-NEURO", "active", {"start": "2026-03-02T12:00:00+01:00"})
    assert kinds(enc) == ["EncounterRecorded", "PatientAdmitted", "PatientTransferred"]


def test_a02_out_of_order_lands_between_the_moves() -> None:
    a = adt("A02", movement="M3", at="20260303100000", ward="PNEUMO")
    b = adt("A02", movement="M2", at="20260302100000", ward="NEURO")
    in_order = encounter_resource(run(ADMIT, b, a))
    late = encounter_resource(run(ADMIT, a, b))
    assert late["location"] == in_order["location"]
    wards = [
        e["location"]["reference"]
        for e in late["location"]
        if e["physicalType"]["coding"][0]["code"] == "wa"
    ]
    assert wards == ["Location/CHU21-CARDIO", "Location/CHU21-NEURO", "Location/CHU21-PNEUMO"]


def test_a03_discharge_finishes_the_stay_with_its_disposition() -> None:
    enc = encounter_resource(
        run(ADMIT, adt("A03", movement="M9", at="20260305110000", discharge_mode="8"))
    )
    assert_valid(enc)
    assert enc["status"] == "finished"
    assert enc["period"]["end"] == "2026-03-05T11:00:00+01:00"
    assert {e["status"] for e in enc["location"]} == {"completed"}
    assert enc["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "home"
    assert kinds(enc)[-1] == "PatientDischarged"


def test_a03_with_death_gives_patient_died() -> None:
    enc = encounter_resource(
        run(ADMIT, adt("A03", movement="M9", at="20260305110000", discharge_mode="9"))
    )
    assert kinds(enc)[-1] == "PatientDied"


def test_a06_emergency_to_inpatient_is_an_ed_visit_then_an_admission() -> None:
    enc = encounter_resource(
        run(
            adt("A04", movement="E1", patient_class="E", ward="URG", at="20260301020000"),
            adt("A06", movement="E2", patient_class="I", ward="CARDIO", at="20260301060000"),
        )
    )
    assert_valid(enc)
    assert enc["class"]["code"] == "IMP"
    assert [h["class"]["code"] for h in enc["classHistory"]] == ["EMER", "IMP"]
    assert kinds(enc) == ["EncounterRecorded", "EdArrived", "EdDeparted", "PatientAdmitted"]


def test_a07_inpatient_to_outpatient_changes_the_class() -> None:
    enc = encounter_resource(
        run(ADMIT, adt("A07", movement="M2", patient_class="O", at="20260302100000"))
    )
    assert enc["class"]["code"] == "AMB"
    assert [h["class"]["code"] for h in enc["classHistory"]] == ["IMP", "AMB"]


def test_a08_updates_the_stay_without_a_movement() -> None:
    before = run(ADMIT)
    update = adt("A08", movement=None, service="CAR")
    after = apply_adt(before, parse(update))
    assert len(after.movements) == 1
    assert after.service == "CAR"
    assert encounter_resource(after)["serviceType"]["coding"][0]["code"] == "CAR"


def test_a21_leave_and_a22_return() -> None:
    leave = adt("A21", movement="L1", at="20260302140000")
    back = adt("A22", movement="L2", at="20260302200000")
    assert encounter_status(run(ADMIT, leave)) == "onleave"
    assert encounter_status(run(ADMIT, leave, back)) == "in-progress"


# --- Cancels ------------------------------------------------------------------------------------


def test_a11_cancels_exactly_the_admission_movement() -> None:
    cancel = adt("A11", movement="M1", action="CANCEL", original="A01")
    state = run(ADMIT, cancel)
    enc = encounter_resource(state)
    assert enc["status"] == "cancelled"
    assert kinds(enc) == ["EncounterRecorded", "ResourceRetracted"]


def test_a11_without_zbe_cancels_the_latest_admission() -> None:
    state = run(adt("A01", movement=None), adt("A11", movement=None, at="20260301110000"))
    assert encounter_status(state) == "cancelled"


def test_a12_cancels_the_transfer_and_only_it() -> None:
    t1 = adt("A02", movement="M2", at="20260302100000", ward="NEURO")
    t2 = adt("A02", movement="M3", at="20260303100000", ward="PNEUMO")
    enc = encounter_resource(
        run(ADMIT, t1, t2, adt("A12", movement="M2", action="CANCEL", original="A02"))
    )
    wards = [
        e["location"]["reference"]
        for e in enc["location"]
        if e["physicalType"]["coding"][0]["code"] == "wa"
    ]
    assert wards == ["Location/CHU21-CARDIO", "Location/CHU21-PNEUMO"]


def test_a13_cancels_the_discharge() -> None:
    discharge = adt("A03", movement="M9", at="20260305110000")
    enc = encounter_resource(
        run(ADMIT, discharge, adt("A13", movement="M9", action="CANCEL", original="A03"))
    )
    assert enc["status"] == "in-progress"
    assert "end" not in enc["period"]
    assert "PatientDischarged" not in kinds(enc)


def test_a52_cancels_the_leave_and_a53_the_return() -> None:
    leave = adt("A21", movement="L1", at="20260302140000")
    back = adt("A22", movement="L2", at="20260302200000")
    assert (
        encounter_status(
            run(ADMIT, leave, adt("A52", movement="L1", action="CANCEL", original="A21"))
        )
        == "in-progress"
    )
    assert (
        encounter_status(
            run(ADMIT, leave, back, adt("A53", movement="L2", action="CANCEL", original="A22"))
        )
        == "onleave"
    )


def test_a38_cancels_the_preadmission() -> None:
    pre = adt("A05", movement="P1", patient_class="P")
    assert (
        encounter_status(run(pre, adt("A38", movement="P1", action="CANCEL", original="A05")))
        == "cancelled"
    )


def test_z99_updates_a_movement_in_place() -> None:
    update = adt(
        "Z99", movement="M1", action="UPDATE", original="A01", at="20260301093000", ward="NEURO"
    )
    state = run(ADMIT, update)
    assert len(state.movements) == 1
    enc = encounter_resource(state)
    assert enc["period"]["start"] == "2026-03-01T09:30:00+01:00"
    assert enc["location"][0]["location"]["reference"] == "Location/CHU21-NEURO"


def test_a40_names_the_surviving_and_the_merged_patient() -> None:
    msg = parse(adt("A40", ipp="IPP002", merged_ipp="IPP001"))
    assert msg.patient.patient_id == "IPP002"
    assert msg.merged_patient is not None and msg.merged_patient.patient_id == "IPP001"
    old = patient_resource(msg.merged_patient, 2, replaced_by="IPP002")
    assert_valid(old)
    assert old["active"] is False
    assert old["link"] == [{"other": {"reference": "Patient/IPP002"}, "type": "replaced-by"}]
    state = replace(run(ADMIT), patient_id="IPP001")
    gone = withdrawn_encounter(state)
    assert gone["status"] == "entered-in-error"
    assert kinds(gone) == ["EncounterRecorded", "ResourceRetracted"]


# --- Idempotency -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        ADMIT,
        adt("A02", movement="M2", at="20260302100000", ward="NEURO"),
        adt("A11", movement="M1", action="CANCEL", original="A01"),
        adt("A03", movement=None, at="20260305100000"),
    ],
)
def test_a_repeated_message_changes_nothing(message: bytes) -> None:
    once = apply_adt(run(ADMIT), parse(message))
    twice = apply_adt(once, parse(message))
    assert twice.content() == once.content()


def test_a_cancel_before_its_movement_keeps_the_movement_out() -> None:
    cancel = adt("A12", movement="M2", action="CANCEL", original="A02")
    late = adt("A02", movement="M2", at="20260302100000", ward="NEURO")
    enc = encounter_resource(run(ADMIT, cancel, late))
    assert all("NEURO" not in e["location"]["reference"] for e in enc["location"])


# --- Reading: times, character sets, refusals ------------------------------------------------


def test_ts_without_offset_is_read_in_the_territory_zone() -> None:
    assert parse_ts("20260301100000", PARIS) == datetime(2026, 3, 1, 9, tzinfo=UTC)
    assert parse_ts("20260701100000", PARIS) == datetime(2026, 7, 1, 8, tzinfo=UTC)
    assert parse_ts("202607011000-0400", PARIS) == datetime(2026, 7, 1, 14, tzinfo=UTC)
    assert parse_ts("20260701100000.25+0000", PARIS) == datetime(
        2026, 7, 1, 10, 0, 0, 250000, tzinfo=UTC
    )
    assert parse_ts("", PARIS) is None
    with pytest.raises(ValueError):
        parse_ts("2026-07-01", PARIS)


@pytest.mark.parametrize("at", ["00010101000000", "99991231230000", "18991231230000"])
def test_a_time_outside_the_years_of_care_is_an_ae_naming_its_field(at: str) -> None:
    with pytest.raises(ValueError, match="outside the years 1900–2099"):
        parse_ts(at, PARIS)
    payload = adt("A01", at=at)
    with pytest.raises(Hl7Rejection) as refused:
        parse_adt(payload, PARIS, read_header(payload))
    assert (refused.value.ack_code, refused.value.reason) == ("AE", "invalid-ts")
    assert (refused.value.segment, refused.value.field_no) == ("MSH", 7)


@pytest.mark.parametrize("at", ["20991231233000-0100", "19000101000000"])
def test_the_years_of_care_are_read_as_written_as_at_the_gateway(at: str) -> None:
    """The year as written bounds a time, as the gateway and the worker bound a FHIR time: these
    are instants of 2100 and 1899 in UTC, and accepted with the offset they were written in."""
    instant = parse_ts(at, PARIS)
    assert instant is not None and instant.astimezone(UTC).year in (1899, 2100)
    written = encounter_resource(run(adt("A01", at=at)))["period"]["start"]
    assert written[:4] == at[:4]
    assert not outside_care_years(written)
    assert validate_resource(encounter_resource(run(adt("A01", at=at))))[0] == 0


@pytest.mark.parametrize("charset", ["8859/1", "UNICODE UTF-8"])
def test_msh18_character_sets_are_honoured(charset: str) -> None:
    raw = adt("A01", charset=charset, given="Jérôme")
    assert parse(raw).patient.given == "Jérôme"


def test_msh18_mismatch_is_refused_at_msh18() -> None:
    raw = (
        adt("A01", charset="8859/1", given="Jérôme")
        .replace(b"\xe9", b"\xff\xfe")
        .replace(b"8859/1", b"UNICODE UTF-8")
    )
    with pytest.raises(Hl7Rejection) as err:
        parse(raw)
    assert err.value.location == "MSH-18" and err.value.ack_code == "AE"


@pytest.mark.parametrize(
    ("raw", "ack", "where"),
    [
        (adt("A01", nda=""), "AE", "PV1-19"),
        (adt("A01", patient_class=""), "AE", "PV1-2"),
        (adt("A01", patient_class="Z"), "AE", "PV1-2"),
        (adt("A01", ward=""), "AE", "PV1-3"),
        (adt("A01", ipp="", ins=None), "AE", "PID-3"),
        # HL7's null value and blanks are no identifier.
        (adt("A01", ipp='""', ins=None), "AE", "PID-3"),
        (adt("A01", ipp="   ", ins=None), "AE", "PID-3"),
        (adt("A01", nda='""'), "AE", "PV1-19"),
        (adt("A01", action="MAYBE"), "AE", "ZBE-4"),
        (adt("A01", at="20261301"), "AE", "MSH-7"),
        (adt("A01", control_id=" "), "AE", "MSH-10"),
        (adt("A31"), "AR", "MSH-9.2"),
        (adt("A01", version="2.2"), "AR", "MSH-12"),
        (adt("A01", message_type="ORM"), "AR", "MSH-9"),
        (adt("A40", ipp="X1", merged_ipp="X1"), "AE", "MRG-1"),
        # Control characters, escaped or raw, as the FHIR gateway refuses them.
        (adt("A01", ipp="IPP\\X00\\1"), "AE", "PID-3"),
        (adt("A01", ward="CAR\\X07\\DIO"), "AE", "PV1-3"),
        (adt("A01", family="MAR\x01TIN"), "AE", "PID-5"),
        # MSH-2 gives four separators, each once, none of them MSH-1's.
        (adt("A01").replace(b"MSH|^~\\&", b"MSH|^^~\\&", 1), "AE", "MSH-2"),
        (adt("A01").replace(b"MSH|^~\\&", b"MSH|^~|&", 1), "AE", "MSH-2"),
        (adt("A01").replace(b"MSH|^~\\&", b"MSH||", 1), "AE", "MSH-2"),
    ],
)
def test_invalid_messages_name_the_segment_and_field(raw: bytes, ack: str, where: str) -> None:
    with pytest.raises(Hl7Rejection) as err:
        parse(raw)
    assert err.value.ack_code == ack
    assert err.value.location == where


@pytest.mark.parametrize(
    "ends",
    [b"\r\n", b"\n", b"\r\r", b"\r\n\r\n", b"\r \r"],
    ids=["crlf", "lf", "blank-line", "crlf-blank-line", "blank-segment"],
)
def test_segments_ended_otherwise_than_by_cr_read_as_with_cr(ends: bytes) -> None:
    raw = adt("A01", ipp="CRLF1", nda="CRLFN1")
    assert parse(raw.replace(b"\r", ends)) == parse(raw)


def test_a_version_27_truncation_character_in_msh2_is_allowed() -> None:
    raw = adt("A01", ipp="TRUNC1")
    assert parse(raw.replace(b"MSH|^~\\&", b"MSH|^~\\&#", 1)).patient.patient_id == "TRUNC1"


def test_a_null_ipp_does_not_make_one_patient_of_everyone_who_sends_it() -> None:
    first = parse(adt("A01", ipp='""', ins="2850475123456"))
    second = parse(adt("A01", ipp='""', ins="1850475123457"))
    assert first.patient.patient_id == "2850475123456"
    assert second.patient.patient_id == "1850475123457"
    assert [i.value for i in first.patient.identifiers] == ["2850475123456"]


def test_ack_echoes_the_control_id_and_carries_err() -> None:
    raw = adt("A01", nda="", control_id="CTRL42")
    with pytest.raises(Hl7Rejection) as err:
        parse(raw)
    text = ack_message(read_header(raw), "AE", datetime(2026, 3, 1, tzinfo=UTC), "ACK1", err.value)
    segments = text.rstrip("\r").split("\r")
    assert segments[0].startswith("MSH|^~\\&|PARCOURS|PARCOURS|GAM|CHU21|")
    assert segments[0].split("|")[8] == "ACK^A01^ACK"
    assert segments[1].split("|")[:3] == ["MSA", "AE", "CTRL42"]
    assert segments[2].split("|")[2] == "PV1^1^19^1"
    assert segments[2].split("|")[3].startswith("101^")


def test_every_trigger_yields_valid_fhir() -> None:
    msgs = [
        adt("A05", movement="P1", at="20260228090000"),
        ADMIT,
        adt("A02", movement="M2", at="20260302100000", ward="NEURO"),
        adt("A21", movement="L1", at="20260302140000"),
        adt("A22", movement="L2", at="20260302200000"),
        adt("A06", movement="C1", at="20260303100000", patient_class="I"),
        adt("A03", movement="M9", at="20260305110000", discharge_mode="7"),
    ]
    state: EncounterState | None = None
    for raw in msgs:
        state = apply_adt(state, parse(raw))
        assert state is not None
        assert_valid(encounter_resource(replace(state, version=1)))
        map_resource(encounter_resource(replace(state, version=1)))
