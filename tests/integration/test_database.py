"""Migrations on both engines, and the shared idempotent upsert."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select

from parcours.db import make_engine, upgrade, upsert
from parcours.db.models import EncounterRow
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


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_upsert_is_idempotent_and_updates(backend: str, pg_url: str, tmp_path: Path) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'u.db'}"
        upgrade(url)
    else:
        url = pg_url
    engine = make_engine(url)
    table = EncounterRow.__table__
    row = {
        "encounter_id": f"up-{backend}",
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
