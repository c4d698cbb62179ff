"""Pathway state → SQL rows (pure): stays with their periods, visits, alert rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streams.core.events import (
    CommunityVisited,
    EdArrived,
    EdDeparted,
    PatientAdmitted,
    PatientDischarged,
    PatientTransferred,
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
