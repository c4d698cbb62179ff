"""Property tests: random event sequences (repeats, late versions, odd events) never raise, keep
the invariants, serialise, and the facts do not depend on the arrival order."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

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
from streams.core.pathway import (
    AlertRaised,
    AlertResolved,
    PathwayRules,
    PatientState,
    advance,
    advance_all,
    check_timers,
    invariant_violations,
    output_to_json,
    transition,
)

P = "pat-1"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPAN_H = 24 * 80  # every event within 80 days: below the default history horizon
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

times = st.integers(min_value=0, max_value=SPAN_H).map(lambda h: T0 + timedelta(hours=h))
wards = st.sampled_from(["wa", "wb", None])
beds = st.sampled_from(["b1", "b2", "b3", None])


def _stamp(events: list[PatientEvent]) -> list[PatientEvent]:
    return [replace(ev, part=i, parts=len(events)) for i, ev in enumerate(events, start=1)]


KINDS = ["stay", "stay", "stay", "ed", "ed", "visit", "referral", "appt", "care", "death"]


@st.composite
def resource_version(draw: st.DrawFn, odd: bool = True) -> list[PatientEvent]:
    """The events one version of one resource maps to, like streams.core.fhir_map makes them; with
    `odd`, also events no well-formed feed sends (a move of a stay of another resource…)."""
    kind = draw(st.sampled_from([*KINDS, "odd"] if odd else KINDS))
    version = str(draw(st.integers(1, 3)))
    if draw(st.integers(0, 9)) == 0 and kind not in ("death", "odd"):
        rtype = {
            "stay": "Encounter",
            "ed": "Encounter",
            "visit": "Encounter",
            "referral": "ServiceRequest",
            "appt": "Appointment",
            "care": "EpisodeOfCare",
        }[kind]
        rid = draw(st.sampled_from(["s1", "s2", "e1", "v1", "r1", "a1", "c1"]))
        return [
            ResourceRetracted(
                patient_id=P, at=T0, source=SourceRef(rtype, rid, version), reason="cancelled"
            )
        ]
    start = draw(times)
    end = draw(st.none() | st.integers(1, 24 * 20).map(lambda h: start + timedelta(hours=h)))
    if kind == "stay":
        sid = draw(st.sampled_from(["s1", "s2", "s3"]))
        src = SourceRef("Encounter", sid, version)
        events: list[PatientEvent] = [
            PatientAdmitted(
                patient_id=P,
                at=start,
                source=src,
                stay_id=sid,
                ward=draw(wards),
                bed=draw(beds),
                from_ed_encounter=draw(st.none() | st.just("e1")),
                service=draw(st.sampled_from([None, "cardio"])),
            )
        ]
        for hours in draw(st.lists(st.integers(0, 24 * 25), max_size=3, unique=True)):
            bed = draw(beds)
            events.append(
                PatientTransferred(
                    patient_id=P,
                    at=start + timedelta(hours=hours),
                    source=src,
                    stay_id=sid,
                    location=bed or "loc",
                    ward=draw(wards),
                    bed=bed,
                )
            )
        if end is not None:
            events.append(
                PatientDischarged(
                    patient_id=P,
                    at=end,
                    source=src,
                    stay_id=sid,
                    disposition=draw(st.sampled_from([None, "home", "exp", "other-hcf"])),
                )
            )
        return _stamp(events)
    if kind == "ed":
        eid = draw(st.sampled_from(["e1", "e2"]))
        src = SourceRef("Encounter", eid, version)
        events = [EdArrived(patient_id=P, at=start, source=src, encounter_id=eid)]
        if end is not None:
            events.append(
                EdDeparted(
                    patient_id=P, at=end, source=src, encounter_id=eid, admitted=draw(st.booleans())
                )
            )
        return _stamp(events)
    if kind == "visit":
        vid = draw(st.sampled_from(["v1", "v2", "v3"]))
        return [
            CommunityVisited(
                patient_id=P,
                at=start,
                source=SourceRef("Encounter", vid, version),
                encounter_id=vid,
                class_code="AMB",
                based_on=draw(st.none() | st.just("r1")),
            )
        ]
    if kind == "referral":
        rid = draw(st.sampled_from(["r1", "r2"]))
        return [
            ReferralSent(
                patient_id=P,
                at=start,
                source=SourceRef("ServiceRequest", rid, version),
                referral_id=rid,
                status=draw(st.sampled_from(["active", "on-hold", "completed"])),
            )
        ]
    if kind == "appt":
        return [
            AppointmentBooked(
                patient_id=P,
                at=start,
                source=SourceRef("Appointment", "a1", version),
                appointment_id="a1",
                start=end,
                status=draw(st.sampled_from(["booked", "fulfilled"])),
                based_on=draw(st.none() | st.just("r1")),
            )
        ]
    if kind == "care":
        src = SourceRef("EpisodeOfCare", "c1", version)
        events = [HomeCareStarted(patient_id=P, at=start, source=src, episode_id="c1")]
        if end is not None:
            events.append(HomeCareEnded(patient_id=P, at=end, source=src, episode_id="c1"))
        return _stamp(events)
    if kind == "death":
        return [PatientDied(patient_id=P, at=start, source=SourceRef("Patient", P, version))]
    # Events no well-formed feed sends: moves and ends of things that may not exist.
    odd = draw(st.sampled_from(["transfer", "discharge", "departure", "care-end"]))
    src = SourceRef("Encounter", f"odd-{odd}", version)
    if odd == "transfer":
        return [
            PatientTransferred(
                patient_id=P, at=start, source=src, stay_id="s1", location="b9", bed="b9"
            )
        ]
    if odd == "discharge":
        return [PatientDischarged(patient_id=P, at=start, source=src, stay_id="s2")]
    if odd == "departure":
        return [EdDeparted(patient_id=P, at=start, source=src, encounter_id="e2")]
    return [HomeCareEnded(patient_id=P, at=start, source=src, episode_id="c1")]


def _one_content_per_version(versions: list[list[PatientEvent]]) -> list[list[PatientEvent]]:
    """A version id names one content (as in FHIR): keep the first draw of each."""
    seen: set[SourceRef] = set()
    kept = []
    for events in versions:
        if events[0].source not in seen:
            seen.add(events[0].source)
            kept.append(events)
    return kept


def _latest_versions(versions: list[list[PatientEvent]]) -> list[list[PatientEvent]]:
    """One version per resource (the highest), so the expected final state is well defined."""
    latest: dict[tuple[str, str], list[PatientEvent]] = {}
    for events in versions:
        src = events[0].source
        key = (src.resource_type, src.resource_id)
        if key not in latest or int(latest[key][0].source.version) < int(src.version):
            latest[key] = events
    return list(latest.values())


def _run(events: list[PatientEvent], rules: PathwayRules) -> PatientState | None:
    state: PatientState | None = None
    for ev in events:
        state, outputs = transition(state, ev, rules)
        assert invariant_violations(state) == [], (ev, invariant_violations(state))
        for output in outputs:
            json.dumps(output_to_json(output))
    return state


@SETTINGS
@given(
    versions=st.lists(resource_version(), min_size=1, max_size=10),
    data=st.data(),
)
def test_random_sequences_never_raise_and_keep_the_invariants(
    versions: list[list[PatientEvent]], data: st.DataObject
) -> None:
    events = [ev for group in versions for ev in group]
    # Feeds repeat themselves and arrive out of order.
    repeats = data.draw(st.lists(st.sampled_from(events), max_size=5))
    arrival = data.draw(st.permutations(events + repeats))
    rules = PathwayRules(
        history_horizon=timedelta(days=data.draw(st.sampled_from([5, 30, 120]))),
        max_records=data.draw(st.sampled_from([2, 200])),
    )
    # Timer ticks between events, at times the events do not know about.
    ticks = data.draw(st.lists(st.integers(0, len(arrival)), max_size=3))
    state: PatientState | None = None
    for i, ev in enumerate(arrival):
        state, outputs = transition(state, ev, rules)
        if i in ticks:
            hours = data.draw(st.integers(0, SPAN_H * 2))
            state, more = check_timers(state, T0 + timedelta(hours=hours), rules)
            outputs = [*outputs, *more]
        assert invariant_violations(state) == [], (ev, invariant_violations(state))
        for output in outputs:
            json.dumps(output_to_json(output))
    assert state is not None
    for hours in data.draw(st.lists(st.integers(0, SPAN_H * 2), max_size=3)):
        state, outputs = check_timers(state, T0 + timedelta(hours=hours), rules)
        assert invariant_violations(state) == []
        for output in outputs:
            json.dumps(output_to_json(output))
    assert len([s for s in state.stays if s.is_open]) <= 1
    assert all(s.bed is None for s in state.stays if not s.is_open)
    data_ = json.loads(json.dumps(state.to_dict()))
    assert PatientState.from_dict(data_) == state
    # The Faust table holds the JSON text, through the changelog's own JSON codec.
    assert PatientState.from_json(json.loads(json.dumps(state.to_json()))) == state


@SETTINGS
@given(versions=st.lists(resource_version(), min_size=1, max_size=10), data=st.data())
def test_the_facts_do_not_depend_on_the_arrival_order(
    versions: list[list[PatientEvent]], data: st.DataObject
) -> None:
    rules = PathwayRules()
    versions = _one_content_per_version(versions)
    expected = _run(
        sorted(
            [ev for group in _latest_versions(versions) for ev in group],
            key=lambda ev: (ev.at, ev.source.resource_id),
        ),
        rules,
    )
    events = [ev for group in versions for ev in group]
    arrival = data.draw(
        st.permutations(events + data.draw(st.lists(st.sampled_from(events), max_size=4)))
    )
    got = _run(arrival, rules)
    assert got is not None and expected is not None
    assert got.facts == expected.facts
    assert (got.stage, got.stay_id, got.ward, got.bed) == (
        expected.stage,
        expected.stay_id,
        expected.ward,
        expected.bed,
    )
    later = T0 + timedelta(hours=SPAN_H * 3)
    got_alerts, _ = check_timers(got, later, rules)
    expected_alerts, _ = check_timers(expected, later, rules)
    assert got_alerts.alerts.keys() == expected_alerts.alerts.keys()


@SETTINGS
@given(versions=st.lists(resource_version(odd=False), min_size=1, max_size=10))
def test_compacting_history_changes_nothing_for_a_feed_in_order(
    versions: list[list[PatientEvent]],
) -> None:
    events = sorted(
        [ev for group in _latest_versions(_one_content_per_version(versions)) for ev in group],
        key=lambda ev: (ev.at, ev.source.resource_id, ev.part),
    )
    kept = _run(events, PathwayRules())
    compacted = _run(events, PathwayRules(history_horizon=timedelta(days=3)))
    assert kept is not None and compacted is not None
    assert compacted.facts == kept.facts
    assert (compacted.stage, compacted.bed, compacted.alerts.keys()) == (
        kept.stage,
        kept.bed,
        kept.alerts.keys(),
    )


@SETTINGS
@given(
    versions=st.lists(resource_version(), min_size=1, max_size=10),
    data=st.data(),
)
def test_advance_is_transition_with_only_its_alert_outputs(
    versions: list[list[PatientEvent]], data: st.DataObject
) -> None:
    events = [ev for group in versions for ev in group]
    arrival = data.draw(st.permutations(events + data.draw(st.lists(st.sampled_from(events)))))
    rules = PathwayRules(history_horizon=timedelta(days=data.draw(st.sampled_from([5, 120]))))
    full: PatientState | None = None
    lean: PatientState | None = None
    raised = 0
    for ev in arrival:
        full, outputs = transition(full, ev, rules)
        lean, alerts = advance(lean, ev, rules)
        assert lean == full
        assert alerts == [o for o in outputs if isinstance(o, AlertRaised | AlertResolved)]
        raised += len(alerts)
    # Hypothesis shows the share of examples with alerts in its statistics.
    event(f"alert outputs: {'some' if raised else 'none'}")


@SETTINGS
@given(
    versions=st.lists(resource_version(), min_size=1, max_size=12),
    data=st.data(),
)
def test_advance_all_gives_the_state_of_advance_one_event_at_a_time(
    versions: list[list[PatientEvent]], data: st.DataObject
) -> None:
    events = [ev for group in _one_content_per_version(versions) for ev in group]
    arrival = data.draw(st.permutations(events + data.draw(st.lists(st.sampled_from(events)))))
    # Part of the feed already folded, then the rest in one batch; any log length makes the
    # batch's late events fold together.
    split = data.draw(st.integers(0, len(arrival)))
    # Every event within the history horizon: what compaction folds away depends on when it
    # runs, in either way of folding (see the compaction property above for a feed in order).
    rules = PathwayRules()
    one_by_one: PatientState | None = None
    for ev in arrival:
        one_by_one, _ = advance(one_by_one, ev, rules)
    before, _ = advance_all(None, arrival[:split], rules, late_batch_log=0)
    together, alerts = advance_all(before, arrival[split:], rules, late_batch_log=0)
    assert together is not None and one_by_one is not None
    assert together.facts == one_by_one.facts
    assert (together.log, together.versions, together.pending) == (
        one_by_one.log,
        one_by_one.versions,
        one_by_one.pending,
    )
    assert together.alerts == one_by_one.alerts
    # The alerts reported, applied in turn to those open before the batch, give those open now.
    open_ = set(before.alerts) if before is not None else set()
    for output in alerts:
        if isinstance(output, AlertRaised):
            open_.add(output.alert_id)
        else:
            open_.discard(output.alert_id)
    assert open_ == set(together.alerts)
