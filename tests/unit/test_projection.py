"""Pathway state → SQL rows (pure): stays with their periods, visits, alert rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streams.core.events import (
    AppointmentBooked,
    CommunityVisited,
    EdArrived,
    EdDeparted,
    PatientAdmitted,
    PatientDischarged,
    PatientTransferred,
    ReferralSent,
    ResourceRetracted,
    SourceRef,
)
from streams.core.pathway import AlertResolved, transition
from streams.core.projection import patient_rows

T0 = datetime(2026, 2, 1, 8, tzinfo=UTC)


def t(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def src(rid: str, version: str = "1") -> SourceRef:
    return SourceRef("Encounter", rid, version)


ADMITTED = PatientAdmitted(
    patient_id="p", at=t(0), source=src("s1"), stay_id="s1", hospital="h", ward="w1", bed="b1"
)
# Version 2 of the same Encounter says all of it again: admission, move, discharge.
STAY = [
    ADMITTED,
    PatientAdmitted(
        patient_id="p",
        at=t(0),
        source=src("s1", "2"),
        stay_id="s1",
        hospital="h",
        ward="w1",
        bed="b1",
        part=1,
        parts=3,
    ),
    PatientTransferred(
        patient_id="p",
        at=t(5),
        source=src("s1", "2"),
        stay_id="s1",
        location="b9",
        ward="w2",
        bed="b9",
        part=2,
        parts=3,
    ),
    PatientDischarged(
        patient_id="p",
        at=t(30),
        source=src("s1", "2"),
        stay_id="s1",
        disposition="home",
        part=3,
        parts=3,
    ),
]


@pytest.mark.parametrize(
    ("events", "stays", "periods"),
    [
        pytest.param(
            STAY[:1],
            [("s1", t(0), None, None)],
            [(0, "b1", "w1", t(0), None, False)],
            id="open stay",
        ),
        pytest.param(
            STAY,
            [("s1", t(0), t(30), 30.0)],
            [(0, "b1", "w1", t(0), t(5), False), (1, "b9", "w2", t(5), t(30), True)],
            id="transferred then discharged",
        ),
    ],
)
def test_stays_and_periods(events: list, stays: list, periods: list) -> None:
    state = None
    for ev in events:
        state, _ = transition(state, ev)
    assert state is not None
    rows = patient_rows(state)
    assert [
        (s["stay_id"], s["admitted_at"], s["discharged_at"], s["los_hours"]) for s in rows.stays
    ] == stays
    assert [
        (p["seq"], p["location_id"], p["ward_ref"], p["start_at"], p["end_at"], p["discharged"])
        for p in rows.periods
    ] == periods
    assert all(p["hospital_id"] == "h" for p in rows.periods)


def test_visits_and_alert_resolutions() -> None:
    state = None
    for ev in [
        EdArrived(
            patient_id="p",
            at=t(0),
            source=src("e1"),
            encounter_id="e1",
            hospital="h",
            part=1,
            parts=2,
        ),
        EdDeparted(patient_id="p", at=t(3), source=src("e1"), encounter_id="e1", part=2, parts=2),
        CommunityVisited(
            patient_id="p", at=t(50), source=src("c1"), encounter_id="c1", class_code="AMB"
        ),
    ]:
        state, _ = transition(state, ev)
    assert state is not None
    resolved = AlertResolved("no_follow_up:p:s0", "no_follow_up", "p", t(50), "s0")
    rows = patient_rows(state, [resolved])
    assert [(v["encounter_id"], v["arrived_at"], v["departed_at"]) for v in rows.ed_visits] == [
        ("e1", t(0), t(3))
    ]
    assert [v["encounter_id"] for v in rows.community_visits] == ["c1"]
    # An alert raised in an earlier batch: only its resolution is written.
    assert rows.resolutions == {"no_follow_up:p:s0": t(50)}
    assert rows.state["patient_id"] == "p"


def test_a_record_merged_into_another_patient_keeps_no_rows() -> None:
    from streams.core.fhir_map import map_resource, patient_events

    encounter = {
        "resourceType": "Encounter",
        "id": "enc-m",
        "meta": {"versionId": "1"},
        "status": "finished",
        "class": {"code": "EMER"},
        "subject": {"reference": "Patient/pat-old"},
        "period": {"start": "2026-01-06T03:00:00+01:00", "end": "2026-01-06T05:00:00+01:00"},
    }
    merged = {
        "resourceType": "Patient",
        "id": "pat-old",
        "meta": {"versionId": "2", "lastUpdated": "2026-01-07T10:00:00+01:00"},
        "link": [{"other": {"reference": "Patient/pat-keep"}, "type": "replaced-by"}],
    }
    state = None
    for resource in (encounter, merged):
        for ev in patient_events(map_resource(resource)):
            state, _ = transition(state, ev)
    assert state is not None
    assert state.facts.replaced_by == "pat-keep"
    rows = patient_rows(state)
    assert rows.ed_visits == [] and rows.stays == [] and rows.community_visits == []
    assert rows.state["replaced_by"] == "pat-keep"
    # The state survives its JSON round trip with the merge.
    assert type(state).from_json(state.to_json()).facts.replaced_by == "pat-keep"


def test_appointments_with_the_hospital_of_their_referral() -> None:
    state = None
    for ev in [
        ReferralSent(
            patient_id="p",
            at=t(0),
            source=SourceRef("ServiceRequest", "r1", "1"),
            referral_id="r1",
            performer="h",
        ),
        AppointmentBooked(
            patient_id="p",
            at=t(1),
            source=SourceRef("Appointment", "a1", "1"),
            appointment_id="a1",
            start=t(200),
            based_on="r1",
            service="cardio",
        ),
        AppointmentBooked(
            patient_id="p",
            at=t(2),
            source=SourceRef("Appointment", "a2", "1"),
            appointment_id="a2",
            start=t(300),
            location="ward-9",
        ),
    ]:
        state, _ = transition(state, ev)
    assert state is not None
    rows = patient_rows(state)
    assert [
        (
            a["appointment_id"],
            a["status"],
            a["start_at"],
            a["booked_at"],
            a["hospital_id"],
            a["service_code"],
            a["location_id"],
        )
        for a in rows.appointments
    ] == [
        ("a1", "booked", t(200), t(1), "h", "cardio", None),
        ("a2", "booked", t(300), t(2), None, None, "ward-9"),
    ]
    # A cancelled appointment is retracted: its row goes.
    state, _ = transition(
        state,
        ResourceRetracted(
            patient_id="p", at=t(3), source=SourceRef("Appointment", "a1", "2"), reason="cancelled"
        ),
    )
    assert [a["appointment_id"] for a in patient_rows(state).appointments] == ["a2"]


def test_row_changes_name_what_differs_from_the_previous_state() -> None:
    """The records an event changes, those it removes, and the digest of the previous ones."""
    from streams.core.projection import row_changes

    first, _ = transition(None, ADMITTED)
    rows = patient_rows(first)
    # No previous state: every record is new.
    new = row_changes(None, rows)
    assert new.base is None
    assert new.changed["stays"] == [0] and new.changed["periods"] == [0]
    assert all(keys == [] for keys in new.gone.values())
    # The same state again: nothing changed, and the digest is the stored one.
    same = row_changes(first, patient_rows(first))
    assert same.base == rows.digest
    assert all(i == [] for i in same.changed.values())

    visited, _ = transition(
        first,
        CommunityVisited(
            patient_id="p",
            at=t(1),
            source=SourceRef("Encounter", "v1", "1"),
            encounter_id="v1",
            class_code="AMB",
        ),
    )
    after_visit = patient_rows(visited)
    changes = row_changes(first, after_visit)
    assert changes.base == rows.digest != after_visit.digest
    assert changes.changed == {
        "stays": [],
        "periods": [],
        "ed_visits": [],
        "community_visits": [0],
        "referrals": [],
        "appointments": [],
    }
    # Version 2 of the stay: a move and a discharge change its stay row and its first period,
    # and add a second one.
    discharged = visited
    for ev in STAY[1:]:
        discharged, _ = transition(discharged, ev)
    changes = row_changes(visited, patient_rows(discharged))
    assert (changes.changed["stays"], changes.changed["periods"]) == ([0], [0, 1])
    assert changes.changed["community_visits"] == []
    # The visit withdrawn: its record goes.
    withdrawn, _ = transition(
        discharged,
        ResourceRetracted(
            patient_id="p", at=t(40), source=SourceRef("Encounter", "v1", "2"), reason="cancelled"
        ),
    )
    changes = row_changes(discharged, patient_rows(withdrawn))
    assert changes.gone["community_visits"] == [("v1",)]
    assert all(i == [] for i in changes.changed.values())
