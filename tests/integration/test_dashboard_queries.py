"""The dashboard's SQL, on the session's PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import Engine

from dashboard import queries
from parcours.db import make_engine, upsert
from parcours.db.pathway_models import CensusHourlyRow
from tests.seed import Seeded, daily_scores, seed, seed_daily, seed_outlook

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
    # A coordinator who follows a hospital finds its patients only.
    assert queries.find_patients(engine, s.prefix, hospital_ids=[s.hospital]) == [s.patient]
    assert queries.find_patients(engine, s.prefix, hospital_ids=["Organization/other"]) == []


def test_acknowledging_records_who_and_when_once(seeded: tuple[Engine, Seeded]) -> None:
    engine, s = seeded
    at = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
    assert s.alert in queries.alerts(engine, "open", None, True)["alert_id"].tolist()
    with pytest.raises(ValueError, match="name"):
        queries.acknowledge_alert(engine, s.alert, "   ", at)
    assert queries.acknowledge_alert(engine, s.alert, "Dr Martin", at, "called the GP", "admin")
    assert not queries.acknowledge_alert(engine, s.alert, "Someone else", at)
    row = queries.alerts(engine, "open")
    row = row[row["alert_id"] == s.alert].iloc[0]
    assert row["acknowledged_by"] == "Dr Martin"
    assert s.alert not in queries.alerts(engine, "open", None, True)["alert_id"].tolist()
    trail = queries.alert_audit(engine, s.alert)
    assert trail[["action", "actor", "role", "note"]].values.tolist() == [
        ["acknowledge", "Dr Martin", "admin", "called the GP"]
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


def test_daily_forecasts_are_read_apart_from_the_hourly_ones(
    seeded: tuple[Engine, Seeded],
) -> None:
    engine, s = seeded
    end = seed_daily(engine, s)
    daily = queries.forecast_series(engine, "occupancy_daily")
    mine = daily[daily["unit_id"] == s.ward_full].iloc[0]
    assert (mine["selected_model"], mine["freq"], mine["horizon"]) == ("ensemble", "D", 14)
    fc = queries.forecast(engine, s.ward_full, "occupancy_daily")
    assert sorted(fc["model"].unique()) == ["ensemble", "naive", "stock_flow"]
    assert pd.to_datetime(fc["ds"], utc=True).min() == pd.Timestamp(end) + timedelta(days=1)
    assert len(queries.forecast_terms(engine, s.ward_full, "occupancy_daily")) == 14
    accuracy = queries.forecast_accuracy(engine, s.ward_full, "occupancy_daily")
    assert accuracy["model"].tolist() == ["ensemble", "stock_flow", "naive"]
    # Scores of an earlier run with another horizon stay stored: only the latest run's show,
    # one row per model.
    before = pd.Timestamp(accuracy["computed_at"].max()).to_pydatetime() - timedelta(days=3)
    with engine.begin() as conn:
        daily_scores(
            conn,
            s,
            [
                {**r, "horizon": 7, "mae": 0.1, "computed_at": before}
                for r in accuracy.to_dict("records")
            ],
        )
    again = queries.forecast_accuracy(engine, s.ward_full, "occupancy_daily")
    assert again["model"].tolist() == ["ensemble", "stock_flow", "naive"]
    assert set(again["horizon"]) == {14}
    # The hourly reads see none of the daily rows.
    assert sorted(queries.forecast(engine, s.ward_full)["model"].unique()) == ["naive", "prophet"]
    hourly = queries.forecast_series(engine)
    assert hourly[hourly["unit_id"] == s.ward_full]["freq"].tolist() == ["h"]


def test_census_at_midnight_counts_a_silent_midnight_as_zero(
    seeded: tuple[Engine, Seeded],
) -> None:
    engine, s = seeded
    unit = f"Location/{s.prefix}gap"
    first = datetime(2026, 11, 18, 22, 0, tzinfo=UTC)
    hours = [first + timedelta(hours=h) for h in range(54)]
    silent = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
    with engine.begin() as conn:
        upsert(
            conn,
            CensusHourlyRow,
            [
                {
                    "unit_type": "ward",
                    "unit_id": unit,
                    "hour": hour,
                    "hospital_id": s.hospital,
                    "occupancy": 10 + hour.day,
                    "admissions": 0,
                    "discharges": 0,
                    "transfers_in": 0,
                    "transfers_out": 0,
                    "ed_arrivals": 0,
                }
                for hour in hours
                if hour != silent
            ],
            key=["unit_type", "unit_id", "hour"],
        )
    got = queries.census_at_midnight(
        engine, "ward", unit, datetime(2026, 11, 18, tzinfo=UTC), datetime(2026, 11, 21, tzinfo=UTC)
    )
    # 18/11 00:00 is before the unit's first row; the rows after 21/11 00:00 are not read.
    assert [t.isoformat() for t in got["ds"]] == [
        "2026-11-19T00:00:00+00:00",
        "2026-11-20T00:00:00+00:00",
        "2026-11-21T00:00:00+00:00",
    ]
    assert got["y"].tolist() == [29.0, 0.0, 31.0]
    empty = queries.census_at_midnight(engine, "ward", f"{unit}-none", first, silent)
    assert empty.empty


def test_a_unit_s_selected_forecast_with_its_terms_and_the_departures_expected(
    seeded: tuple[Engine, Seeded],
) -> None:
    engine, s = seeded
    live = seed_outlook(engine, s, datetime.now(UTC))
    forecast = queries.unit_forecast(engine, s.hospital)
    assert forecast is not None
    assert (forecast.model, forecast.terms_model, forecast.freq) == ("stock_flow",) * 2 + ("h",)
    assert len(forecast.points) == len(forecast.terms) == 72
    assert forecast.history_end == live.origin
    # The ward's Prophet forecast has Prophet terms; the quiet ward has no forecast at all.
    ward = queries.unit_forecast(engine, s.ward_full)
    assert ward is not None and ward.model == ward.terms_model == "prophet"
    assert queries.unit_forecast(engine, s.ward_quiet) is None
    # Departures over six hours from the origin: a third of a patient an hour. The ward's forecast
    # ended days ago: it says nothing about them.
    gone, covered = queries.expected_departures(
        engine,
        [s.hospital, s.ward_full, s.ward_quiet],
        live.origin,
        live.origin + timedelta(hours=6),
    )
    assert (gone, covered) == (2.0, [s.hospital])


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
    assert mine["silent"].tolist() == [False, True]
    assert mine["status"].tolist()[0] == "à jour"
    assert mine["status"].tolist()[1].startswith("aucun rapport depuis 60 min")
    english = queries.stream_progress(engine, datetime.now(UTC), lang="en")
    assert english[english["topic"] == s.raw_topic]["status"].tolist()[0] == "up to date"


def test_worklists_find_the_patient_discharged_without_follow_up(
    seeded: tuple[Engine, Seeded],
) -> None:
    engine, s = seeded
    # The seeded stay ended a day before T0; nobody in the community has seen the patient since.
    at = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
    gone = queries.discharged_without_follow_up(engine, at, hospital_ids=[s.hospital])
    assert gone["patient_id"].tolist() == [s.patient]
    assert round(float(gone["days_since"].iloc[0]), 2) == 2.04
    assert queries.last_wards(engine, gone["stay_id"].tolist()) == {
        f"{s.prefix}stay-1": s.ward_full
    }
    assert queries.discharged_without_follow_up(engine, at, hospital_ids=["Organization/x"]).empty
    assert queries.ed_now(engine, at, timedelta(hours=4), [s.hospital]).empty
    long = queries.long_stays(engine, at, timedelta(days=1), [s.hospital])
    assert long.empty  # the only stay is closed


def test_ward_names_and_hourly_heat_map(seeded: tuple[Engine, Seeded]) -> None:
    engine, s = seeded
    heat = queries.occupancy_heatmap(engine, datetime(2026, 11, 19, 8, 0, tzinfo=UTC), s.hospital)
    assert set(heat["unit_id"]) == {s.ward_full}
    assert len(heat) == 25  # the seeded hours from T0 - 24 h to T0
    assert heat["rate"].max() == 1.0
    age = queries.data_age(engine, datetime(2026, 11, 20, 10, 0, tzinfo=UTC), [s.hospital])
    assert age == timedelta(hours=2)


def test_pathway_totals_agree_with_the_pathway_summary(seeded: tuple[Engine, Seeded]) -> None:
    from streams import read

    engine, _s = seeded
    totals, summary = queries.pathway_totals(engine), read.summary(engine)
    for key in ("patients", "stays", "open_stays", "ed_visits", "open_alerts"):
        assert totals[key] == summary[key], key
    assert totals["los_hours_median"] == pytest.approx(summary["los_hours_median"], abs=0.01)
