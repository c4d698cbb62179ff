"""The stay-based stock–flow model on stays and census read from PostgreSQL, written back with
its terms."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from forecasting.episodes import unit_bookings
from forecasting.job import census_inputs, run
from forecasting.stockflow import EpisodeStockFlow
from parcours.db import make_engine, upsert
from parcours.db.forecast_models import ForecastRow, ForecastSeriesRow, ForecastTermRow
from parcours.db.pathway_models import (
    AppointmentRow,
    CensusHourlyRow,
    LocationOccupancyRow,
    LocationRow,
    StayLocationRow,
)
from tests.unit.test_forecast_models import simulated_ward

pytestmark = pytest.mark.integration


def aware(stamp: pd.Timestamp) -> datetime | None:
    return None if pd.isna(stamp) else stamp.floor("us").tz_localize("UTC").to_pydatetime()


def test_ward_forecast_from_its_stays_with_terms_within_capacity(pg_url: str) -> None:
    engine = make_engine(pg_url)
    p = f"fs{uuid.uuid4().hex[:6]}-"
    org, site, ward = f"Organization/{p}h", f"Location/{p}site", f"Location/{p}ward"
    stays, census = simulated_ward(days=30, seed=5)
    capacity = 80
    with engine.begin() as conn:
        upsert(
            conn,
            LocationRow,
            [
                {
                    "location_id": site,
                    "name": "Site",
                    "physical_type": "si",
                    "part_of": None,
                    "status": "active",
                    "service_code": None,
                    "service_name": None,
                    "organization": org,
                    "source_version": "1",
                },
                {
                    "location_id": ward,
                    "name": "Médecine A",
                    "physical_type": "wa",
                    "part_of": site,
                    "status": "active",
                    "service_code": "med",
                    "service_name": "Médecine",
                    "organization": org,
                    "source_version": "1",
                },
            ],
            key=["location_id"],
        )
        upsert(
            conn,
            StayLocationRow,
            [
                {
                    "stay_id": f"{p}stay-{i}",
                    "seq": 0,
                    "patient_id": f"Patient/{p}{i}",
                    "hospital_id": org,
                    "location_id": ward,
                    "ward_ref": ward,
                    "ward_id": ward,
                    "bed_id": None,
                    "start_at": aware(r.start),
                    "end_at": aware(r.end),
                    "discharged": not pd.isna(r.end),
                }
                for i, r in enumerate(stays.itertuples())
            ],
            key=["stay_id", "seq"],
        )
        upsert(
            conn,
            CensusHourlyRow,
            [
                {
                    "unit_type": "ward",
                    "unit_id": ward,
                    "hour": aware(r.ds),
                    "hospital_id": org,
                    "occupancy": int(r.y),
                    "admissions": 0,
                    "discharges": 0,
                    "transfers_in": 0,
                    "transfers_out": 0,
                    "ed_arrivals": 0,
                }
                for r in census.itertuples()
            ],
            key=["unit_type", "unit_id", "hour"],
        )
        upsert(
            conn,
            LocationOccupancyRow,
            [
                {
                    "unit_type": "ward",
                    "unit_id": ward,
                    "hospital_id": org,
                    "name": "Médecine A",
                    "occupied": int(census["y"].iloc[-1]),
                    "capacity": capacity,
                    "as_of": aware(census["ds"].iloc[-1]),
                }
            ],
            key=["unit_type", "unit_id"],
        )
        # Known demand: one appointment in the ward (its Location), one in the hospital's
        # service (the referral's performer and the serviceType code).
        soon = census["ds"].iloc[-1] + pd.Timedelta(hours=5)
        booked_at = aware(census["ds"].iloc[-1] - pd.Timedelta(days=3))
        upsert(
            conn,
            AppointmentRow,
            [
                {
                    "appointment_id": f"{p}rdv-ward",
                    "patient_id": f"Patient/{p}x",
                    "status": "booked",
                    "start_at": aware(soon),
                    "booked_at": booked_at,
                    "based_on": None,
                    "hospital_id": None,
                    "service_code": None,
                    "location_id": ward,
                },
                {
                    "appointment_id": f"{p}rdv-service",
                    "patient_id": f"Patient/{p}y",
                    "status": "booked",
                    "start_at": aware(soon),
                    "booked_at": booked_at,
                    "based_on": f"{p}sr",
                    "hospital_id": org,
                    "service_code": "med",
                    "location_id": None,
                },
            ],
            key=["appointment_id"],
        )

    bookings = unit_bookings(engine, aware(census["ds"].iloc[0]) or datetime.now(UTC))
    per_unit = {(u.unit_type, u.unit_id): len(f) for u, f in bookings.items()}
    assert per_unit[("hospital", org)] == 2
    assert per_unit[("service", f"{org}/med")] == 2
    assert per_unit[("ward", ward)] == 1
    inputs = {i.unit_id: i for i in census_inputs(engine, "ward", 3 * 24)}
    item = inputs[ward]
    assert item.capacity == capacity
    [model] = item.stock_flow
    assert isinstance(model, EpisodeStockFlow)
    assert len(model.episodes) == len(stays)
    assert model.booked is not None
    assert list(model.known_arrivals(census["ds"].iloc[-1], 24)) == [soon]
    assert model.episodes["end"].isna().sum() == stays["end"].isna().sum()

    [result] = run(
        engine,
        [item],
        metric="occupancy",
        horizon=24,
        freq="h",
        now=datetime.now(UTC),
        folds=6,
        mode="fast",
        progress=False,
    )
    assert result.error is None
    acc = {a.model: a for a in result.accuracy}
    assert acc["stock_flow"].mase < acc["seasonal_naive_24"].mase
    with engine.connect() as conn:
        series = conn.execute(
            select(ForecastSeriesRow.__table__).where(ForecastSeriesRow.unit_id == ward)
        ).one()
        terms = conn.execute(
            select(ForecastTermRow.__table__)
            .where(ForecastTermRow.unit_id == ward, ForecastTermRow.model == "stock_flow")
            .order_by(ForecastTermRow.ds)
        ).all()
        upper = (
            conn.execute(select(ForecastRow.yhat_upper).where(ForecastRow.unit_id == ward))
            .scalars()
            .all()
        )
    assert series.selected_model == result.selected
    assert series.capacity == capacity
    assert len(terms) == 24
    assert all(t.now == census["y"].iloc[-1] for t in terms)
    assert np.all(np.diff([t.expected_discharges for t in terms]) >= 0)
    assert upper and max(upper) <= capacity
