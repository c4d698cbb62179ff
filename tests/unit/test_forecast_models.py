"""Stock–flow forecasting: metrics against hand-computed values, the remaining-LOS curve against a
known LOS distribution, the stock–flow model against seasonal naive on simulated history, and
the census file loaders on good and bad files."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecasting import ForecastingError
from forecasting.backtest import calibrate, run_backtest
from forecasting.metrics import (
    conformal_halfwidths,
    conformal_quantile,
    coverage,
    mae,
    mase,
    naive_scale,
    rmse,
)
from forecasting.models import SeasonalNaive
from forecasting.spf import load_census_csv, load_spf
from forecasting.stockflow import EpisodeStockFlow, FlowStockFlow
from forecasting.survival import fit_stay_curve


def test_mae_rmse_and_mase_match_hand_computed_values() -> None:
    actual = [10, 12, 9, 11]
    forecast = [11, 10, 9, 14]
    # |errors| = 1, 2, 0, 3
    assert mae(actual, forecast) == 1.5
    assert math.isclose(rmse(actual, forecast), math.sqrt((1 + 4 + 0 + 9) / 4))
    history = [5, 7, 6, 9, 8]
    # naive in-sample errors: 2, 1, 3, 1 → 1.75
    assert naive_scale(history) == 1.75
    assert math.isclose(mase(actual, forecast, history), 1.5 / 1.75)
    # seasonal (2) in-sample errors: |6-5|, |9-7|, |8-6| → 5/3
    assert math.isclose(mase(actual, forecast, history, season=2), 1.5 / (5 / 3))
    assert mase([3, 3], [3, 3], [4, 4, 4]) == 0.0
    assert mase([3, 3], [2, 3], [4, 4, 4]) == math.inf


def test_coverage_counts_the_bounds_as_inside() -> None:
    assert coverage([1, 2, 3, 4], [0, 2, 3.5, 0], [1, 5, 4, 3]) == 0.5


def test_conformal_quantile_takes_the_adjusted_rank() -> None:
    scores = [0.5, 0.1, 0.4, 0.3, 0.2, 0.9, 0.8, 0.7, 0.6]  # n = 9
    # ceil((9 + 1) * 0.8) = 8th smallest = 0.8
    assert conformal_quantile(scores, 0.8) == 0.8
    # ceil(10 * 0.5) = 5th smallest
    assert conformal_quantile(scores, 0.5) == 0.5
    # too few scores for the rank: the largest
    assert conformal_quantile([0.1, 0.2], 0.8) == 0.2


def test_conformal_halfwidths_scale_each_lead_by_its_errors() -> None:
    # Four folds, two leads; lead 2 errors are twice lead 1's.
    residuals = np.array([[1.0, 2.0], [-1.0, -2.0], [1.0, 2.0], [-1.0, -2.0]])
    half = conformal_halfwidths(residuals, 0.8)
    # rms per lead 1 and 2; every scaled score is 1, so q = 1.
    assert np.allclose(half, [1.0, 2.0])
    # Widths never shrink with the lead.
    wild = conformal_halfwidths(np.array([[3.0, 1.0], [-3.0, 1.0]]), 0.8)
    assert wild[1] >= wild[0]


def test_calibrated_intervals_stay_within_zero_and_capacity() -> None:
    fc = pd.DataFrame(
        {
            "ds": pd.date_range("2026-01-01", periods=2, freq="D"),
            "yhat": [1.0, 29.0],
            "yhat_lower": [0.0, 0.0],
            "yhat_upper": [9.0, 99.0],
        }
    )
    out = calibrate(fc, np.array([[3.0, 3.0], [-3.0, -3.0]]), 0.8, capacity=30)
    assert list(out["yhat_lower"]) == [0.0, 26.0]
    assert list(out["yhat_upper"]) == [4.0, 30.0]


def test_kaplan_meier_recovers_a_known_lognormal_length_of_stay() -> None:
    rng = np.random.default_rng(11)
    median_h, sigma = 4.0 * 24, 0.6  # the simulator's medicine ward: 4 days, sigma 0.6
    los = rng.lognormal(np.log(median_h), sigma, 4000)
    # Stays still open when the curve is fitted: censored at a uniform current length.
    seen = rng.uniform(0, 3 * median_h, len(los))
    ended = los <= seen
    durations = np.where(ended, los, seen)
    curve = fit_stay_curve(durations, ended)
    from statistics import NormalDist

    for t in (24.0, 72.0, 96.0, 168.0, 240.0):
        truth = 1 - NormalDist(np.log(median_h), sigma).cdf(np.log(t))
        assert abs(float(curve.at(t)) - truth) < 0.03, t
    # Remaining stay: a patient 5 days in stays one more day with S(6 d) / S(5 d).
    s5 = 1 - NormalDist(np.log(median_h), sigma).cdf(np.log(120))
    s6 = 1 - NormalDist(np.log(median_h), sigma).cdf(np.log(144))
    assert abs(float(curve.still_there(120.0, 24.0)) - s6 / s5) < 0.06
    # Past the longest stay seen the patient still leaves, at a finite pace.
    far = float(curve.still_there(10_000.0, 24.0))
    assert 0.0 < far < 1.0


def test_stays_under_way_when_the_data_begin_enter_the_curve_at_their_length_then() -> None:
    """Stays begun before the data begin (time 0) are known only if still there at 0: a sample
    biased toward long stays, unless each enters the curve at its length at 0."""
    rng = np.random.default_rng(11)
    start = rng.uniform(-24 * 60, 24 * 5, 40000)
    length = rng.lognormal(np.log(96.0), 0.6, len(start))
    seen = start + length > 0
    start, length = start[seen], length[seen]
    entry = np.maximum(-start, 0.0)
    biased = fit_stay_curve(length, np.ones(len(length), dtype=bool))
    truncated = fit_stay_curve(length, np.ones(len(length), dtype=bool), entry)
    # The true median is 96 hours: S(96) = 0.5.
    assert abs(float(truncated.at(96.0)) - 0.5) < 0.03
    assert float(biased.at(96.0)) > 0.57


def test_too_few_finished_stays_is_a_clear_error() -> None:
    with pytest.raises(ForecastingError, match="finished stays"):
        fit_stay_curve([10.0, 20.0, 30.0], [True, False, True])


def simulated_ward(days: int = 90, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A ward with arrivals by hour of week (a day peak, quieter weekends) and lognormal stays
    (median 4 days, sigma 0.6); its stays and its hourly census (present at each hour start)."""
    rng = np.random.default_rng(seed)
    hours = pd.date_range("2026-01-05", periods=24 * days, freq="h")
    hod, dow = hours.hour.to_numpy(), hours.dayofweek.to_numpy()
    rate = 0.9 * (0.3 + 1.4 * np.exp(-(((hod - 14) / 4.0) ** 2))) * np.where(dow >= 5, 0.6, 1.0)
    n = rng.poisson(rate)
    offsets = pd.to_timedelta(rng.uniform(0, 3600, n.sum()), unit="s").to_numpy()
    starts = np.repeat(hours.to_numpy(), n) + offsets
    los = rng.lognormal(np.log(96.0), 0.6, len(starts))
    ends = starts + pd.to_timedelta(los, unit="h").to_numpy()
    stays = pd.DataFrame({"start": starts, "end": ends})
    stays.loc[stays["end"] > hours[-1], "end"] = pd.NaT
    s = stays["start"].to_numpy()
    e = stays["end"].fillna(pd.Timestamp.max).to_numpy()
    occupancy = np.array([((s <= h) & (e > h)).sum() for h in hours.to_numpy()], dtype=float)
    return stays, pd.DataFrame({"ds": hours, "y": occupancy})


