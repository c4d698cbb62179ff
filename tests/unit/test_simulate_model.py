"""The territory simulator's model: determinism, capacity, seasonality, pathway rates."""

from __future__ import annotations

import itertools
import json
import statistics
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from simulate.imperfect import Deliverer
from simulate.model import Simulation
from simulate.run import deliveries
from simulate.territory import (
    SurgeConfig,
    Territory,
    default_territory,
    load_territory,
)
from simulate.truth import occupancy_rows, pathway_stats

SMALL = Path(__file__).resolve().parents[1] / "fixtures" / "simulate" / "small_territory.yaml"
START = datetime(2026, 1, 5, tzinfo=ZoneInfo("Europe/Paris"))  # a Monday


@pytest.fixture(scope="module")
def small() -> Territory:
    return load_territory(SMALL)


def run_all(territory: Territory, seed: int, days: float, start: datetime = START) -> Simulation:
    sim = Simulation(territory, seed, start, days)
    for _ in sim.run():
        pass
    return sim


@pytest.fixture(scope="module")
def long_run(small: Territory) -> Simulation:
    """90 days: long enough for 30-day readmission windows."""
    return run_all(small, 11, 90)


def stream(territory: Territory, seed: int, days: float) -> list[str]:
    sim = Simulation(territory, seed, START, days)
    return [
        json.dumps(d.resource, sort_keys=True) + d.tag
        for d in deliveries(sim, Deliverer(territory.imperfections, seed))
    ]


def test_same_seed_same_output_and_another_seed_differs(small: Territory) -> None:
    first = stream(small, 3, 3)
    again = stream(small, 3, 3)
    other = stream(small, 4, 3)
    assert len(first) > 1000
    assert first == again
    assert first != other


def test_same_seed_same_truth(small: Territory) -> None:
    a, b = run_all(small, 5, 2), run_all(small, 5, 2)
    assert occupancy_rows(a) == occupancy_rows(b)
    assert a.stays == b.stays and a.counters == b.counters


def test_nothing_is_emitted_before_the_start_and_times_never_go_backwards(
    small: Territory,
) -> None:
    sim = Simulation(small, 9, START, 2)
    sent = [e.sent_at for e in sim.run()]
    assert sent and min(sent) == sim.start
    assert sent == sorted(sent)
    assert max(sent) < sim.end


def test_occupancy_stays_within_capacity_and_wards_are_busy(long_run: Simulation) -> None:
    rows = occupancy_rows(long_run)
    assert rows
    assert all(r["occupancy"] <= r["capacity"] for r in rows)
    assert long_run.counters.over_capacity_placements == 0
    inpatient = [r for r in rows if r["service"] != "urgences"]
    beds = sum(w.beds for w in long_run.territory.wards if not w.is_ed)
    hours = {r["hour"] for r in inpatient}
    mean_occ = sum(r["occupancy"] for r in inpatient) / len(hours) / beds
    assert 0.6 < mean_occ < 0.98
    # The ward is full from the first hour: the warm-up ran before the start.
    first_hour = min(hours)
    at_start = sum(r["occupancy"] for r in inpatient if r["hour"] == first_hour) / beds
    assert at_start > 0.5


def test_surge_allows_over_capacity_only_during_the_surge(small: Territory) -> None:
    # A surge from 10 January, with ED arrivals tripled: wards overflow only from then on.
    surged = replace(
        small,
        surge=SurgeConfig(
            enabled=True, start="01-10", end="02-28", ed_factor=3.0, allow_over_capacity=True
        ),
    )
    sim = run_all(surged, 2, 14)
    rows = occupancy_rows(sim)
    over = [r for r in rows if r["occupancy"] > r["capacity"]]
    assert over, "a tripled ED flow must overflow some ward"
    surge_start = datetime(2026, 1, 10, tzinfo=ZoneInfo("Europe/Paris"))
    assert all(datetime.fromisoformat(r["hour"]) >= surge_start for r in over)
    # Extra beds are Encounter locations at ward level: their moves have no bed.
    assert any(m.bed is None for s in sim.stays.values() for m in s.moves)
    plain = run_all(small, 2, 14)

    def surge_visits(run: Simulation) -> int:
        return sum(1 for s in run.stays.values() if s.cls == "EMER" and s.start >= surge_start)

    assert surge_visits(sim) > 2 * surge_visits(plain)


