"""The dashboard's SQL, on the session's PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from dashboard import queries
from parcours.db import make_engine
from tests.seed import Seeded, seed

pytestmark = pytest.mark.integration


@pytest.fixture
def seeded(pg_url: str) -> tuple[Engine, Seeded]:
    engine = make_engine(pg_url)
    return engine, seed(engine, f"q{uuid.uuid4().hex[:6]}-")


def test_bed_board_lists_the_fullest_ward_first_with_free_beds(
    seeded: tuple[Engine, Seeded],
) -> None:
    engine, s = seeded
    board = queries.bed_board(engine, "ward")
    mine = board[board["unit_id"].isin([s.ward_full, s.ward_quiet])]
    assert mine["unit_id"].tolist() == [s.ward_full, s.ward_quiet]
    assert mine["free"].tolist() == [0, 15]
    assert mine["occupancy_rate"].tolist() == [1.0, 0.25]


def test_patient_search_finds_the_patient(seeded: tuple[Engine, Seeded]) -> None:
    engine, s = seeded
    assert queries.find_patients(engine, s.prefix) == [s.patient]
    assert queries.find_patients(engine, "no-such-patient") == []


def test_acknowledging_records_who_and_when_once(seeded: tuple[Engine, Seeded]) -> None:
    engine, s = seeded
    at = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
    assert s.alert in queries.alerts(engine, "open", None, True)["alert_id"].tolist()
    with pytest.raises(ValueError, match="name"):
        queries.acknowledge_alert(engine, s.alert, "   ", at)
    assert queries.acknowledge_alert(engine, s.alert, "Dr Martin", at, "called the GP")
    assert not queries.acknowledge_alert(engine, s.alert, "Someone else", at)
    row = queries.alerts(engine, "open")
    row = row[row["alert_id"] == s.alert].iloc[0]
    assert row["acknowledged_by"] == "Dr Martin"
    assert s.alert not in queries.alerts(engine, "open", None, True)["alert_id"].tolist()
    trail = queries.alert_audit(engine, s.alert)
    assert trail[["action", "actor", "note"]].values.tolist() == [
        ["acknowledge", "Dr Martin", "called the GP"]
    ]


def test_forecast_and_accuracy_best_model_first(seeded: tuple[Engine, Seeded]) -> None:
    engine, s = seeded
    assert s.ward_full in queries.forecast_units(engine)
    fc = queries.forecast(engine, s.ward_full)
    assert sorted(fc["model"].unique()) == ["naive", "prophet"]
    assert (fc["yhat_lower"] <= fc["yhat"]).all()
    assert queries.forecast_accuracy(engine, s.ward_full)["model"].tolist() == ["prophet", "naive"]
    series = queries.forecast_series(engine)
    mine = series[series["unit_id"] == s.ward_full].iloc[0]
    assert (mine["selected_model"], mine["unit_type"], mine["freq"]) == ("prophet", "ward", "h")
    terms = queries.forecast_terms(engine, s.ward_full, model="prophet")
    assert len(terms) == 24
    assert (terms["now"] == 21.0).all()


def test_feed_health_shows_counters_and_the_element_at_fault(seeded: tuple[Engine, Seeded]) -> None:
    engine, s = seeded
    feeds = queries.feeds(engine)
    mine = feeds[feeds["name"] == s.integrator].iloc[0]
    assert (mine["accepted_total"], mine["rejected_total"]) == (120, 1)
    rejected = queries.recent_rejections(engine, source=s.integrator)
    assert rejected["expression"].tolist() == ["Encounter.status"]


def test_stream_progress_tells_a_silent_worker_from_one_catching_up(
    seeded: tuple[Engine, Seeded],
) -> None:
    engine, s = seeded
    progress = queries.stream_progress(engine, datetime.now(UTC))
    mine = progress[progress["topic"] == s.raw_topic]
    assert mine["partition"].tolist() == [0, 1]
    assert mine["status"].tolist()[0] == "up to date"
    assert mine["status"].tolist()[1].startswith("no report for 60 min")