def test_stock_flow_beats_seasonal_naive_at_24_hours_with_calibrated_intervals() -> None:
    stays, census = simulated_ward()
    bt = run_backtest(
        census, [EpisodeStockFlow(stays), SeasonalNaive(24)], horizon=24, freq="h", folds=30
    )
    sf, snaive = bt.of("stock_flow"), bt.of("seasonal_naive_24")
    assert bt.selected == "stock_flow"
    assert sf.mase < 1.0
    assert sf.mase < snaive.mase
    assert sf.mae_at(24) < snaive.mae_at(24)
    assert 0.75 <= sf.coverage <= 0.85


def test_stock_flow_forecast_breaks_down_into_its_terms() -> None:
    stays, census = simulated_ward(days=30)
    fc = EpisodeStockFlow(stays).forecast(census, 72, "h")
    assert len(fc) == 72
    recomposed = fc["now"] - fc["expected_discharges"] + fc["expected_admissions"]
    assert np.allclose(recomposed, fc["yhat"])
    assert (fc["now"] == census["y"].iloc[-1]).all()
    # Patients leave and arrive over time: both terms grow with the lead.
    assert fc["expected_discharges"].iloc[-1] > fc["expected_discharges"].iloc[0] > 0
    assert fc["expected_admissions"].iloc[-1] > fc["expected_admissions"].iloc[0] >= 0