def ed_arrivals_by_local_day(sim: Simulation) -> dict[int, list[int]]:
    tz = ZoneInfo(sim.territory.timezone)
    counts: dict[object, int] = {}
    for s in sim.stays.values():
        if s.cls == "EMER" and s.start >= sim.start and sim.end and s.start < sim.end:
            day = s.start.astimezone(tz).date()
            counts[day] = counts.get(day, 0) + 1
    by_weekday: dict[int, list[int]] = {}
    for day, n in counts.items():
        by_weekday.setdefault(day.weekday(), []).append(n)  # type: ignore[attr-defined]
    return by_weekday


@pytest.mark.parametrize(
    ("factors", "sign"),
    [
        ((1.12, 1.02, 0.99, 0.99, 1.01, 0.80, 0.75), -1),  # calmer weekends
        ((0.9, 0.9, 0.9, 0.9, 0.9, 1.3, 1.35), 1),  # busier weekends
    ],
)
def test_weekday_weekend_difference_has_the_configured_sign(
    small: Territory, factors: tuple[float, ...], sign: int
) -> None:
    territory = replace(small, ed=replace(small.ed, weekday_factors=factors), warmup_days=2)
    # 35 days from a Monday in February (no public holiday), so each weekday appears 5 times.
    sim = run_all(territory, 21, 35, start=datetime(2026, 2, 2, tzinfo=UTC))
    by_weekday = ed_arrivals_by_local_day(sim)
    weekday = statistics.mean(n for d in range(5) for n in by_weekday[d])
    weekend = statistics.mean(n for d in (5, 6) for n in by_weekday[d])
    assert (weekend - weekday) * sign > 0, (weekday, weekend)


def test_ed_arrivals_follow_the_hourly_profile(long_run: Simulation) -> None:
    tz = ZoneInfo("Europe/Paris")
    by_hour = [0] * 24
    for s in long_run.stays.values():
        if s.cls == "EMER":
            by_hour[s.start.astimezone(tz).hour] += 1
    assert sum(by_hour[3:6]) * 3 < sum(by_hour[10:13])


def test_public_holidays_change_ed_arrivals(small: Territory) -> None:
    # Holidays count three times the arrivals (less what the full ED diverts): 1 January
    # (Thursday) stands out from 8 January.
    territory = replace(small, ed=replace(small.ed, holiday_factor=3.0), warmup_days=1)
    sim = run_all(territory, 8, 9, start=datetime(2025, 12, 31, tzinfo=UTC))
    tz = ZoneInfo("Europe/Paris")
    per_day: dict[str, int] = {}
    for s in sim.stays.values():
        if s.cls == "EMER" and s.start >= sim.start:
            key = s.start.astimezone(tz).date().isoformat()
            per_day[key] = per_day.get(key, 0) + 1
    assert per_day["2026-01-01"] > 1.5 * per_day["2026-01-08"]


def test_ed_to_admission_ratio_is_between_20_and_30_percent(long_run: Simulation) -> None:
    stats = pathway_stats(long_run)
    assert stats["ed_visits"] > 3000
    assert 0.20 <= stats["ed_admission_ratio"] <= 0.30


def test_default_territory_ed_to_admission_ratio(small: Territory) -> None:
    sim = Simulation(default_territory(), 1, START, 2, warmup_days=5)
    for _ in sim.run():
        pass
    assert sim.territory.total_beds == 1700 + 155 + 200 + 155
    stats = pathway_stats(sim)
    assert 0.20 <= stats["ed_admission_ratio"] <= 0.30
    assert all(r["occupancy"] <= r["capacity"] for r in occupancy_rows(sim))


def test_readmissions_within_30_days_are_10_to_15_percent(long_run: Simulation) -> None:
    stats = pathway_stats(long_run)
    assert stats["discharges_with_full_window"] > 500
    assert 0.10 <= stats["readmission_rate"] <= 0.15


@pytest.mark.parametrize("share", [0.2, 0.5])
def test_share_of_missed_follow_ups_is_the_configured_one(small: Territory, share: float) -> None:
    territory = replace(small, flows=replace(small.flows, followup_missing_share=share))
    sim = run_all(territory, 4, 30)
    stats = pathway_stats(sim)
    assert stats["followups_due"] > 400
    assert abs(stats["followup_missing_share"] - share) < 0.06


