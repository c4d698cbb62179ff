"""The pathway state machine: table-driven event sequences for every transition and alert."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ingest.bundle import resolve_entries
from streams.core import pathway
from streams.core.events import (
    AppointmentBooked,
    CommunityVisited,
    EdArrived,
    EdDeparted,
    HomeCareEnded,
    HomeCareStarted,
    PatientAdmitted,
    PatientDied,
    PatientDischarged,
    PatientEvent,
    PatientTransferred,
    ReferralSent,
    ResourceRetracted,
    SourceRef,
)
from streams.core.fhir_map import map_resource, patient_events
from streams.core.pathway import (
    AlertRaised,
    AlertResolved,
    EventIgnored,
    OccupancyChanged,
    Output,
    PathwayRules,
    PatientState,
    RecordChanged,
    RecordRemoved,
    Stage,
    StageChanged,
    alert_id,
    check_timers,
    invariant_violations,
    output_to_json,
    transition,
)
from streams.core.projection import patient_rows, row_changes

P = "pat-1"
T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def d(days: float) -> datetime:
    return T0 + timedelta(days=days)


def src(rtype: str, rid: str, version: str = "1") -> SourceRef:
    return SourceRef(rtype, rid, version)


# Each helper builds the events one resource version maps to (stamped part/parts like fhir_map).


def _parts(events: list[PatientEvent]) -> list[PatientEvent]:
    return [replace(ev, part=i, parts=len(events)) for i, ev in enumerate(events, start=1)]


def referral(rid: str, at: datetime, status: str = "active", v: str = "1") -> list[PatientEvent]:
    return [
        ReferralSent(
            patient_id=P,
            at=at,
            source=src("ServiceRequest", rid, v),
            referral_id=rid,
            requester="gp",
            status=status,
        )
    ]


def appointment(
    aid: str, at: datetime, start: datetime, based_on: str | None = None, status: str = "booked"
) -> list[PatientEvent]:
    return [
        AppointmentBooked(
            patient_id=P,
            at=at,
            source=src("Appointment", aid),
            appointment_id=aid,
            start=start,
            status=status,
            based_on=based_on,
        )
    ]


def visit(eid: str, at: datetime, based_on: str | None = None, v: str = "1") -> list[PatientEvent]:
    return [
        CommunityVisited(
            patient_id=P,
            at=at,
            source=src("Encounter", eid, v),
            encounter_id=eid,
            class_code="AMB",
            end=at + timedelta(minutes=20),
            based_on=based_on,
        )
    ]


def ed(eid: str, start: datetime, end: datetime | None = None, v: str = "1") -> list[PatientEvent]:
    s = src("Encounter", eid, v)
    events: list[PatientEvent] = [
        EdArrived(patient_id=P, at=start, source=s, encounter_id=eid, hospital="chu")
    ]
    if end is not None:
        events.append(EdDeparted(patient_id=P, at=end, source=s, encounter_id=eid))
    return _parts(events)


Move = tuple[datetime, str, str]  # (at, ward, bed)


def stay(
    sid: str,
    start: datetime,
    end: datetime | None = None,
    moves: Sequence[Move] = (),
    v: str = "1",
    disposition: str | None = None,
    ward: str | None = "ward-a",
    bed: str | None = "bed-a1",
    service: str | None = None,
    from_ed: str | None = None,
) -> list[PatientEvent]:
    s = src("Encounter", sid, v)
    events: list[PatientEvent] = [
        PatientAdmitted(
            patient_id=P,
            at=start,
            source=s,
            stay_id=sid,
            hospital="chu",
            ward=ward,
            bed=bed,
            service=service,
            from_ed_encounter=from_ed,
        )
    ]
    for at, w, b in moves:
        events.append(
            PatientTransferred(
                patient_id=P, at=at, source=s, stay_id=sid, location=b, ward=w, bed=b
            )
        )
    if end is not None:
        events.append(
            PatientDischarged(patient_id=P, at=end, source=s, stay_id=sid, disposition=disposition)
        )
    return _parts(events)


def home_care(eid: str, start: datetime, end: datetime | None = None) -> list[PatientEvent]:
    s = src("EpisodeOfCare", eid)
    events: list[PatientEvent] = [HomeCareStarted(patient_id=P, at=start, source=s, episode_id=eid)]
    if end is not None:
        events.append(HomeCareEnded(patient_id=P, at=end, source=s, episode_id=eid))
    return _parts(events)


def died(at: datetime, v: str = "1") -> list[PatientEvent]:
    return [PatientDied(patient_id=P, at=at, source=src("Patient", P, v))]


def retract(rtype: str, rid: str, v: str) -> list[PatientEvent]:
    return [ResourceRetracted(patient_id=P, at=T0, source=src(rtype, rid, v), reason="cancelled")]


def run(
    events: Iterable[PatientEvent],
    state: PatientState | None = None,
    rules: PathwayRules = PathwayRules(),
) -> tuple[PatientState, list[Output]]:
    outputs: list[Output] = []
    for ev in events:
        state, out = transition(state, ev, rules)
        assert invariant_violations(state) == [], (ev, invariant_violations(state))
        outputs.extend(out)
    assert state is not None
    return state, outputs


def seq(*groups: list[PatientEvent]) -> list[PatientEvent]:
    return [ev for group in groups for ev in group]


def raised(outputs: Iterable[Output]) -> list[str]:
    return [o.kind for o in outputs if isinstance(o, AlertRaised)]


def resolved(outputs: Iterable[Output]) -> list[str]:
    return [o.kind for o in outputs if isinstance(o, AlertResolved)]


def tick(state: PatientState, now: datetime, rules: PathwayRules = PathwayRules()) -> list[Output]:
    _, out = check_timers(state, now, rules)
    return out


# --- Stages --------------------------------------------------------------------------------------

STAGE_CASES: list[tuple[str, list[PatientEvent], Stage]] = [
    ("a community visit", visit("v1", h(0)), Stage.COMMUNITY),
    ("a referral", referral("r1", h(0)), Stage.REFERRED),
    ("a completed referral", referral("r1", h(0), status="completed"), Stage.COMMUNITY),
    ("referral then ED arrival", seq(referral("r1", h(0)), ed("e1", d(2))), Stage.IN_ED),
    ("ED visit over", ed("e1", h(0), h(3)), Stage.COMMUNITY),
    (
        "referral answered by the ED",
        seq(referral("r1", h(0)), ed("e1", d(2), d(2.1))),
        Stage.COMMUNITY,
    ),
    ("admitted", stay("s1", h(0)), Stage.ADMITTED),
    ("ED then admitted, still in ED", seq(ed("e1", h(0)), stay("s1", h(1))), Stage.IN_ED),
    ("ED then admitted, left ED", seq(ed("e1", h(0), h(2)), stay("s1", h(1))), Stage.ADMITTED),
    ("discharged", stay("s1", h(0), d(3)), Stage.DISCHARGED),
    ("followed up", seq(stay("s1", h(0), d(3)), visit("v1", d(5))), Stage.FOLLOWED_UP),
    (
        "visit before the discharge is no follow-up",
        seq(visit("v1", h(1)), stay("s1", h(0), d(3))),
        Stage.DISCHARGED,
    ),
    (
        "home care after discharge",
        seq(stay("s1", h(0), d(3)), home_care("hc", d(4))),
        Stage.HOME_CARE,
    ),
    (
        "home care ended",
        seq(stay("s1", h(0), d(3)), home_care("hc", d(4), d(20))),
        Stage.FOLLOWED_UP,
    ),
    (
        "referral after follow-up",
        seq(stay("s1", h(0), d(3)), visit("v1", d(5)), referral("r1", d(9))),
        Stage.REFERRED,
    ),
    ("death", seq(stay("s1", h(0)), died(d(1))), Stage.DECEASED),
    (
        "discharged to another hospital",
        stay("s1", h(0), d(3), disposition="other-hcf"),
        Stage.DISCHARGED,
    ),
]


@pytest.mark.parametrize(
    ("events", "stage"), [c[1:] for c in STAGE_CASES], ids=[c[0] for c in STAGE_CASES]
)
def test_stage_after_a_sequence(events: list[PatientEvent], stage: Stage) -> None:
    state, _ = run(events)
    assert state.stage is stage


def test_a_whole_pathway_step_by_step() -> None:
    steps: list[tuple[list[PatientEvent], Stage, str | None]] = [
        (referral("r1", d(0)), Stage.REFERRED, None),
        (ed("e1", d(3)), Stage.IN_ED, None),
        (stay("s1", d(3) + timedelta(hours=2), ward="ward-a", bed="bed-a1"), Stage.IN_ED, "bed-a1"),
        (ed("e1", d(3), d(3) + timedelta(hours=3), v="2"), Stage.ADMITTED, "bed-a1"),
        (
            stay(
                "s1",
                d(3) + timedelta(hours=2),
                moves=[(d(4), "ward-b", "bed-b7")],
                v="2",
            ),
            Stage.ADMITTED,
            "bed-b7",
        ),
        (
            stay(
                "s1",
                d(3) + timedelta(hours=2),
                d(6),
                moves=[(d(4), "ward-b", "bed-b7")],
                v="3",
                disposition="home",
            ),
            Stage.DISCHARGED,
            None,
        ),
        (visit("v1", d(9)), Stage.FOLLOWED_UP, None),
    ]
    state: PatientState | None = None
    for events, stage, bed in steps:
        state, _ = run(events, state)
        assert (state.stage, state.bed) == (stage, bed)
    assert state is not None
    [s1] = state.stays
    assert s1.admitted_at == d(3) + timedelta(hours=2)
    assert s1.discharged_at == d(6)
    assert [(sp.ward, sp.bed, sp.start, sp.end) for sp in s1.locations] == [
        ("ward-a", "bed-a1", d(3) + timedelta(hours=2), d(4)),
        ("ward-b", "bed-b7", d(4), d(6)),
    ]
    assert s1.followed_up_at == d(9)
    [visit_ed] = state.facts.ed_visits
    assert (visit_ed.admitted, visit_ed.stay_id) == (True, "s1")
    [ref] = state.facts.referrals
    assert (ref.contact_at, ref.contact_id) == (d(3), "e1")


def test_outputs_carry_records_occupancy_and_stage() -> None:
    state, out = run(stay("s1", h(0)))
    assert [type(o).__name__ for o in out] == ["RecordChanged", "OccupancyChanged", "StageChanged"]
    occ = out[1]
    assert isinstance(occ, OccupancyChanged)
    assert (occ.stay_id, occ.ward, occ.bed, occ.previous_bed, occ.at) == (
        "s1",
        "ward-a",
        "bed-a1",
        None,
        h(0),
    )
    _, out = run(stay("s1", h(0), d(2), v="2"), state)
    occ = next(o for o in out if isinstance(o, OccupancyChanged))
    assert (occ.bed, occ.previous_bed, occ.at) == (None, "bed-a1", d(2))
    stage = next(o for o in out if isinstance(o, StageChanged))
    assert (stage.previous, stage.stage, stage.at) == ("admitted", "discharged", d(2))
    for o in out:
        json.dumps(output_to_json(o))


# --- Idempotency, versions and late events -------------------------------------------------------


def test_the_same_version_twice_is_a_no_op() -> None:
    events = seq(referral("r1", h(0)), stay("s1", d(1), d(3)), visit("v1", d(4)))
    state, _ = run(events)
    again, out = run(events, state)
    assert out == []
    assert again.to_dict() == state.to_dict()


def test_a_new_version_that_says_the_same_makes_no_second_stay() -> None:
    state, _ = run(stay("s1", h(0), d(2)))
    state, out = run(stay("s1", h(0), d(2), v="2"), state)
    assert len(state.stays) == 1
    assert [o for o in out if not isinstance(o, EventIgnored)] == []


def test_a_new_version_with_a_location_entry_makes_the_transfer() -> None:
    state, _ = run(stay("s1", h(0)))
    state, out = run(stay("s1", h(0), moves=[(h(5), "ward-b", "bed-b2")], v="2"), state)
    assert len(state.stays) == 1
    assert (state.ward, state.bed) == ("ward-b", "bed-b2")
    assert [sp.bed for sp in state.stays[0].locations] == ["bed-a1", "bed-b2"]
    occ = next(o for o in out if isinstance(o, OccupancyChanged))
    assert (occ.previous_bed, occ.bed, occ.at) == ("bed-a1", "bed-b2", h(5))


def test_a_transfer_that_arrives_after_the_discharge_lands_inside_the_stay() -> None:
    s = src("Encounter", "s1")
    admitted = PatientAdmitted(patient_id=P, at=h(0), source=s, stay_id="s1", ward="wa", bed="b1")
    discharged = PatientDischarged(
        patient_id=P, at=d(3), source=src("Encounter", "s1", "2"), stay_id="s1"
    )
    late = PatientTransferred(
        patient_id=P,
        at=d(1),
        source=src("Encounter", "s1-move", "1"),
        stay_id="s1",
        location="b2",
        ward="wb",
        bed="b2",
    )
    # The discharge comes as a new version of the Encounter; it replaces version 1's admission,
    # so it must say the admission again (as fhir_map does).
    v2 = _parts([replace(admitted, source=discharged.source), discharged])
    state, _ = run([admitted, *v2, late])
    [s1] = state.stays
    assert [(sp.bed, sp.start, sp.end) for sp in s1.locations] == [
        ("b1", h(0), d(1)),
        ("b2", d(1), d(3)),
    ]
    assert (state.bed, s1.bed, s1.discharged_at) == (None, None, d(3))


def test_late_events_give_the_state_of_event_time_order() -> None:
    events = seq(
        referral("r1", d(0)),
        ed("e1", d(2), d(2.2)),
        stay("s1", d(2.1), d(5), moves=[(d(3), "ward-b", "bed-b1")]),
        visit("v1", d(8)),
        stay("s2", d(20), d(22)),
        died(d(40)),
    )
    in_order, _ = run(events)
    reverse, _ = run(list(reversed(events)))
    assert reverse.facts == in_order.facts
    assert (reverse.stage, reverse.bed) == (in_order.stage, in_order.bed)
    assert reverse.stays[1].readmission_of == "s1"


def test_a_move_dropped_by_an_implied_end_comes_back_with_the_stay_s_own_discharge() -> None:
    # s2 starting implies that s1 ended then, which drops s1's later move; when s1's own
    # discharge arrives it wins over the implied end, and the move is back, as in a replay.
    discharge = [
        PatientDischarged(patient_id=P, at=h(30), source=src("Encounter", "s1-end"), stay_id="s1")
    ]
    events = seq(
        stay("s1", h(0), moves=[(h(20), "ward-b", "bed-b1")]),
        stay("s2", h(10), bed="b2"),
        discharge,
    )
    in_order, _ = run(events)
    reverse, _ = run(list(reversed(events)))
    assert in_order.facts == reverse.facts
    s1 = in_order.facts.stays[0]
    assert [spell.ward for spell in s1.locations] == ["ward-a", "ward-b"]
    assert (s1.discharged_at, s1.ended_by) == (h(30), "discharge")


def test_an_older_version_after_a_newer_one_is_ignored() -> None:
    state, _ = run(stay("s1", h(0), d(2), v="2"))
    state, out = run(stay("s1", h(0), v="1"), state)
    assert state.stays[0].discharged_at == d(2)
    assert all(isinstance(o, EventIgnored) and "older" in o.reason for o in out)


def test_a_cancelled_encounter_withdraws_its_stay() -> None:
    state, _ = run(seq(stay("s0", d(-40), d(-38)), stay("s1", h(0))))
    assert state.stage is Stage.ADMITTED
    state, out = run(retract("Encounter", "s1", "2"), state)
    assert [s.stay_id for s in state.stays] == ["s0"]
    assert state.bed is None
    assert RecordRemoved(P, "stay", "s1") in out
    # The withdrawn version again changes nothing.
    again, out = run(stay("s1", h(0), v="1"), state)
    assert [s.stay_id for s in again.stays] == ["s0"]


def test_a_cancelled_referral_clears_its_alert() -> None:
    state, _ = run(referral("r1", h(0)))
    out = tick(state, d(15))
    assert raised(out) == ["referral_no_contact"]
    state, _ = check_timers(state, d(15))
    state, out = run(retract("ServiceRequest", "r1", "2"), state)
    assert resolved(out) == ["referral_no_contact"]
    assert state.stage is Stage.COMMUNITY


def test_parts_of_one_version_apply_together() -> None:
    admitted, moved, discharged = stay("s1", h(0), d(2), moves=[(h(6), "wb", "b2")])
    state, out = run([admitted])
    assert out == [] and state.stays == []
    state, out = run([discharged, admitted], state)
    assert out == [] and state.stays == []
    state, out = run([moved], state)
    assert len(state.stays) == 1 and state.stays[0].discharged_at == d(2)


def test_a_transfer_after_its_stay_ended_is_ignored_with_a_reason() -> None:
    state, _ = run(stay("s1", h(0), d(2)))
    late = PatientTransferred(
        patient_id=P, at=d(3), source=src("Encounter", "x"), stay_id="s1", location="b9", bed="b9"
    )
    state, out = run([late], state)
    assert [o.reason for o in out if isinstance(o, EventIgnored)] == [
        "PatientTransferred does not apply here"
    ]
    assert [sp.bed for sp in state.stays[0].locations] == ["bed-a1"]


def test_an_event_of_another_patient_is_ignored() -> None:
    state, _ = run(visit("v1", h(0)))
    other = replace(visit("v2", h(1))[0], patient_id="someone-else")
    new, out = transition(state, other)
    assert new is state
    assert isinstance(out[0], EventIgnored)


def test_two_overlapping_stays_hold_one_bed() -> None:
    state, _ = run(seq(stay("s1", h(0), bed="b1"), stay("s2", h(10), bed="b2")))
    assert state.bed == "b2"
    s1, s2 = state.stays
    assert (s1.discharged_at, s1.ended_by, s1.bed) == (h(10), "next_admission", None)
    assert s2.is_open


def test_synthea_ed_visit_is_linked_to_the_stay_that_starts_with_it() -> None:
    state, _ = run(seq(ed("e1", h(0), h(1)), stay("s1", h(0), d(1))))
    [visit_ed] = state.facts.ed_visits
    assert (visit_ed.admitted, visit_ed.stay_id) == (True, "s1")
    state, _ = run(seq(ed("e2", d(10), d(10.1)), stay("s2", d(12), d(13))), state)
    assert state.facts.ed_visits[1].admitted is False


def test_an_ed_visit_is_linked_only_to_a_stay_of_its_own_hospital() -> None:
    elsewhere = [
        replace(ev, hospital="clinique") if isinstance(ev, PatientAdmitted) else ev
        for ev in stay("s1", h(2), d(1))
    ]
    state, _ = run(seq(ed("e1", h(0), h(1)), elsewhere))
    [visit_ed] = state.facts.ed_visits
    assert (visit_ed.admitted, visit_ed.stay_id) == (False, None)


def test_an_ed_visit_still_open_is_not_linked_to_a_stay_weeks_later() -> None:
    state, _ = run(seq(ed("e1", h(0)), stay("s1", d(20), d(22))))
    assert state.facts.ed_visits[0].stay_id is None
    state, _ = run(seq(ed("e2", d(30)), stay("s2", d(31), d(33))), state)
    assert state.facts.ed_visits[1].stay_id == "s2"


def test_a_stay_part_of_itself_is_linked_by_time_like_any_other() -> None:
    state, _ = run(seq(ed("e1", h(0), h(1)), stay("s1", h(2), d(1), from_ed="s1")))
    assert state.facts.ed_visits[0].stay_id == "s1"
    assert len(state.stays) == 1


def test_movements_part_of_a_venue_are_its_ward_spells_not_stays() -> None:
    """FR Core: the venue is one Encounter, each movement inside it another, partOf the venue."""
    venue = stay("venue", h(0), d(4), ward="hospital", bed=None)
    ward_a = stay("mvt-a", h(0), d(2), ward="ward-a", bed="bed-a1", from_ed="venue")
    ward_b = stay("mvt-b", d(2), d(4), ward="ward-b", bed="bed-b7", from_ed="venue")
    expected = [(h(0), d(2), "ward-a", "bed-a1"), (d(2), d(4), "ward-b", "bed-b7")]
    # Whatever the order they come in, and whether the venue comes first or last.
    for order in ([venue, ward_a, ward_b], [ward_b, ward_a, venue], [ward_a, venue, ward_b]):
        state, _ = run(seq(*order))
        [only] = state.stays
        assert only.stay_id == "venue"
        assert (only.admitted_at, only.discharged_at, only.ended_by) == (h(0), d(4), "discharge")
        assert [(s.start, s.end, s.ward, s.bed) for s in only.locations] == expected
        assert state.facts.ed_visits == [] and invariant_violations(state) == []


def test_a_movement_still_open_holds_the_bed_of_its_venue() -> None:
    venue = stay("venue", h(0), ward="hospital", bed=None)
    moved = stay("mvt-a", h(1), ward="ward-a", bed="bed-a1", from_ed="venue")
    state, _ = run(seq(venue, moved))
    [only] = state.stays
    assert (state.stay_id, state.ward, state.bed) == ("venue", "ward-a", "bed-a1")
    assert [(s.start, s.end, s.ward) for s in only.locations] == [
        (h(0), h(1), "hospital"),
        (h(1), None, "ward-a"),
    ]


def test_a_movement_whose_venue_is_an_ed_visit_stays_a_stay_linked_to_it() -> None:
    state, _ = run(seq(ed("e1", h(0), h(3)), stay("s1", h(3), d(1), from_ed="e1")))
    assert [s.stay_id for s in state.stays] == ["s1"]
    assert state.facts.ed_visits[0].stay_id == "s1"


def test_a_cycle_of_part_of_merges_nothing() -> None:
    state, _ = run(
        seq(
            stay("a", h(0), h(5), from_ed="b"),
            stay("b", h(6), h(9), ward="ward-b", bed="bed-b1", from_ed="a"),
        )
    )
    assert [s.stay_id for s in state.stays] == ["a", "b"]


def test_a_movement_that_arrives_before_its_venue_is_a_stay_until_the_venue_comes() -> None:
    before, _ = run(stay("mvt-a", h(1), d(2), from_ed="venue"))
    assert [s.stay_id for s in before.stays] == ["mvt-a"]
    state, _ = run(stay("venue", h(0), d(2), ward="hospital", bed=None), before)
    assert [s.stay_id for s in state.stays] == ["venue"]
    # The sink deletes the stay row the movement had.
    changes = row_changes(before, patient_rows(state))
    assert changes.gone["stays"] == [("mvt-a",)]


# --- Alerts --------------------------------------------------------------------------------------


def test_ed_boarding_fires_on_the_timer_and_resolves_at_departure() -> None:
    state, out = run(ed("e1", h(0)))
    assert raised(out) == []
    assert tick(state, h(3.9)) == []
    state, out = check_timers(state, h(4.5))
    [alert] = out
    assert isinstance(alert, AlertRaised)
    assert alert.alert_id == alert_id("ed_boarding", P, "e1") == f"ed_boarding:{P}:e1"
    assert alert.at == h(4)
    assert alert.details["admission_decided"] is False
    state, out = run(ed("e1", h(0), h(6), v="2"), state)
    assert resolved(out) == ["ed_boarding"]
    assert state.alerts == {}


def test_ed_boarding_threshold_comes_from_the_rules() -> None:
    state, _ = run(ed("e1", h(0)))
    assert raised(tick(state, h(2.5), PathwayRules(ed_boarding=timedelta(hours=2)))) == [
        "ed_boarding"
    ]


def test_ed_boarding_with_an_admission_decision() -> None:
    state, _ = run(seq(ed("e1", h(0)), stay("s1", h(1))))
    [alert] = tick(state, h(5))
    assert isinstance(alert, AlertRaised) and alert.details["admission_decided"] is True


REFERRAL_CASES: list[tuple[str, list[PatientEvent], datetime, list[str]]] = [
    ("no contact after 15 days", referral("r1", h(0)), d(15), ["referral_no_contact"]),
    ("13 days is not late yet", referral("r1", h(0)), d(13), []),
    ("an ED visit answers it", seq(referral("r1", h(0)), ed("e1", d(10), d(10.1))), d(15), []),
    ("an admission answers it", seq(referral("r1", h(0)), stay("s1", d(10), d(11))), d(15), []),
    (
        "a hospital visit based on it answers it",
        seq(referral("r1", h(0)), visit("v1", d(10), based_on="r1")),
        d(15),
        [],
    ),
    (
        "a GP visit does not answer it",
        seq(referral("r1", h(0)), visit("v1", d(10))),
        d(15),
        ["referral_no_contact"],
    ),
    (
        "a booked appointment holds it",
        seq(referral("r1", h(0)), appointment("a1", d(1), d(20), based_on="r1")),
        d(15),
        [],
    ),
    (
        "until the appointment is past",
        seq(referral("r1", h(0)), appointment("a1", d(1), d(20), based_on="r1")),
        d(21.5),
        ["referral_no_contact"],
    ),
    (
        "a contact before the referral does not count",
        seq(ed("e1", h(-5), h(-4)), referral("r1", h(0))),
        d(15),
        ["referral_no_contact"],
    ),
    ("a completed referral", referral("r1", h(0), status="completed"), d(15), []),
    ("a deceased patient", seq(referral("r1", h(0)), died(d(3))), d(15), []),
]


@pytest.mark.parametrize(
    ("events", "now", "expected"),
    [c[1:] for c in REFERRAL_CASES],
    ids=[c[0] for c in REFERRAL_CASES],
)
def test_referral_without_hospital_contact(
    events: list[PatientEvent], now: datetime, expected: list[str]
) -> None:
    state, _ = run(events)
    assert raised(tick(state, now)) == expected


def test_referral_alert_resolves_when_the_patient_reaches_the_hospital() -> None:
    state, _ = run(referral("r1", h(0)))
    state, out = check_timers(state, d(16))
    assert raised(out) == ["referral_no_contact"]
    state, out = run(ed("e1", d(17), d(17.2)), state)
    assert resolved(out) == ["referral_no_contact"]


FOLLOW_UP_CASES: list[tuple[str, list[PatientEvent], datetime, list[str]]] = [
    ("none after 8 days", stay("s1", h(0), d(2)), d(10), ["no_follow_up"]),
    ("6 days is not late yet", stay("s1", h(0), d(2)), d(8), []),
    ("a GP visit within 7 days", seq(stay("s1", h(0), d(2)), visit("v1", d(5))), d(10), []),
    ("home care started", seq(stay("s1", h(0), d(2)), home_care("hc", d(3))), d(10), []),
    ("a referral written by the GP", seq(stay("s1", h(0), d(2)), referral("r1", d(4))), d(10), []),
    (
        "a follow-up appointment booked",
        seq(stay("s1", h(0), d(2)), appointment("a1", d(3), d(12))),
        d(10),
        [],
    ),
    (
        "the appointment is past",
        seq(stay("s1", h(0), d(2)), appointment("a1", d(3), d(12))),
        d(13.5),
        ["no_follow_up"],
    ),
    (
        "a fulfilled appointment",
        seq(stay("s1", h(0), d(2)), appointment("a1", d(3), d(5), status="fulfilled")),
        d(13.5),
        [],
    ),
    ("discharged to another hospital", stay("s1", h(0), d(2), disposition="other-hcf"), d(10), []),
    ("died in hospital", stay("s1", h(0), d(2), disposition="exp"), d(10), []),
    ("died after discharge", seq(stay("s1", h(0), d(2)), died(d(5))), d(10), []),
    ("readmitted", seq(stay("s1", h(0), d(2)), stay("s2", d(4))), d(10), ["readmission"]),
    ("still in hospital", stay("s1", h(0)), d(10), []),
]


@pytest.mark.parametrize(
    ("events", "now", "expected"),
    [c[1:] for c in FOLLOW_UP_CASES],
    ids=[c[0] for c in FOLLOW_UP_CASES],
)
def test_discharge_without_community_follow_up(
    events: list[PatientEvent], now: datetime, expected: list[str]
) -> None:
    state, out = run(events)
    state, more = check_timers(state, now)
    assert sorted(raised([*out, *more])) == expected


def test_no_follow_up_fires_without_a_new_event_and_resolves_with_the_visit() -> None:
    state, _ = run(stay("s1", h(0), d(2)))
    state, out = check_timers(state, d(9.5))
    [alert] = out
    assert isinstance(alert, AlertRaised)
    assert (alert.kind, alert.subject_id, alert.at) == ("no_follow_up", "s1", d(9))
    # A second tick changes nothing.
    assert tick(state, d(9.7)) == []
    state, out = run(visit("v1", d(11)), state)
    assert resolved(out) == ["no_follow_up"]
    assert state.stage is Stage.FOLLOWED_UP


def test_readmission_within_30_days_is_raised_and_resolves_after_follow_up() -> None:
    state, out = run(seq(stay("s1", h(0), d(2)), visit("v1", d(4)), stay("s2", d(20))))
    [alert] = [o for o in out if isinstance(o, AlertRaised)]
    assert (alert.kind, alert.subject_id, alert.at) == ("readmission", "s2", d(20))
    assert alert.details["previous_stay"] == "s1"
    assert alert.details["days_since_discharge"] == 18.0
    state, out = run(stay("s2", d(20), d(23), v="2"), state)
    assert resolved(out) == []
    state, out = run(visit("v2", d(25)), state)
    assert resolved(out) == ["readmission"]


def test_readmission_after_31_days_is_not_one() -> None:
    state, out = run(seq(stay("s1", h(0), d(2)), visit("v1", d(4)), stay("s2", d(33))))
    assert raised(out) == []
    assert state.stays[1].readmission_of is None


def test_readmission_window_follows_the_rules() -> None:
    rules = PathwayRules(readmission=timedelta(days=45))
    _, out = run(seq(stay("s1", h(0), d(2)), visit("v1", d(4)), stay("s2", d(33))), rules=rules)
    assert raised(out) == ["readmission"]


def test_readmission_of_a_finished_stay_shows_until_follow_up_then_expires() -> None:
    state, out = run(seq(stay("s1", h(0), d(2)), stay("s2", d(10), d(12))))
    assert raised(out) == ["readmission"]
    state, out = check_timers(state, d(43))
    assert set(resolved(out)) == {"readmission"}
    assert raised(out) == ["no_follow_up"]


LOS_RULES = PathwayRules(
    los_p90={"cardio": timedelta(days=5), "ward-geria": timedelta(days=20)},
    los_p90_default=timedelta(days=10),
)
LOS_CASES: list[tuple[str, list[PatientEvent], datetime, list[str]]] = [
    ("cardio beyond 5 days", stay("s1", h(0), service="cardio"), d(6), ["long_stay"]),
    ("cardio at 4 days", stay("s1", h(0), service="cardio"), d(4), []),
    ("unknown service uses the default", stay("s1", h(0)), d(9), []),
    ("unknown service beyond the default", stay("s1", h(0)), d(11), ["long_stay"]),
    ("a ward's own p90", stay("s1", h(0), ward="ward-geria"), d(15), []),
    (
        "discharged stays do not count",
        stay("s1", h(0), d(8), service="cardio"),
        d(8.5),
        [],
    ),
]


@pytest.mark.parametrize(
    ("events", "now", "expected"), [c[1:] for c in LOS_CASES], ids=[c[0] for c in LOS_CASES]
)
def test_length_of_stay_above_the_service_p90(
    events: list[PatientEvent], now: datetime, expected: list[str]
) -> None:
    state, _ = run(events, rules=LOS_RULES)
    assert raised(tick(state, now, LOS_RULES)) == expected


def test_long_stay_resolves_at_discharge() -> None:
    state, _ = run(stay("s1", h(0), service="cardio"), rules=LOS_RULES)
    state, out = check_timers(state, d(6), LOS_RULES)
    [alert] = out
    assert isinstance(alert, AlertRaised)
    assert (alert.at, alert.details["p90_hours"]) == (d(5), 120.0)
    state, out = run(stay("s1", h(0), d(7), service="cardio", v="2"), state, LOS_RULES)
    assert resolved(out) == ["long_stay"]


def test_death_resolves_every_alert_and_frees_the_bed() -> None:
    state, out = run(seq(stay("s0", d(-25), d(-22)), ed("e1", h(0)), stay("s1", h(1))))
    assert raised(out) == ["no_follow_up", "readmission"]
    state, out = check_timers(state, d(1))
    assert raised(out) == ["ed_boarding"]
    state, out = run(died(d(1.5)), state)
    assert sorted(resolved(out)) == ["ed_boarding", "readmission"]
    assert (state.stage, state.bed, state.alerts) == (Stage.DECEASED, None, {})
    s1 = state.stays[-1]
    assert (s1.discharged_at, s1.disposition, s1.ended_by) == (d(1.5), "exp", "death")


def test_alert_ids_are_the_same_whatever_the_arrival_order() -> None:
    events = seq(stay("s1", h(0), d(2)), stay("s2", d(10)), referral("r1", d(3)))
    a, _ = run(events)
    b, _ = run(list(reversed(events)))
    assert a.alerts.keys() == b.alerts.keys() == {f"readmission:{P}:s2"}


def test_check_timers_needs_an_aware_time_and_never_goes_back() -> None:
    state, _ = run(ed("e1", h(0)))
    with pytest.raises(ValueError):
        check_timers(state, datetime(2026, 1, 5, 20))
    later, _ = check_timers(state, h(5))
    back, out = check_timers(later, h(1))
    assert (back.clock, out) == (h(5), [])


def test_check_timers_does_not_change_its_input() -> None:
    state, _ = run(stay("s1", h(0), d(2)))
    before = state.to_dict()
    check_timers(state, d(20))
    assert state.to_dict() == before


# --- History, compaction and serialisation -------------------------------------------------------


def test_old_history_is_compacted_but_stays_are_kept() -> None:
    rules = PathwayRules(history_horizon=timedelta(days=60))
    events: list[PatientEvent] = []
    for i in range(12):
        start = d(100 * i)
        events += stay(f"s{i}", start, start + timedelta(days=2))
        events += visit(f"v{i}", start + timedelta(days=5))
    state, _ = run(events, rules=rules)
    assert len(state.stays) == 12
    assert len(state.log) <= 4
    assert state.base_until is not None
    assert state.stage is Stage.FOLLOWED_UP
    # A repeat of an old, compacted version updates its stay in place: no second stay.
    state, out = run(stay("s0", d(0), d(2), v="1"), state, rules)
    assert len(state.stays) == 12
    assert out == []


def test_an_open_stay_is_never_compacted() -> None:
    rules = PathwayRules(history_horizon=timedelta(days=10))
    state, _ = run(seq(stay("s1", h(0)), visit("v1", d(50))), rules=rules)
    assert [ev.kind for ev in state.log] == ["PatientAdmitted", "CommunityVisited"]
    state, _ = run(stay("s1", h(0), d(60), v="2"), state, rules)
    assert len(state.stays) == 1 and state.stays[0].discharged_at == d(60)


def test_records_are_bounded() -> None:
    rules = PathwayRules(max_records=5)
    state, _ = run([ev for i in range(9) for ev in visit(f"v{i}", d(i))], rules=rules)
    assert [v.encounter_id for v in state.facts.community_visits] == [f"v{i}" for i in range(4, 9)]


def test_state_round_trips_through_json() -> None:
    events = seq(
        referral("r1", d(-3)),
        appointment("a1", d(-2), d(4), based_on="r1"),
        ed("e1", h(0), h(3)),
        stay("s1", h(2), d(3), moves=[(d(1), "wb", "b2")], service="cardio"),
        home_care("hc", d(4), d(30)),
        visit("v1", d(5)),
        stay("s2", d(20)),
    )
    state, _ = run(events)
    partial, _ = run(stay("s3", d(25), d(27))[:1], state)  # a pending part
    for s in (state, partial):
        state, _ = check_timers(s, d(26))
        data = json.loads(json.dumps(state.to_dict()))
        back = PatientState.from_dict(data)
        assert back == state
        assert back.to_dict() == data
    nxt, _ = transition(PatientState.from_dict(partial.to_dict()), stay("s3", d(25), d(27))[1])
    assert [s.stay_id for s in nxt.stays] == ["s1", "s2", "s3"]


def test_changes_come_out_as_records_for_the_sink() -> None:
    _, out = run(seq(stay("s1", h(0)), visit("v1", d(5))))
    kinds = {(o.record_kind, o.record_id) for o in out if isinstance(o, RecordChanged)}
    assert kinds == {("stay", "s1"), ("community_visit", "v1")}


# --- Real data -----------------------------------------------------------------------------------


def test_synthea_bundles_give_one_stay_per_inpatient_encounter(shared_data: Path) -> None:
    for path in sorted((shared_data / "fhir" / "synthea-r4-2019").glob("*.json")):
        resources = resolve_entries(json.loads(path.read_text()))
        imp = {
            r["id"]: r["period"]
            for r in resources
            if r["resourceType"] == "Encounter" and r["class"]["code"] == "IMP"
        }
        emer = sum(
            1
            for r in resources
            if r["resourceType"] == "Encounter" and r["class"]["code"] == "EMER"
        )
        amb = sum(
            1 for r in resources if r["resourceType"] == "Encounter" and r["class"]["code"] == "AMB"
        )
        state: PatientState | None = None
        for resource in resources:
            for ev in patient_events(map_resource(resource)):
                state, _ = transition(state, ev)
                assert invariant_violations(state) == []
        assert state is not None
        assert {s.stay_id for s in state.stays} == set(imp)
        for s in state.stays:
            hours = (
                datetime.fromisoformat(imp[s.stay_id]["end"])
                - datetime.fromisoformat(imp[s.stay_id]["start"])
            ).total_seconds() / 3600
            assert s.los_hours == pytest.approx(hours)
        assert len(state.facts.ed_visits) == emer
        assert len(state.facts.community_visits) == amb
        assert state.bed is None
        assert PatientState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_fixture_pathway_from_fhir() -> None:
    names = [
        "service_request_referral",
        "appointment_booked",
        "encounter_emer",
        "encounter_imp_transfers",
        "encounter_amb",
    ]
    events = [
        ev
        for n in names
        for ev in patient_events(map_resource(json.loads((FIXTURES / f"{n}.json").read_text())))
    ]
    state, _ = run(events)
    assert state.stage is Stage.FOLLOWED_UP
    [s1] = state.stays
    assert [sp.bed for sp in s1.locations] == ["bed-cardio-12", "bed-usic-3"]
    assert state.facts.ed_visits[0].stay_id == "enc-imp-1"
    assert state.facts.referrals[0].contact_id == "enc-emer-1"


def test_transition_never_changes_the_state_it_gets() -> None:
    steps = [
        *stay("s1", d(1), d(3)),
        *visit("v1", d(5)),
        *stay("s1", d(1), d(3), moves=[(d(2), "wb", "b2")], v="2"),  # a replay
        *visit("v0", d(0)),  # late: a replay from the base
        *retract("Encounter", "v1", "2"),
    ]
    state: PatientState | None = None
    for ev in steps:
        before = state.to_dict() if state is not None else None
        new, _ = transition(state, ev)
        if state is not None:
            assert state.to_dict() == before
        state = new


def test_a_live_encounter_through_its_versions() -> None:
    """In progress in ward A, moved to ward B, finished: one stay, one move, the bed released."""
    base = json.loads((FIXTURES / "encounter_imp_transfers.json").read_text())
    entries = base["location"]

    def version(
        v: str, status: str, locations: list[dict[str, object]], end: bool
    ) -> dict[str, object]:
        resource = json.loads(json.dumps(base))
        resource["meta"] = {"versionId": v}
        resource["status"] = status
        resource["location"] = locations
        if not end:
            del resource["period"]["end"]
        return resource

    def active(entry: dict[str, object]) -> dict[str, object]:
        out = json.loads(json.dumps(entry))
        out["status"] = "active"
        del out["period"]["end"]
        return out

    v1 = version("1", "in-progress", [active(entries[0]), active(entries[1])], end=False)
    v2 = version(
        "2",
        "in-progress",
        [entries[0], entries[1], active(entries[2]), active(entries[3])],
        end=False,
    )
    v3 = version("3", "finished", entries, end=True)
    state: PatientState | None = None
    seen: list[tuple[Stage, str | None]] = []
    for resource in (v1, v2, v2, v3):
        state, _ = run(patient_events(map_resource(resource)), state)
        seen.append((state.stage, state.bed))
    assert seen == [
        (Stage.ADMITTED, "bed-cardio-12"),
        (Stage.ADMITTED, "bed-usic-3"),
        (Stage.ADMITTED, "bed-usic-3"),
        (Stage.DISCHARGED, None),
    ]
    assert state is not None and len(state.stays) == 1
    assert [sp.bed for sp in state.stays[0].locations] == ["bed-cardio-12", "bed-usic-3"]
    # The same three versions in reverse: the newest wins, the older ones are ignored.
    again, _ = run([ev for r in (v3, v2, v1) for ev in patient_events(map_resource(r))])
    assert again.facts == state.facts


MORE_FOLLOW_UP_CASES: list[tuple[str, list[PatientEvent], datetime, list[str], Stage]] = [
    (
        "home care that goes on through the stay",
        seq(home_care("hc", d(-30)), stay("s1", h(0), d(2))),
        d(10),
        [],
        Stage.HOME_CARE,
    ),
    (
        "a follow-up booked during the stay",
        seq(stay("s1", h(0)), appointment("a1", d(1), d(12)), stay("s1", h(0), d(2), v="2")),
        d(10),
        [],
        Stage.DISCHARGED,
    ),
    (
        "an appointment kept after the discharge, booked before it",
        seq(
            stay("s1", h(0)),
            appointment("a1", d(1), d(5), status="fulfilled"),
            stay("s1", h(0), d(2), v="2"),
        ),
        d(10),
        [],
        Stage.FOLLOWED_UP,
    ),
    (
        "a transfer to another hospital is no readmission",
        seq(stay("s1", h(0), d(2), disposition="hosp"), stay("s2", d(2) + timedelta(hours=1))),
        d(3),
        [],
        Stage.ADMITTED,
    ),
    (
        "a referral while in home care",
        seq(home_care("hc", d(-30)), referral("r1", h(0))),
        d(3),
        [],
        Stage.REFERRED,
    ),
]


@pytest.mark.parametrize(
    ("events", "now", "expected", "stage"),
    [c[1:] for c in MORE_FOLLOW_UP_CASES],
    ids=[c[0] for c in MORE_FOLLOW_UP_CASES],
)
def test_follow_up_readmission_and_stage_details(
    events: list[PatientEvent], now: datetime, expected: list[str], stage: Stage
) -> None:
    state, out = run(events)
    state, more = check_timers(state, now)
    assert sorted(raised([*out, *more])) == expected
    assert state.stage is stage


def test_an_ed_encounter_that_becomes_a_stay() -> None:
    emer = json.loads((FIXTURES / "encounter_emer.json").read_text())
    emer["status"] = "in-progress"
    del emer["period"]["end"]
    imp = json.loads(json.dumps(emer))
    imp["meta"] = {"versionId": "2"}
    imp["class"] = {"code": "IMP"}
    imp["classHistory"] = [
        {
            "class": {"code": "EMER"},
            "period": {"start": emer["period"]["start"], "end": "2026-01-12T13:00:00+01:00"},
        },
        {"class": {"code": "IMP"}, "period": {"start": "2026-01-12T13:00:00+01:00"}},
    ]
    state, _ = run(patient_events(map_resource(emer)))
    assert state.stage is Stage.IN_ED
    state, out = run(patient_events(map_resource(imp)), state)
    assert state.stage is Stage.ADMITTED
    [visit_ed] = state.facts.ed_visits
    [s1] = state.stays
    assert (visit_ed.encounter_id, visit_ed.stay_id, visit_ed.admitted) == (
        "enc-emer-1",
        "enc-emer-1",
        True,
    )
    assert visit_ed.departed_at == s1.admitted_at == datetime(2026, 1, 12, 12, 0, tzinfo=UTC)
    assert not any(isinstance(o, RecordRemoved) for o in out)


def test_a_batch_of_stays_sent_out_of_order_is_folded_in_linear_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A feed that sends one patient's 1,000 stays newest first: `advance` alone replays the whole
    # log at each of them (half a million folds); `advance_all` folds the batch once.
    stays = 1000
    events: list[PatientEvent] = []
    for i in reversed(range(stays)):
        src = SourceRef("Encounter", f"s{i}", "1")
        events += [
            PatientAdmitted(
                patient_id=P, at=d(i), source=src, stay_id=f"s{i}", ward="w", part=1, parts=2
            ),
            PatientDischarged(
                patient_id=P,
                at=d(i) + timedelta(hours=6),
                source=src,
                stay_id=f"s{i}",
                disposition="home",
                part=2,
                parts=2,
            ),
        ]
    folded = 0
    real_fold = pathway.fold

    def counting_fold(*args: Any, **kwargs: Any) -> bool:
        nonlocal folded
        folded += 1
        return real_fold(*args, **kwargs)

    monkeypatch.setattr(pathway, "fold", counting_fold)
    first, _ = pathway.advance_all(None, events[:200], PathwayRules(max_records=5000))
    folded = 0
    state, _ = pathway.advance_all(first, events[200:], PathwayRules(max_records=5000))
    assert state is not None
    assert len(state.stays) == stays
    assert [s.stay_id for s in state.stays] == [f"s{i}" for i in range(stays)]
    # One replay of the whole log, and the few events before the first late one.
    assert folded <= 2 * len(events)