def test_flow_stock_flow_follows_census_minus_departures_plus_admissions() -> None:
    days = pd.date_range("2020-04-01", periods=30, freq="D")
    # A steady state: 100 in bed, 10 leave a day, 10 arrive a day.
    history = pd.DataFrame({"ds": days, "y": 100.0, "admissions": 10.0, "departures": 10.0})
    fc = FlowStockFlow().forecast(history, 7, "D")
    assert np.allclose(fc["yhat"], 100.0)
    assert np.allclose(fc["expected_admissions"], 10.0 * np.arange(1, 8))
    assert np.allclose(
        fc["now"] - fc["expected_discharges"] + fc["expected_admissions"], fc["yhat"]
    )
    with pytest.raises(ForecastingError, match="admissions and departures"):
        FlowStockFlow().forecast(history[["ds", "y"]], 7, "D")


def write(tmp_path: Path, text: str, name: str = "census.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_census_csv_loads_with_flows(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "date,beds,adm,dis\n2026-01-01,10,2,1\n2026-01-02,11,3,2\n2026-01-03,12,1,0\n",
    )
    frame = load_census_csv(path, "date", "beds", "adm", "dis", "D")
    assert list(frame.columns) == ["ds", "y", "admissions", "departures"]
    assert list(frame["y"]) == [10.0, 11.0, 12.0]
    assert frame["ds"].iloc[2] == pd.Timestamp("2026-01-03")


def test_census_csv_derives_departures_from_spf_cumulative_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "jour;hosp;rad;dc\n2020-04-01;50;10;2\n02/04/2020;52;13;3\n2020-04-03;49;18;3\n",
    )
    frame = load_census_csv(path, "jour", "hosp")
    assert list(frame["departures"].iloc[1:]) == [4.0, 5.0]
    # admissions = Δhosp + departures
    assert list(frame["admissions"].iloc[1:]) == [6.0, 2.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("date,beds\n2026-01-01,10\n", "no column 'adm'"),
        ("date,beds,adm\n2026-01-01,10,1\n2026-01-03,11,1\n2026-01-02,12,1\n", "line 4: date"),
        ("date,beds,adm\n2026-01-01,10,1\n2026-01-01,11,1\n", "line 3: date 2026-01-01"),
        ("date,beds,adm\n2026-01-01,10,1\n2026-01-02,onze,1\n", "line 3: column 'beds' holds"),
        ("date,beds,adm\n2026-01-01,10,1\nhier,11,1\n", "line 3: column 'date' holds 'hier'"),
        (
            "date,beds,adm\n2026-01-01,10,1\n2026-01-04,11,1\n",
            "line 3: date 2026-01-04 leaves a gap",
        ),
    ],
)
def test_bad_census_csv_gets_one_line_naming_the_row(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ForecastingError, match=message) as info:
        load_census_csv(path, "date", "beds", "adm", None, "D")
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('"dep";"sexe";"jour";"rad"\n"21";0;"2020-03-18";1\n', "no column 'hosp'"),
        (
            '"dep";"sexe";"jour";"hosp"\n"21";0;"2020-03-19";5\n"21";0;"2020-03-18";6\n',
            "line 3: date 2020-03-18 of département 21 comes before",
        ),
        (
            '"dep";"sexe";"jour";"hosp"\n"21";0;"2020-03-18";5\n"21";0;"18/03/2020";6\n',
            "line 3: date 2020-03-18 of département 21 repeats",
        ),
        ('"dep";"sexe";"jour";"hosp"\n"21";0;"2020-03-18";cinq\n', "line 2: column 'hosp'"),
    ],
)
def test_bad_spf_file_gets_one_line_naming_the_row(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ForecastingError, match=message):
        load_spf(write(tmp_path, text))