def test_icu_patients_step_down_to_another_ward(long_run: Simulation) -> None:
    step_downs = [
        s
        for s in long_run.stays.values()
        if len(s.moves) > 1 and long_run.territory.ward(s.moves[0].ward).service == "rea"
    ]
    assert step_downs
    for stay in step_downs:
        for before, after in itertools.pairwise(stay.moves):
            assert before.end == after.start
            assert before.ward != after.ward


def test_dispositions_cover_home_home_care_rehab_and_death(long_run: Simulation) -> None:
    seen = {s.disposition for s in long_run.stays.values() if s.cls == "IMP" and s.end}
    assert {"home", "home_care", "rehab", "exp"} <= seen
    dead = [p for p in long_run.patients.values() if p.deceased_at is not None]
    assert dead
    assert all(
        s.start < p.deceased_at  # type: ignore[operator]
        for p in dead
        for s in long_run.stays.values()
        if s.patient == p.id
    )
    assert long_run.homecare


def test_lengths_of_stay_are_log_normal_per_service(long_run: Simulation) -> None:
    # Median single-ward stay in geriatrics (9 days) is longer than in cardiology (4 days).
    def median_days(service: str) -> float:
        days = [
            (s.end - s.start).total_seconds() / 86400
            for s in long_run.stays.values()
            if s.cls == "IMP"
            and s.end
            and len(s.moves) == 1
            and long_run.territory.ward(s.moves[0].ward).service == service
        ]
        return statistics.median(days)

    assert median_days("geriatrie") > 1.5 * median_days("cardio")


def test_referrals_lead_to_booked_then_fulfilled_admissions(long_run: Simulation) -> None:
    fulfilled = [
        a
        for a in long_run.appointments.values()
        if a.purpose == "admission" and a.status == "fulfilled"
    ]
    assert len(fulfilled) > 100
    by_referral = {s.based_on: s for s in long_run.stays.values() if s.cls == "IMP"}
    for appt in fulfilled[:50]:
        stay = by_referral[appt.based_on]
        assert stay.start == appt.start and stay.admit_source == "gp"
        assert long_run.referrals[appt.based_on or ""].authored < appt.created < appt.start
    # Elective admissions happen on working days (a few on weekends).
    tz = ZoneInfo("Europe/Paris")
    weekend = sum(1 for a in fulfilled if a.start.astimezone(tz).weekday() >= 5)
    assert weekend < 0.1 * len(fulfilled)


def test_real_time_pacing_sleeps_simulated_time_over_speed(small: Territory) -> None:
    from simulate.run import run_simulation

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

        def sleep(self, s: float) -> None:
            self.now += s

    class Null:
        def __init__(self) -> None:
            self.n = 0

        def send(self, resource: dict, valid: bool) -> None:
            self.n += 1

        def flush(self) -> None: ...

        def close(self) -> None: ...

        def summary(self) -> dict[str, int]:
            return {"n": self.n}

    clock = Clock()
    sink = Null()
    summary = run_simulation(
        small, 1, START, 0.5, sink, speed=60, warmup_days=1, clock=clock, sleep=clock.sleep
    )
    # Half a day at 60x is 720 s of wall time, give or take the last gap between events.
    assert 700 <= clock.now <= 721
    assert summary.resources == sink.n > 100
    assert summary.end - summary.start == timedelta(days=0.5)


PARIS = ZoneInfo("Europe/Paris")


@pytest.mark.parametrize(
    "start", [datetime(2025, 10, 20, tzinfo=PARIS), datetime(2026, 3, 25, tzinfo=PARIS)]
)
def test_no_bed_is_ever_given_twice_and_time_never_goes_back_across_dst(
    small: Territory, start: datetime
) -> None:
    # Both DST changes: days that are 23 or 25 hours long locally.
    sim = Simulation(small, 6, start, 10)
    sent = [e.sent_at for e in sim.run()]
    assert sent == sorted(sent)
    by_bed: dict[str, list[tuple[datetime, datetime]]] = {}
    far = datetime.max.replace(tzinfo=UTC)
    for stay in sim.stays.values():
        for m in stay.moves:
            if m.bed:
                by_bed.setdefault(m.bed, []).append((m.start, m.end or far))
    assert by_bed
    for bed, spans in by_bed.items():
        spans.sort()
        for (_, end), (nxt, _) in itertools.pairwise(spans):
            assert end <= nxt, bed
    assert all(r["occupancy"] <= r["capacity"] for r in occupancy_rows(sim))
