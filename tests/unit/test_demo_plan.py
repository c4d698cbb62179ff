"""The demo's simulation: history then live is one simulation (nothing doubled, nothing missing),
paced from the end of the history; its plan is stored and extended to where it got."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from parcours.demo import (
    PLAN_FILE,
    SIMULATOR_STATE_FILE,
    DemoOptions,
    census_horizon_days,
    new_plan,
    read_plan,
)
from simulate.run import History, run_simulation
from simulate.territory import Territory, load_territory

SMALL = Path(__file__).resolve().parents[1] / "fixtures" / "simulate" / "small_territory.yaml"
START = datetime(2026, 1, 5, tzinfo=ZoneInfo("Europe/Paris"))


@pytest.fixture(scope="module")
def small() -> Territory:
    return load_territory(SMALL)


class ListSink:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, str]] = []
        self.closed = False

    def send(self, resource: dict[str, Any], valid: bool) -> None:
        self.items.append(
            (resource["resourceType"], resource["id"], json.dumps(resource, sort_keys=True))
        )

    def flush(self) -> None: ...

    def close(self) -> None:
        self.closed = True

    def summary(self) -> dict[str, int]:
        return {"n": len(self.items)}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_history_then_live_is_the_one_simulation_paced_from_the_end_of_the_history(
    small: Territory,
) -> None:
    whole = ListSink()
    run_simulation(small, 3, START, 3, whole, warmup_days=2)

    until = START + timedelta(days=2)
    history_sink, live_sink, clock = ListSink(), ListSink(), Clock()
    done: list[int] = []
    reached: list[datetime] = []
    waits = iter([False] * 4 + [True])
    history = History(
        until,
        history_sink,
        on_done=done.append,
        on_reached=reached.append,
        go_live=lambda: next(waits),
    )
    run_simulation(
        small,
        3,
        START,
        3,
        live_sink,
        speed=60,
        warmup_days=2,
        clock=clock,
        sleep=clock.sleep,
        history=history,
    )
    # Every resource once, in the same order: the history's then the live part's.
    assert history_sink.items + live_sink.items == whole.items
    assert history_sink.closed and done == [len(history_sink.items)]
    assert len(history_sink.items) > 2 * len(live_sink.items) > 0
    # The live part waited for go_live (4 × 0.5 s), then only the live day is paced:
    # 86,400 s / 60 = 1,440 s, not three days' 4,320 s.
    assert 1402 <= clock.now <= 1443
    assert reached and reached[-1] >= until
    assert reached == sorted(reached)


def test_a_history_already_in_the_topic_is_skipped_and_the_live_part_is_the_same(
    small: Territory,
) -> None:
    until = START + timedelta(days=1)
    first_live, again_live = ListSink(), ListSink()
    history_sink = ListSink()
    run_simulation(
        small, 4, START, 2, first_live, warmup_days=1, history=History(until, ListSink())
    )
    run_simulation(
        small, 4, START, 2, again_live, warmup_days=1, history=History(until, history_sink, True)
    )
    assert history_sink.items == []
    assert again_live.items == first_live.items != []


def test_a_new_plan_ends_its_history_now_and_gets_its_own_ids() -> None:
    now = datetime(2026, 12, 5, 23, 38, 41, tzinfo=UTC)
    plan = new_plan(DemoOptions(history_days=30), "topic-a", now)
    assert plan.history_until == "2026-12-05T23:38:00+00:00"
    assert plan.start == "2026-11-05T23:00:00+00:00"
    assert plan.id_prefix == "2611052300-"
    assert plan.has_history
    live_only = new_plan(DemoOptions(history_days=0), "topic-a", now)
    assert not live_only.has_history


def test_the_stored_plan_extends_to_where_the_simulation_got(tmp_path: Path) -> None:
    plan = new_plan(DemoOptions(), "topic-a", datetime(2026, 12, 5, 23, 38, tzinfo=UTC))
    assert read_plan(tmp_path) is None
    (tmp_path / PLAN_FILE).write_text(plan.to_json())
    assert read_plan(tmp_path) == plan
    state = {"start": plan.start, "history_done": True, "reached": "2026-12-06T01:13:41+00:00"}
    (tmp_path / SIMULATOR_STATE_FILE).write_text(json.dumps(state))
    extended = read_plan(tmp_path)
    assert extended is not None
    assert extended.history_until == "2026-12-06T01:13:41+00:00"
    assert (extended.start, extended.id_prefix, extended.seed) == (
        plan.start,
        plan.id_prefix,
        plan.seed,
    )
    # The state of another simulation (another start) says nothing about this one.
    state["start"] = "2026-11-01T00:00:00+00:00"
    (tmp_path / SIMULATOR_STATE_FILE).write_text(json.dumps(state))
    assert read_plan(tmp_path) == plan
    (tmp_path / PLAN_FILE).write_text("{not json")
    assert read_plan(tmp_path) is None


def test_the_demo_census_horizon_covers_two_days_of_its_simulator() -> None:
    assert census_horizon_days(60) == 120
    assert census_horizon_days(600) == 1200
    assert census_horizon_days(1) == 30
