"""Migrations on both engines, and the shared idempotent upsert."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select

from parcours.db import make_engine, upgrade, upsert
from parcours.db.bulk import bulk_delete, keyed
from parcours.db.ingest_models import IngestOwnerRow
from parcours.db.models import EncounterRow
from parcours.db.pathway_models import CensusHourlyRow
from parcours.db.tables import Base

pytestmark = pytest.mark.integration


def test_migrations_match_the_models_on_postgres(pg_url: str) -> None:
    engine = make_engine(pg_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"


def test_migrations_run_on_sqlite_and_are_rerunnable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    upgrade(url)
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_upsert_is_idempotent_and_updates(db_url: str) -> None:
    engine = make_engine(db_url)
    table = EncounterRow.__table__
    row = {
        "encounter_id": f"up-{engine.dialect.name}-{uuid.uuid4().hex[:8]}",
        "patient_id": "p",
        "class_code": "IMP",
        "status": "in-progress",
        "period_start": datetime(2026, 1, 1, tzinfo=UTC),
        "period_end": None,
        "service_provider": None,
        "source_version": "1",
    }
    with engine.begin() as conn:
        upsert(conn, table, [row], key=["encounter_id"])  # type: ignore[arg-type]
        upsert(conn, table, [row], key=["encounter_id"])  # type: ignore[arg-type]
        upsert(
            conn,
            table,
            [{**row, "status": "finished", "source_version": "2"}],
            key=["encounter_id"],
        )  # type: ignore[arg-type]
    with engine.connect() as conn:
        count = conn.scalar(select(func.count()).where(table.c.encounter_id == row["encounter_id"]))
        status = conn.scalar(
            select(table.c.status).where(table.c.encounter_id == row["encounter_id"])
        )
    assert count == 1
    assert status == "finished"


def test_keyed_lookups_and_deletes_match_exactly(db_url: str) -> None:
    engine = make_engine(db_url)
    owners = IngestOwnerRow.__table__
    census = CensusHourlyRow.__table__
    now = datetime(2026, 3, 1, tzinfo=UTC)
    # The PostgreSQL database is shared with other tests: this one's keys are its own.
    tag = uuid.uuid4().hex[:8]
    claims = [(kind, f"{tag}-{i}") for kind in ("patient", "resource") for i in range(1200)]
    hours = [
        ("ward", f"{tag}-W{w}", now + timedelta(hours=h)) for w in range(3) for h in range(700)
    ]
    counts = dict.fromkeys(("occupancy", "admissions", "discharges"), 1) | dict.fromkeys(
        ("transfers_in", "transfers_out", "ed_arrivals"), 0
    )
    with engine.begin() as conn:
        upsert(
            conn,
            owners,  # type: ignore[arg-type]
            [{"kind": k, "value": v, "integrator": "a", "claimed_at": now} for k, v in claims],
            key=["kind", "value"],
        )
        upsert(
            conn,
            census,  # type: ignore[arg-type]
            [
                {"unit_type": t, "unit_id": u, "hour": h, "hospital_id": tag, **counts}
                for t, u, h in hours
            ],
            key=["unit_type", "unit_id", "hour"],
        )
    # Asked: every third patient claim, one resource claim, and claims nobody made.
    wanted = [
        *claims[:1200:3],
        ("resource", f"{tag}-7"),
        ("patient", f"{tag}-nobody"),
        ("system", f"{tag}-1"),
    ]
    with engine.connect() as conn:
        found = {
            (r[0], r[1])
            for where in keyed(owners, ("kind", "value"), wanted)
            for r in conn.execute(select(owners.c.kind, owners.c.value).where(where))
        }
    assert found == {*claims[:1200:3], ("resource", f"{tag}-7")}
    gone = hours[::2]
    with engine.begin() as conn:
        bulk_delete(conn, census, gone, ("unit_type", "unit_id", "hour"))
    with engine.connect() as conn:
        left = {
            (r[0], r[1], r[2])
            for r in conn.execute(
                select(census.c.unit_type, census.c.unit_id, census.c.hour).where(
                    census.c.hospital_id == tag
                )
            )
        }
    assert left == set(hours[1::2])


def test_keyed_lookups_use_the_primary_key_on_sqlite(tmp_path: Path) -> None:
    # SQLite answers a row-value IN with a scan of the whole table, which grows with the history.
    url = f"sqlite:///{tmp_path / 'p.db'}"
    upgrade(url)
    engine = make_engine(url)
    owners = IngestOwnerRow.__table__
    wanted = [("patient", "a"), ("patient", "b"), ("resource", "Location/x")]
    with engine.connect() as conn:
        for where in keyed(owners, ("kind", "value"), wanted):
            sql = str(
                select(owners.c.integrator)
                .where(where)
                .compile(engine, compile_kwargs={"literal_binds": True})
            )
            plan = " ".join(
                str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")
            )
            assert "SEARCH ingest_owners USING" in plan, plan
            assert "SCAN ingest_owners" not in plan, plan
