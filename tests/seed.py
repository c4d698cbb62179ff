"""A small, synthetic hospital state written straight to SQL, for dashboard tests.

Ids carry a per-call prefix so several tests can share the session database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from dashboard.forecast_text import MODEL_LABELS
from parcours.db import upsert
from parcours.db.forecast_models import (
    ForecastAccuracyRow,
    ForecastRow,
    ForecastSeriesRow,
    ForecastTermRow,
)
from parcours.db.ingest_models import IngestRejectionRow, IntegratorRow
from parcours.db.pathway_models import (
    AlertRow,
    CensusHourlyRow,
    EdVisitRow,
    LocationOccupancyRow,
    PathwayStateRow,
    StayLocationRow,
    StayRow,
    StreamProgressRow,
)

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Seeded:
    """The ids a test looks for."""

    prefix: str
    hospital: str
    ward_full: str
    ward_quiet: str
    patient: str
    alert: str
    integrator: str
    raw_topic: str


def seed(engine: Engine, prefix: str) -> Seeded:
    """Write two wards (one full), a patient with an ED visit and a stay, an open alert,
    a forecast with its backtest, an integrator with one rejection, and the stream progress of
    two raw partitions: one up to date, one whose worker went silent an hour ago."""
    s = Seeded(
        prefix=prefix,
        hospital=f"Organization/{prefix}chu",
        ward_full=f"Location/{prefix}cardio",
        ward_quiet=f"Location/{prefix}ortho",
        patient=f"{prefix}pat-1",
        alert=f"no_follow_up:{prefix}pat-1:{prefix}stay-1",
        integrator=f"{prefix}gp-software",
        raw_topic=f"{prefix}fhir.raw",
    )
    with engine.begin() as conn:
        upsert(
            conn,
            LocationOccupancyRow,
            [
                {
                    "unit_type": "ward",
                    "unit_id": s.ward_full,
                    "hospital_id": s.hospital,
                    "name": f"{prefix}Cardiologie",
                    "occupied": 24,
                    "capacity": 24,
                    "as_of": T0,
                },
                {
                    "unit_type": "ward",
                    "unit_id": s.ward_quiet,
                    "hospital_id": s.hospital,
                    "name": f"{prefix}Orthopédie",
                    "occupied": 5,
                    "capacity": 20,
                    "as_of": T0,
                },
            ],
            key=["unit_type", "unit_id"],
        )
        upsert(
            conn,
            CensusHourlyRow,
            [
                {
                    "unit_type": "ward",
                    "unit_id": s.ward_full,
                    "hour": T0 - timedelta(hours=h),
                    "hospital_id": s.hospital,
                    "occupancy": 20 + h % 5,
                    "admissions": 1,
                    "discharges": 1,
                    "transfers_in": 0,
                    "transfers_out": 0,
                    "ed_arrivals": 0,
                }
                for h in range(48)
            ],
            key=["unit_type", "unit_id", "hour"],
        )
        upsert(
            conn,
            PathwayStateRow,
            [{"patient_id": s.patient, "state": {"stage": "discharged"}, "last_event_at": T0}],
            key=["patient_id"],
        )
        upsert(
            conn,
            EdVisitRow,
            [
                {
                    "encounter_id": f"{prefix}ed-1",
                    "patient_id": s.patient,
                    "hospital_id": s.hospital,
                    "ward_id": None,
                    "arrived_at": T0 - timedelta(days=5),
                    "departed_at": T0 - timedelta(days=5) + timedelta(hours=3),
                    "admitted": True,
                    "disposition": None,
                }
            ],
            key=["encounter_id"],
        )
        upsert(
            conn,
            StayRow,
            [
                {
                    "stay_id": f"{prefix}stay-1",
                    "patient_id": s.patient,
                    "hospital_id": s.hospital,
                    "admitted_at": T0 - timedelta(days=5) + timedelta(hours=3),
                    "discharged_at": T0 - timedelta(days=1),
                    "disposition": "home",
                    "admit_source": "emd",
                    "from_ed_encounter": f"{prefix}ed-1",
                    "los_hours": 93.0,
                }
            ],
            key=["stay_id"],
        )
        upsert(
            conn,
            StayLocationRow,
            [
                {
                    "stay_id": f"{prefix}stay-1",
                    "seq": 0,
                    "patient_id": s.patient,
                    "hospital_id": s.hospital,
                    "location_id": s.ward_full,
                    "ward_id": s.ward_full,
                    "bed_id": None,
                    "start_at": T0 - timedelta(days=5) + timedelta(hours=3),
                    "end_at": T0 - timedelta(days=1),
                    "discharged": True,
                }
            ],
            key=["stay_id", "seq"],
        )
        upsert(
            conn,
            AlertRow,
            [
                {
                    "alert_id": s.alert,
                    "alert_type": "no_follow_up",
                    "patient_id": s.patient,
                    "unit_id": None,
                    "status": "open",
                    "raised_at": T0,
                    "resolved_at": None,
                    "message": f"{prefix}pat-1: no community follow-up 7 days after discharge",
                    "details": {},
                    "acknowledged_by": None,
                    "acknowledged_at": None,
                }
            ],
            key=["alert_id"],
        )
        upsert(
            conn,
            ForecastRow,
            [
                {
                    "unit_id": s.ward_full,
                    "metric": "occupancy",
                    "model": model,
                    "ds": T0 + timedelta(hours=h),
                    "yhat": 22.0 + shift,
                    "yhat_lower": 19.0 + shift,
                    "yhat_upper": 25.0 + shift,
                    "interval_width": 0.8,
                    "run_at": T0,
                    "history_end": T0,
                }
                for h in range(1, 25)
                for model, shift in (("prophet", 0.0), ("naive", 1.0))
            ],
            key=["unit_id", "metric", "model", "ds"],
        )
        upsert(
            conn,
            ForecastAccuracyRow,
            [
                {
                    "unit_id": s.ward_full,
                    "metric": "occupancy",
                    "model": "prophet",
                    "horizon": 24,
                    "folds": 3,
                    "mae": 1.2,
                    "rmse": 1.5,
                    "mape": 0.05,
                    "coverage": 0.81,
                    "mase": 0.6,
                    "mae_by_lead": [1.0] * 23 + [3.1],
                    "computed_at": T0,
                },
                {
                    "unit_id": s.ward_full,
                    "metric": "occupancy",
                    "model": "naive",
                    "horizon": 24,
                    "folds": 3,
                    "mae": 2.4,
                    "rmse": 3.0,
                    "mape": 0.1,
                    "coverage": 0.9,
                    "mase": 1.2,
                    "mae_by_lead": [2.0] * 23 + [4.7],
                    "computed_at": T0,
                },
            ],
            key=["unit_id", "metric", "model", "horizon"],
        )
        upsert(
            conn,
            ForecastSeriesRow,
            [
                {
                    "unit_id": s.ward_full,
                    "metric": "occupancy",
                    "unit_type": "ward",
                    "freq": "h",
                    "horizon": 24,
                    "selected_model": "prophet",
                    "capacity": 30.0,
                    "history_points": 24 * 30,
                    "history_end": T0,
                    "folds": 3,
                    "window_start": T0 - timedelta(days=56),
                    "window_end": T0,
                    "target_coverage": 0.8,
                    "computed_at": T0,
                }
            ],
            key=["unit_id", "metric"],
        )
        upsert(
            conn,
            ForecastTermRow,
            [
                {
                    "unit_id": s.ward_full,
                    "metric": "occupancy",
                    "model": "prophet",
                    "ds": T0 + timedelta(hours=h),
                    "now": 21.0,
                    "expected_discharges": 3.0 + h / 12,
                    "expected_admissions": 4.0 + h / 12,
                    "run_at": T0,
                }
                for h in range(1, 25)
            ],
            key=["unit_id", "metric", "model", "ds"],
        )
        upsert(
            conn,
            IntegratorRow,
            [
                {
                    "name": s.integrator,
                    "token_hash": f"{prefix}hash".ljust(64, "0"),
                    "active": True,
                    "created_at": T0,
                    "last_seen_at": datetime.now(UTC),
                    "accepted_total": 120,
                    "duplicate_total": 3,
                    "rejected_total": 1,
                }
            ],
            key=["name"],
        )
        conn.execute(
            IngestRejectionRow.__table__.insert().values(
                source=s.integrator,
                received_at=datetime.now(UTC),
                http_status=422,
                reason="invalid",
                resource_type="Encounter",
                resource_id=f"{prefix}bad",
                expression="Encounter.status",
                diagnostics="value is not a valid status",
                operation_outcome={"resourceType": "OperationOutcome"},
            )
        )
        now = datetime.now(UTC)
        upsert(
            conn,
            StreamProgressRow,
            [
                {
                    "topic": s.raw_topic,
                    "partition": partition,
                    "worker": f"{prefix}host:{100 + partition}",
                    "processed_offset": 499,
                    "highwater": 500 + 20 * partition,
                    "lag": 20 * partition,
                    "reported_at": at,
                }
                for partition, at in ((0, now), (1, now - timedelta(hours=1)))
            ],
            key=["topic", "partition"],
        )
    return s


@dataclass(frozen=True)
class Outlook:
    """A hospital with a forecast made this hour: what its outlook on the bed board shows."""

    hospital: str
    name: str
    origin: datetime


def seed_outlook(engine: Engine, s: Seeded, now: datetime) -> Outlook:
    """Give the seeded hospital a live occupancy (29 of 44 beds), a week of hourly census, and a
    72 h stock–flow forecast from the current hour: 29 present, a third of a departure and a
    quarter of an admission per hour (at 24 h: −8, +6 → 27 beds, between 24 and 30)."""
    origin = now.replace(minute=0, second=0, microsecond=0)
    # Named as hospitals are, at length: a chart that cuts names short shows it.
    name = f"{s.prefix}CHU Dijon Bourgogne, hôpital François Mitterrand"
    out = Outlook(hospital=s.hospital, name=name, origin=origin)
    with engine.begin() as conn:
        upsert(
            conn,
            LocationOccupancyRow,
            [
                {
                    "unit_type": "hospital",
                    "unit_id": s.hospital,
                    "hospital_id": s.hospital,
                    "name": out.name,
                    "occupied": 29,
                    "capacity": 44,
                    "as_of": origin,
                }
            ],
            key=["unit_type", "unit_id"],
        )
        upsert(
            conn,
            CensusHourlyRow,
            [
                {
                    "unit_type": "hospital",
                    "unit_id": s.hospital,
                    "hour": origin - timedelta(hours=h),
                    "hospital_id": s.hospital,
                    "occupancy": 26 + h % 6 if h else 29,
                    "admissions": 1,
                    "discharges": 1,
                    "transfers_in": 0,
                    "transfers_out": 0,
                    "ed_arrivals": 0,
                }
                for h in range(24 * 7)
            ],
            key=["unit_type", "unit_id", "hour"],
        )
        upsert(
            conn,
            ForecastSeriesRow,
            [
                {
                    "unit_id": s.hospital,
                    "metric": "occupancy",
                    "unit_type": "hospital",
                    "freq": "h",
                    "horizon": 72,
                    "selected_model": "stock_flow",
                    "capacity": 44.0,
                    "history_points": 24 * 30,
                    "history_end": origin,
                    "folds": 4,
                    "window_start": origin - timedelta(days=12),
                    "window_end": origin,
                    "target_coverage": 0.8,
                    "computed_at": origin,
                }
            ],
            key=["unit_id", "metric"],
        )
        upsert(
            conn,
            ForecastRow,
            [
                {
                    "unit_id": s.hospital,
                    "metric": "occupancy",
                    "model": "stock_flow",
                    "ds": origin + timedelta(hours=h),
                    "yhat": 29 - h / 3 + h / 4,
                    "yhat_lower": 29 - h / 3 + h / 4 - 1 - h / 12,
                    "yhat_upper": 29 - h / 3 + h / 4 + 1 + h / 12,
                    "interval_width": 0.8,
                    "run_at": origin,
                    "history_end": origin,
                }
                for h in range(1, 73)
            ],
            key=["unit_id", "metric", "model", "ds"],
        )
        upsert(
            conn,
            ForecastTermRow,
            [
                {
                    "unit_id": s.hospital,
                    "metric": "occupancy",
                    "model": "stock_flow",
                    "ds": origin + timedelta(hours=h),
                    "now": 29.0,
                    "expected_discharges": h / 3,
                    "expected_admissions": h / 4,
                    "run_at": origin,
                }
                for h in range(1, 73)
            ],
            key=["unit_id", "metric", "model", "ds"],
        )
    return out


def seed_daily(engine: Engine, s: Seeded) -> datetime:
    """Give the full ward a 14-day daily forecast (`occupancy_daily`) made at the midnight (UTC)
    before T0, selected `ensemble`, beside `naive` and `stock_flow` (whose terms are stored: 23
    present, −2 and +1 a day). Backtest over 8 weeks: the ensemble was off by 1.5 beds at 1 day
    and 2.8 at 7 days, the naive forecast by 2.0 and 4.4. Returns that midnight."""
    end = T0.replace(hour=0)
    days = range(1, 15)
    with engine.begin() as conn:
        upsert(
            conn,
            ForecastSeriesRow,
            [
                {
                    "unit_id": s.ward_full,
                    "metric": "occupancy_daily",
                    "unit_type": "ward",
                    "freq": "D",
                    "horizon": 14,
                    "selected_model": "ensemble",
                    "capacity": 30.0,
                    "history_points": 30,
                    "history_end": end,
                    "folds": 4,
                    "window_start": end - timedelta(days=56),
                    "window_end": end,
                    "target_coverage": 0.8,
                    "computed_at": T0,
                }
            ],
            key=["unit_id", "metric"],
        )
        shapes = {
            "ensemble": lambda d: 22 - 2 * d / 7,
            "naive": lambda d: 23.0,
            "stock_flow": lambda d: 23.0 - d,
        }
        upsert(
            conn,
            ForecastRow,
            [
                {
                    "unit_id": s.ward_full,
                    "metric": "occupancy_daily",
                    "model": model,
                    "ds": end + timedelta(days=d),
                    "yhat": shape(d),
                    "yhat_lower": shape(d) - 2 - d / 7,
                    "yhat_upper": shape(d) + 2 + d / 7,
                    "interval_width": 0.8,
                    "run_at": T0,
                    "history_end": end,
                }
                for d in days
                for model, shape in shapes.items()
            ],
            key=["unit_id", "metric", "model", "ds"],
        )
        upsert(
            conn,
            ForecastTermRow,
            [
                {
                    "unit_id": s.ward_full,
                    "metric": "occupancy_daily",
                    "model": "stock_flow",
                    "ds": end + timedelta(days=d),
                    "now": 23.0,
                    "expected_discharges": 2.0 * d,
                    "expected_admissions": 1.0 * d,
                    "run_at": T0,
                }
                for d in days
            ],
            key=["unit_id", "metric", "model", "ds"],
        )
        daily_scores(
            conn,
            s,
            [
                {
                    "model": model,
                    "mae": mae,
                    "rmse": mae * 1.3,
                    "mape": 0.08,
                    "coverage": coverage,
                    "mase": mase,
                    "mae_by_lead": [at1] + [mae] * 5 + [at7] + [mae] * 7,
                }
                for model, mae, at1, at7, coverage, mase in (
                    ("ensemble", 2.5, 1.5, 2.8, 0.79, 0.7),
                    ("naive", 3.5, 2.0, 4.4, 0.85, 1.0),
                    ("stock_flow", 2.7, 1.6, 3.0, 0.8, 0.75),
                )
            ],
        )
    return end


def daily_scores(conn: Connection, s: Seeded, scores: Iterable[dict[str, Any]]) -> None:
    """Store backtest scores of the full ward's daily series: each row names its model and its
    scores, and may give another horizon (14 days) or computation time (T0)."""
    upsert(
        conn,
        ForecastAccuracyRow,
        [
            {
                "unit_id": s.ward_full,
                "metric": "occupancy_daily",
                "horizon": 14,
                "folds": 4,
                "computed_at": T0,
                **row,
            }
            for row in scores
        ],
        key=["unit_id", "metric", "model", "horizon"],
    )


def seed_every_model_scored(engine: Engine, s: Seeded) -> list[str]:
    """Add to the full ward's daily backtest (`seed_daily`) the scores of every other model the
    dashboard names, each behind the ensemble: more rows than a table shows before it scrolls
    (ten). Returns every model of that backtest."""
    models = list(MODEL_LABELS)
    added = [m for m in models if m not in {"ensemble", "naive", "stock_flow"}]
    with engine.begin() as conn:
        daily_scores(
            conn,
            s,
            [
                {
                    "model": model,
                    "mae": 3.0 + i / 10,
                    "rmse": 3.9 + i / 10,
                    "mape": 0.1,
                    "coverage": 0.8,
                    "mase": 0.8 + i / 100,
                    "mae_by_lead": [3.0 + i / 10] * 14,
                }
                for i, model in enumerate(added)
            ],
        )
    return models