def test_spf_loader_keeps_all_sexes_rows_only(tmp_path: Path) -> None:
    text = (
        '"dep";"sexe";"jour";"hosp";"rea";"rad";"dc"\n'
        '"21";0;"2020-03-18";10;1;2;0\n"21";1;"2020-03-18";6;1;1;0\n"21";0;"19/03/2020";12;1;3;1\n'
    )
    frame = load_spf(write(tmp_path, text))
    assert list(frame["hosp"]) == [10.0, 12.0]
    assert list(frame["ds"]) == [pd.Timestamp("2020-03-18"), pd.Timestamp("2020-03-19")]


def test_fast_and_refresh_passes_choose_their_candidates() -> None:
    from forecasting.job import SeriesInput, candidates

    stays, census = simulated_ward(days=15)
    item = SeriesInput("Location/w", census, "ward", (EpisodeStockFlow(stays),), 30.0)
    full = [m.name for m in candidates(item, "h", 0.8, "full", {})]
    # Prophet is a candidate for daily series only.
    assert full == [
        "stock_flow",
        "auto_ets",
        "auto_arima",
        "auto_theta",
        "naive",
        "seasonal_naive_24",
    ]
    daily = SeriesInput("Location/w", census, "ward", (), 30.0)
    assert "prophet" in [m.name for m in candidates(daily, "D", 0.8, "full", {})]
    fast = [m.name for m in candidates(item, "h", 0.8, "fast", {})]
    assert fast == ["stock_flow", "auto_theta", "naive", "seasonal_naive_24"]
    refresh = [m.name for m in candidates(item, "h", 0.8, "refresh", {"Location/w": "auto_ets"})]
    assert refresh == ["stock_flow", "auto_ets", "naive"]
    # Never fully backtested, or last selected the ensemble: the fast candidates.
    assert [m.name for m in candidates(item, "h", 0.8, "refresh", {})] == fast
    assert [m.name for m in candidates(item, "h", 0.8, "refresh", {"Location/w": "ensemble"})] == (
        fast
    )


def test_known_arrivals_add_their_stay_curve_and_leave_the_hourly_rate() -> None:
    stays, census = simulated_ward(days=30)
    origin = census["ds"].iloc[-1]
    hour = pd.Timedelta(hours=1)
    booked = pd.DataFrame(
        {
            "start": [
                origin + 10.5 * hour,
                origin + 5 * hour,
                origin + 9 * hour,
                origin + 80 * hour,
            ],
            "booked_at": [origin - 48 * hour, origin + hour, origin - hour, origin - hour],
            # Booked after the origin, cancelled, beyond the 72 h horizon: not known at the origin.
            "status": ["booked", "booked", "cancelled", "booked"],
        }
    )
    plain = EpisodeStockFlow(stays)
    known = EpisodeStockFlow(stays, booked=booked)
    assert list(known.known_arrivals(origin, 72)) == [origin + 10.5 * hour]
    before, after = plain.forecast(census, 72, "h"), known.forecast(census, 72, "h")
    lead = np.arange(1, 73, dtype=float)
    expected = np.where(lead > 10.5, plain.curve(origin).at(np.maximum(lead - 10.5, 0.0)), 0.0)
    assert np.allclose(after["expected_admissions"] - before["expected_admissions"], expected)
    assert np.allclose(after["yhat"] - before["yhat"], expected)
    assert (after["expected_discharges"] == before["expected_discharges"]).all()
    # When every past arrival was booked, no unplanned arrival is left to forecast.
    all_booked = pd.DataFrame(
        {
            "start": stays["start"],
            "booked_at": stays["start"] - 7 * 24 * hour,
            "status": "fulfilled",
        }
    )
    fc = EpisodeStockFlow(stays, booked=all_booked).forecast(census, 72, "h")
    assert np.allclose(fc["expected_admissions"], 0.0)
    assert before["expected_admissions"].iloc[-1] > 10


