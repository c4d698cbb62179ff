"""Instants are exact on PostgreSQL and on SQLite: offsets kept as instants, read back aware UTC,
durations across a Europe/Paris daylight-saving change in real hours."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from parcours.db import make_engine, upgrade
from parcours.db.pathway_models import EdVisitRow, StayLocationRow
from parcours.timeutil import format_local, parse_fhir

pytestmark = pytest.mark.integration


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, pg_url: str, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgresql":
        yield pg_url
        return
    url = f"sqlite:///{tmp_path / 'instants.db'}"
    upgrade(url)
    yield url


def test_offsets_are_stored_as_instants_and_read_back_aware(db_url: str) -> None:
    engine = make_engine(db_url)
    t = EdVisitRow.__table__
    sent = {
        "ed-inst-1": "2026-01-12T09:06:00+01:00",
        "ed-inst-2": "2026-01-12T13:36:00+05:30",
        "ed-inst-3": "2026-01-12T03:06:00-05:00",
        "ed-inst-4": "2026-01-12T08:06:00Z",
    }
    try:
        with engine.begin() as conn:
            conn.execute(t.delete().where(t.c.encounter_id.like("ed-inst-%")))
            conn.execute(
                t.insert(),
                [
                    {
                        "encounter_id": eid,
                        "patient_id": "p-inst",
                        "arrived_at": parse_fhir(at),
                        "admitted": False,
                    }
                    for eid, at in sent.items()
                ],
            )
        with engine.connect() as conn:
            back = dict(
                conn.execute(
                    select(t.c.encounter_id, t.c.arrived_at).where(
                        t.c.encounter_id.like("ed-inst-%")
                    )
                ).all()
            )
            # All four are the same instant: 08:06 UTC, read back aware.
            assert set(back.values()) == {datetime(2026, 1, 12, 8, 6, tzinfo=UTC)}
            assert all(v.tzinfo is not None for v in back.values())
            # A comparison in SQL uses the instant, not the wall clock it was sent with.
            later = conn.execute(
                select(t.c.encounter_id).where(
                    t.c.encounter_id.like("ed-inst-%"),
                    t.c.arrived_at >= parse_fhir("2026-01-12T09:05:00+01:00"),
                )
            ).all()
            assert len(later) == 4
        assert format_local(back["ed-inst-1"], "Europe/Paris") == "12/01/2026 09:06"
    finally:
        engine.dispose()


def test_a_ward_period_across_the_dst_change_lasts_its_real_hours(db_url: str) -> None:
    engine = make_engine(db_url)
    t = StayLocationRow.__table__
    # Europe/Paris goes from 02:00 to 03:00 on 29 March 2026: 01:30 → 04:30 local is 2 hours.
    start = parse_fhir("2026-03-29T01:30:00+01:00")
    end = parse_fhir("2026-03-29T04:30:00+02:00")
    try:
        with engine.begin() as conn:
            conn.execute(t.delete().where(t.c.stay_id == "stay-dst"))
            conn.execute(
                t.insert(),
                [
                    {
                        "stay_id": "stay-dst",
                        "seq": 0,
                        "patient_id": "p-dst",
                        "hospital_id": "h",
                        "start_at": start,
                        "end_at": end,
                        "discharged": True,
                    }
                ],
            )
        with engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.stay_id == "stay-dst")).one()
        assert row.end_at - row.start_at == timedelta(hours=2)
        assert format_local(row.start_at, "Europe/Paris") == "29/03/2026 01:30"
        assert format_local(row.end_at, "Europe/Paris") == "29/03/2026 04:30"
    finally:
        engine.dispose()
