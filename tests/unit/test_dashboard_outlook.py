"""The bed board outlook's arithmetic: departures expected by midnight from cumulative terms,
local midnight, the breakdown's lead times. Pure: frames built here, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from dashboard import outlook, queries

ORIGIN = datetime(2026, 12, 6, 14, 0, tzinfo=UTC)


def forecast(hours: int = 72, freq: str = "h", terms: bool = True) -> queries.UnitForecast:
    ds = [ORIGIN + timedelta(hours=h) for h in range(1, hours + 1)]
    steps = range(1, hours + 1)
    return queries.UnitForecast(
        unit_id="Organization/chu",
        unit_type="hospital",
        model="stock_flow",
        terms_model="stock_flow" if terms else None,
        freq=freq,
        horizon=hours,
        coverage=0.8,
        capacity=44.0,
        history_end=ORIGIN,
        run_at=ORIGIN,
        points=pd.DataFrame(
            {
                "ds": ds,
                "yhat": [29 - h / 3 + h / 4 for h in steps],
                "yhat_lower": [28 - h / 3 for h in steps],
                "yhat_upper": [30 + h / 4 for h in steps],
            }
        ),
        terms=pd.DataFrame(
            {
                "ds": ds,
                "now": [29.0] * hours,
                "expected_discharges": [h / 3 for h in steps],
                "expected_admissions": [h / 4 for h in steps],
            }
        )
        if terms
        else pd.DataFrame(columns=["ds", "now", "expected_discharges", "expected_admissions"]),
    )


def test_departures_between_two_instants_are_the_difference_of_the_cumulative_terms() -> None:
    terms = forecast().terms
    # From the origin (nothing gone yet) to 6 hours later: 2 departures.
    assert queries.departures_between(terms, ORIGIN, ORIGIN + timedelta(hours=6)) == 2.0
    # From 3 h to 9 h: 3 − 1.
    gone = queries.departures_between(
        terms, ORIGIN + timedelta(hours=3), ORIGIN + timedelta(hours=9, minutes=30)
    )
    assert gone == 2.0
    # A forecast that ended before `start` says nothing about it.
    assert (
        queries.departures_between(terms, ORIGIN + timedelta(days=4), ORIGIN + timedelta(days=5))
        is None
    )
    assert queries.departures_between(terms.iloc[0:0], ORIGIN, ORIGIN + timedelta(hours=1)) is None


def test_midnight_is_the_territory_s_not_utc() -> None:
    # 23:30 UTC on 6 December is 00:30 on the 7th in Paris: the day ends on the 8th, 23:00 UTC.
    late = datetime(2026, 12, 6, 23, 30, tzinfo=UTC)
    assert outlook.end_of_day(late, "Europe/Paris").astimezone(UTC) == datetime(
        2026, 12, 7, 23, 0, tzinfo=UTC
    )
    assert outlook.end_of_day(ORIGIN, "Europe/Paris").astimezone(UTC) == datetime(
        2026, 12, 6, 23, 0, tzinfo=UTC
    )


def test_breakdown_at_one_two_and_three_days() -> None:
    rows = outlook.breakdown(forecast())
    assert [r.lead for r in rows] == [24, 48, 72]
    first = rows[0]
    assert (first.now, first.departures, first.admissions) == (29.0, 8.0, 6.0)
    assert first.stock_flow == first.yhat == 27.0
    # A 24-hour forecast shows its one day; a daily one counts days.
    assert [r.lead for r in outlook.breakdown(forecast(hours=24))] == [24]
    assert [r.lead for r in outlook.breakdown(forecast(hours=7, freq="D"))] == [1, 2, 3]
    # A model without terms still shows its forecast and interval.
    bare = outlook.breakdown(forecast(terms=False))[0]
    assert bare.now is None and bare.stock_flow is None and bare.yhat == 27.0


def test_signed_differences_use_the_minus_streamlit_reads() -> None:
    assert outlook.signed(2.6) == "+3"
    assert outlook.signed(-2.4) == "-2"
    assert outlook.signed(0.2) == "0"