SMALL_TERRITORY = (
    Path(__file__).resolve().parents[1] / "fixtures" / "simulate" / "small_territory.yaml"
)


def simulated_hospital(days: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The inpatient stays, hourly census and admission Appointments (`start`, `booked_at`,
    final `status`) of the small territory's hospital, from the simulator. The stays begun
    during the warm-up come from the initial load, as from a feed's first synchronisation."""
    from datetime import UTC, datetime

    from simulate.model import AppointmentRec, Simulation, StayRec
    from simulate.territory import load_territory

    start = datetime(2026, 1, 5, tzinfo=UTC)
    sim = Simulation(load_territory(SMALL_TERRITORY), seed=seed, start=start, days=days)
    stays: dict[str, StayRec] = {}
    appts: dict[str, AppointmentRec] = {}
    for emission in sim.run():
        rec = emission.record
        if isinstance(rec, StayRec) and rec.cls == "IMP" and rec.establishment == "ch-test":
            stays[rec.id] = rec
        elif isinstance(rec, AppointmentRec) and rec.establishment == "ch-test":
            appts[rec.id] = rec

    def naive(values: list) -> pd.Series:
        return pd.Series([pd.NaT if v is None else pd.Timestamp(v) for v in values]).dt.tz_convert(
            None
        )

    episodes = pd.DataFrame(
        {
            "start": naive([s.start for s in stays.values()]),
            "end": naive([s.end for s in stays.values()]),
        }
    )
    booked = pd.DataFrame(
        {
            "start": naive([a.start for a in appts.values()]),
            "booked_at": naive([a.created for a in appts.values()]),
            "status": [a.status for a in appts.values()],
        }
    )
    hours = pd.date_range(pd.Timestamp(start).tz_convert(None), periods=24 * days, freq="h")
    s = episodes["start"].to_numpy()
    e = episodes["end"].fillna(pd.Timestamp.max).to_numpy()
    census = pd.DataFrame(
        {"ds": hours, "y": [float(((s <= h) & (e > h)).sum()) for h in hours.to_numpy()]}
    )
    return episodes, census, booked


def test_known_demand_makes_the_hospital_forecast_no_worse_at_24_to_72_hours() -> None:
    episodes, census, booked = simulated_hospital(days=56, seed=3)
    assert (booked["status"] == "fulfilled").sum() > 100

    @dataclass(frozen=True)
    class AsBookedAtOrigin:
        """The stock–flow model with the appointments as the stream held them at each origin:
        booked by then; a cancelled or missed one is gone once its start has passed (the
        simulator cancels at the start), still booked before."""

        name: str = "known_demand"

        def forecast(self, history: pd.DataFrame, horizon: int, freq: str) -> pd.DataFrame:
            origin = pd.Timestamp(history["ds"].iloc[-1])
            dropped = booked["status"].isin(["cancelled", "noshow"]) & (booked["start"] <= origin)
            seen = booked[(booked["booked_at"] <= origin) & ~dropped].assign(status="booked")
            return EpisodeStockFlow(episodes, booked=seen).forecast(history, horizon, freq)

    bt = run_backtest(
        census,
        [EpisodeStockFlow(episodes), AsBookedAtOrigin()],
        horizon=72,
        freq="h",
        folds=20,
        ensemble=False,
    )
    without, with_known = bt.of("stock_flow"), bt.of("known_demand")
    assert np.mean(with_known.mae_by_lead[23:72]) < np.mean(without.mae_by_lead[23:72])
    for lead in (24, 48, 72):
        assert with_known.mae_at(lead) <= without.mae_at(lead)
    assert 0.7 <= with_known.coverage <= 0.9
