"""The worker's batch body (rules + SQL sink) on both databases, without the broker.

Whatever the batch boundaries, duplicates and the order in which Locations arrive, the tables
end the same: this is what makes replays and restarts converge.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from parcours.db import upgrade
from parcours.db.bulk import bulk_write
from parcours.settings import Settings
from streams.runtime.batch import BatchProcessor, RawMessage, rules_from_settings
from streams.sink.rows import ALERT_COLUMNS
from streams.sink.writer import SqlSink
from tests.integration.streams_helpers import count, raw_key, rows, snapshot, territory_feed
from tests.support import fresh_database

pytestmark = pytest.mark.integration


def messages(resources: list[dict[str, Any]]) -> list[RawMessage]:
    return [RawMessage(raw_key(r).encode(), json.dumps(r).encode()) for r in resources]


def run(db_url: str, msgs: list[RawMessage], batch: int) -> None:
    from parcours.db import make_engine

    processor = BatchProcessor(SqlSink(make_engine(db_url)), rules_from_settings(Settings()))
    table: dict[str, Any] = {}
    for i in range(0, len(msgs), batch):
        outcome = processor.process(msgs[i : i + batch], table.get)
        assert outcome.rejects == []
        for pid, (_, value) in outcome.states.items():
            table[pid] = value


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_batches_duplicates_and_late_locations_converge(
    backend: str, pg_url: str, tmp_path: Path, topic_prefix: str
) -> None:
    simulated = territory_feed(topic_prefix, days=2, seed=3)
    resources, expected = simulated.resources, simulated.expected
    msgs = messages(resources)
    locations = [m for m in msgs if m.key and m.key.startswith(b"Location/")]
    others = [m for m in msgs if m not in locations]
    # Beds before their wards, wards before their sites: the tree arrives upside down.
    late = others[: len(others) // 2] + locations[::-1] + others[len(others) // 2 :]

    def database(name: str) -> Any:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / name}.db"
            upgrade(url)
            from contextlib import nullcontext

            return nullcontext(url)
        return fresh_database(pg_url)

    with database("a") as a, database("b") as b, database("c") as c:
        run(a, msgs, 200)
        # Other batch boundaries, Locations after half of the encounters, then everything again.
        run(b, late, 37)
        # The late tree alone already puts the periods filed before it in their wards and beds.
        placed = "SELECT stay_id, seq, ward_id, bed_id FROM stay_locations ORDER BY 1, 2"
        assert rows(b, placed) == rows(a, placed)
        run(b, msgs, 91)
        # One batch: every census hour computed at once, the reference for the hours that the
        # batches above recomputed piecemeal (each only where its rows changed).
        run(c, msgs, len(msgs))
        assert count(a, "SELECT count(*) FROM stays") == expected["stays"]
        assert count(a, "SELECT count(*) FROM ed_visits") == expected["ed_visits"]
        assert count(a, "SELECT count(*) FROM census_hourly WHERE unit_type = 'ward'") > 0
        assert count(a, "SELECT count(*) FROM alerts WHERE alert_type = 'ward_over_capacity'") > 0
        first, second = snapshot(a, topic_prefix), snapshot(b, topic_prefix)
        whole = snapshot(c, topic_prefix)
    for table in first:
        assert second[table] == first[table], table
        assert whole[table] == first[table], table


def test_a_backlogs_census_waits_in_sql_and_a_later_write_or_restart_catches_up(
    pg_url: str, topic_prefix: str
) -> None:
    """Backlog batches leave their census hours in `census_pending` (surviving a restart); the
    next write that is not a backlog's, or `flush_census` after a restart, makes the census what
    a run that recomputed it at every batch made."""
    from parcours.db import make_engine

    msgs = messages(territory_feed(topic_prefix, days=2, seed=5).resources)
    half = len(msgs) // 2

    def backlog(processor: BatchProcessor, part: list[RawMessage], table: dict[str, Any]) -> None:
        for i in range(0, len(part), 150):
            outcome = processor.fold(part[i : i + 150], table.get)
            outcome.sink_batch.backlog = True
            processor.write(outcome)
            table.update({pid: value for pid, (_, value) in outcome.states.items()})

    census = "SELECT unit_type, unit_id, hour, occupancy, admissions, discharges FROM census_hourly"
    pending = "SELECT count(*) FROM census_pending"
    with fresh_database(pg_url) as a, fresh_database(pg_url) as b, fresh_database(pg_url) as c:
        run(a, msgs, 150)
        reference = sorted(rows(a, census))
        assert count(a, pending) == 0

        rules = rules_from_settings(Settings())
        # b: a backlog, then a live batch.
        sink = SqlSink(make_engine(b), census_every_s=3600)
        table: dict[str, Any] = {}
        backlog(BatchProcessor(sink, rules), msgs[:-20], table)
        assert count(b, pending) > 0
        assert sorted(rows(b, census)) != reference
        BatchProcessor(sink, rules).process(msgs[-20:], table.get)
        assert count(b, pending) == 0
        assert sorted(rows(b, census)) == reference

        # c: a backlog, a stop (a new sink, as after a restart), the rest as a backlog, then
        # the idle worker's flush.
        table = {}
        backlog(
            BatchProcessor(SqlSink(make_engine(c), census_every_s=3600), rules), msgs[:half], table
        )
        assert count(c, pending) > 0
        restarted = SqlSink(make_engine(c), census_every_s=3600)
        backlog(BatchProcessor(restarted, rules), msgs[half:], table)
        assert sorted(rows(c, census)) != reference
        restarted.flush_census()
        assert count(c, pending) == 0
        assert sorted(rows(c, census)) == reference
        assert snapshot(c, topic_prefix) == snapshot(a, topic_prefix)


def test_the_sink_writes_changes_without_reading_back_only_where_sql_holds_the_previous_state(
    pg_url: str, topic_prefix: str
) -> None:
    """A patient whose stored digest is that of its previous state's records has its changes
    written as they are: its rows are not read back. After a crash between a batch's SQL commit
    and its states (the batch is folded again on the older states), or with a database that lost
    its rows, the sink compares whole rows; every way ends with the tables of a clean run."""
    from sqlalchemy import text

    from parcours.db import make_engine
    from streams.sink.patients import plan_write

    msgs = messages(territory_feed(topic_prefix, days=2, seed=7).resources)
    rules = rules_from_settings(Settings())
    size = 150
    with fresh_database(pg_url) as a, fresh_database(pg_url) as b, fresh_database(pg_url) as c:
        run(a, msgs, size)

        # b: every other batch is written, its states lost, and it is folded and written again.
        processor = BatchProcessor(SqlSink(make_engine(b)), rules)
        table: dict[str, Any] = {}
        for n, i in enumerate(range(0, len(msgs), size)):
            if n % 2:
                processor.process(msgs[i : i + size], table.get)
            outcome = processor.process(msgs[i : i + size], table.get)
            table.update({pid: value for pid, (_, value) in outcome.states.items()})

        # c: no batch says what changed; every patient's rows are compared whole.
        processor = BatchProcessor(SqlSink(make_engine(c)), rules)
        table = {}
        for i in range(0, len(msgs), size):
            outcome = processor.fold(msgs[i : i + size], table.get)
            for p in outcome.sink_batch.patients:
                p.changes = None
            processor.write(outcome)
            table.update({pid: value for pid, (_, value) in outcome.states.items()})
        assert snapshot(b, topic_prefix) == snapshot(a, topic_prefix)
        assert snapshot(c, topic_prefix) == snapshot(a, topic_prefix)

    with fresh_database(pg_url) as d:
        engine = make_engine(d)
        processor = BatchProcessor(SqlSink(engine), rules)
        table = {}
        outcome = processor.process(msgs[:600], table.get)
        table.update({pid: value for pid, (_, value) in outcome.states.items()})
        later = processor.fold(msgs[600:1200], table.get).sink_batch.patients
        again = [p.patient_id for p in later if p.patient_id in table]
        assert again, "patients of the first batch come back in the second"
        # These attributes are also the names of their tables.
        records = ("stays", "community_visits", "referrals", "appointments")
        with engine.begin() as conn:
            plan = plan_write(conn, later)
            assert all(plan.stored[attr] == {} for attr in records)
            # A database restored from before these patients: their rows are read back.
            conn.execute(text("DELETE FROM pathway_states"))
            plan = plan_write(conn, later)
            held = {
                pid
                for attr in records
                for (pid,) in conn.execute(text(f"SELECT patient_id FROM {attr}"))
            }
            read = {row.patient_id for attr in records for row in plan.stored[attr].values()}
            assert read == held & set(again)
        engine.dispose()


@pytest.mark.parametrize("n", [1, 500])
def test_bulk_write_round_trips_awkward_values(pg_url: str, n: int) -> None:
    """Rows written in bulk (as one JSON array on PostgreSQL) store the values as they were."""
    from datetime import UTC, datetime, timedelta, timezone

    from sqlalchemy import select

    from parcours.db import make_engine
    from parcours.db.pathway_models import AlertRow, StayRow

    awkward = ["tab\there", "line\nbreak\r", "back\\slash \\N", "é ✓ 'quote' \"dq\"", "", None]
    at = datetime(2026, 1, 5, 10, 30, 15, 123456, tzinfo=UTC)
    stays = [
        {
            "stay_id": f"bulk-{n}-{i}",
            "patient_id": f"p-{i}",
            "hospital_id": awkward[i % len(awkward)],
            "admitted_at": at + timedelta(minutes=i),
            "discharged_at": None if i % 2 else at.astimezone(timezone(timedelta(hours=2))),
            "disposition": None,
            "admit_source": awkward[(i + 1) % len(awkward)],
            "from_ed_encounter": None,
            "los_hours": [None, 0.1, 1e-7, 123456.789][i % 4],
        }
        for i in range(n)
    ]
    alerts = [
        {
            "alert_id": f"bulk-{n}-{i}",
            "alert_type": "t",
            "patient_id": None,
            "unit_id": None,
            "status": "open",
            "raised_at": at,
            "resolved_at": None,
            "message": awkward[i % len(awkward)] or "m",
            "details": {"text": awkward[i % len(awkward)], "n": i, "nested": [1.5, None, True]},
        }
        for i in range(n)
    ]
    engine = make_engine(pg_url)
    st, al = StayRow.__table__, AlertRow.__table__
    with engine.begin() as conn:
        bulk_write(conn, st, stays, key=["stay_id"])
        bulk_write(conn, st, stays, key=["stay_id"])  # again: an upsert changes nothing
        bulk_write(conn, al, alerts, key=["alert_id"], update=ALERT_COLUMNS)
    with engine.connect() as conn:
        got_stays = conn.execute(select(st).where(st.c.stay_id.like(f"bulk-{n}-%"))).mappings()
        got_alerts = conn.execute(select(al).where(al.c.alert_id.like(f"bulk-{n}-%"))).mappings()
        stored_stays = {r["stay_id"]: dict(r) for r in got_stays}
        stored_alerts = {r["alert_id"]: {k: r[k] for k in alerts[0]} for r in got_alerts}
    engine.dispose()
    assert stored_stays == {r["stay_id"]: r for r in stays}
    assert stored_alerts == {r["alert_id"]: r for r in alerts}


def test_vacuum_after_a_backfill_visits_every_churned_table(pg_url: str, topic_prefix: str) -> None:
    from parcours.db import make_engine
    from streams.sink.writer import CHURNED

    resources = territory_feed(topic_prefix, days=1, seed=6).resources
    with fresh_database(pg_url) as db:
        run(db, messages(resources), 50)
        engine = make_engine(db)
        SqlSink(engine).vacuum()
        engine.dispose()
        vacuumed = rows(
            db, "SELECT relname FROM pg_stat_user_tables WHERE vacuum_count > 0 ORDER BY 1"
        )
        assert set(CHURNED) <= {name for (name,) in vacuumed}


def test_a_booked_appointment_reaches_its_table_and_a_cancellation_removes_it(
    pg_url: str, topic_prefix: str
) -> None:
    p = topic_prefix
    referral = {
        "resourceType": "ServiceRequest",
        "id": f"{p}sr",
        "meta": {"versionId": "1", "lastUpdated": "2026-01-05T17:00:00+01:00"},
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{p}pat"},
        "authoredOn": "2026-01-05T16:45:00+01:00",
        "requester": {"reference": f"Practitioner/{p}gp"},
        "performer": [{"reference": f"Organization/{p}chu"}],
    }
    booked = {
        "resourceType": "Appointment",
        "id": f"{p}rdv",
        "meta": {"versionId": "1", "lastUpdated": "2026-01-06T10:00:00+01:00"},
        "status": "booked",
        "created": "2026-01-06T09:55:00+01:00",
        "start": "2026-01-19T14:00:00+01:00",
        "basedOn": [{"reference": f"ServiceRequest/{p}sr"}],
        "serviceType": [{"coding": [{"code": "cardio"}]}],
        "participant": [{"actor": {"reference": f"Patient/{p}pat"}, "status": "accepted"}],
    }
    cancelled = booked | {
        "meta": {"versionId": "2", "lastUpdated": "2026-01-12T10:00:00+01:00"},
        "status": "cancelled",
    }
    query = (
        "SELECT appointment_id, patient_id, status, start_at, hospital_id, service_code"
        " FROM appointments"
    )
    with fresh_database(pg_url) as db:
        # Twice: a replay writes the same single row.
        run(db, messages([referral, booked, booked]), 2)
        [(aid, pid, status, start, hospital, service)] = rows(db, query)
        assert (aid, pid, status, hospital, service) == (
            f"{p}rdv",
            f"{p}pat",
            "booked",
            f"{p}chu",
            "cardio",
        )
        assert start.isoformat() == "2026-01-19T13:00:00+00:00"
        run(db, messages([referral, booked, cancelled]), 3)
        assert rows(db, query) == []


@pytest.mark.parametrize("horizon_days", [None, 5])
def test_times_far_off_are_dead_lettered_or_kept_out_of_the_census(
    pg_url: str, topic_prefix: str, horizon_days: int | None
) -> None:
    """A year 9999 is refused with the element named; a plausible but far-off discharge (2098)
    is kept, but no census hour is counted beyond the horizon past the clock, so the open stay
    beside it is not counted hour by hour up to 2098."""
    from parcours.db import make_engine

    p = topic_prefix

    def stay(eid: str, patient: str, period: dict[str, str], status: str) -> dict[str, Any]:
        return {
            "resourceType": "Encounter",
            "id": f"{p}{eid}",
            "meta": {"versionId": "1", "lastUpdated": period["start"]},
            "status": status,
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": f"Patient/{p}{patient}"},
            "serviceProvider": {"reference": f"Organization/{p}chu"},
            "period": period,
        }

    still_in = stay("e1", "a", {"start": "2026-03-01T08:00:00Z"}, "in-progress")
    far_off = stay(
        "e2", "b", {"start": "2026-03-02T08:00:00Z", "end": "2098-12-31T10:00:00Z"}, "finished"
    )
    absurd = stay(
        "e3", "c", {"start": "2026-03-02T09:00:00Z", "end": "9999-12-31T23:00:00-14:00"}, "finished"
    )
    ancient = stay("e4", "d", {"start": "0001-01-01T00:00:00Z"}, "in-progress")
    with fresh_database(pg_url) as db:
        sink = (
            SqlSink(make_engine(db))
            if horizon_days is None
            else SqlSink(make_engine(db), horizon=timedelta(days=horizon_days))
        )
        processor = BatchProcessor(sink, rules_from_settings(Settings()))
        outcome = processor.process(messages([still_in, far_off, absurd, ancient]), {}.get)
        reasons = sorted(reason for _, _, reason in outcome.rejects)
        assert len(reasons) == 2
        assert "Encounter.period.end" in reasons[0] + reasons[1]
        assert "Encounter.period.start" in reasons[0] + reasons[1]
        stays = rows(db, "SELECT stay_id FROM stays ORDER BY stay_id")
        assert stays == [(f"{p}e1",), (f"{p}e2",)]
        [(first, last, hours)] = rows(
            db,
            "SELECT min(hour), max(hour), count(DISTINCT hour) FROM census_hourly"
            f" WHERE hospital_id = '{p}chu'",
        )
        assert first.isoformat() == "2026-03-01T08:00:00+00:00"
        horizon = datetime.now(UTC) + timedelta(days=(horizon_days or 30) + 1)
        assert last < horizon
        assert hours <= (horizon - first) / timedelta(hours=1)


def test_a_stay_from_long_ago_is_counted_over_the_lookback_only(
    pg_url: str, topic_prefix: str
) -> None:
    """A stay that began in 1901 (valid, and inside the years of care), in progress or ended two
    days ago, keeps its admission time, but the census counts it only over the lookback before
    the clock: not hour by hour for 125 years. A stay that ended long ago is counted whole."""
    from parcours.db import make_engine

    p = topic_prefix

    def encounter(eid: str, patient: str, klass: str, period: dict[str, str]) -> dict[str, Any]:
        return {
            "resourceType": "Encounter",
            "id": f"{p}{eid}",
            "meta": {"versionId": "1"},
            "status": "finished" if "end" in period else "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": klass},
            "subject": {"reference": f"Patient/{p}{patient}"},
            "serviceProvider": {"reference": f"Organization/{p}chu"},
            "period": period,
        }

    open_stay = encounter("s1", "a", "IMP", {"start": "1901-01-01T00:00:00Z"})
    open_ed = encounter("v1", "b", "EMER", {"start": "1950-06-01T00:00:00Z"})
    old_closed = encounter(
        "s2", "c", "IMP", {"start": "1985-05-01T08:00:00Z", "end": "1985-05-03T08:00:00Z"}
    )
    lately = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    long_closed = encounter("s3", "d", "IMP", {"start": "1901-01-01T00:00:00Z", "end": lately})
    span = timedelta(days=10)
    with fresh_database(pg_url) as db:
        sink = SqlSink(make_engine(db), lookback=span)
        processor = BatchProcessor(sink, rules_from_settings(Settings()))
        outcome = processor.process(messages([open_stay, open_ed, old_closed, long_closed]), {}.get)
        assert outcome.rejects == []
        assert (
            rows(db, "SELECT admitted_at FROM stays WHERE stay_id = :s", s=f"{p}s1")[0][0].year
            == 1901
        )
        since = datetime.now(UTC) - span - timedelta(hours=1)
        [(before, total)] = rows(
            db,
            "SELECT count(*) FILTER (WHERE hour < :since AND hour > '1986-01-01'), count(*)"
            f" FROM census_hourly WHERE hospital_id = '{p}chu'",
            since=since,
        )
        # Nothing of the 1901 and 1950 ones before the span; the 1985 stay's two days are there.
        assert before == 0
        [(old,)] = rows(
            db,
            f"SELECT count(DISTINCT hour) FROM census_hourly WHERE hospital_id = '{p}chu'"
            " AND hour < '1986-01-01'",
        )
        assert 48 <= old <= 50
        # Two units (hospital and ED) at most, per hour of the span and the horizon after it.
        assert total <= old * 2 + 3 * (span + timedelta(days=31)) / timedelta(hours=1)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_hospital_known_only_by_its_organization_is_shown_by_its_name(
    backend: str, pg_url: str, tmp_path: Path, topic_prefix: str
) -> None:
    """Older Synthea sends no Location: the stay names its hospital by the Organization
    (serviceProvider). The board shows the Organization's name, whether it came before the stay
    or after it, and a later version renames it."""
    from contextlib import nullcontext

    from parcours.db import make_engine

    p = topic_prefix

    def organization(oid: str, name: str, version: str) -> dict[str, Any]:
        return {
            "resourceType": "Organization",
            "id": f"{p}{oid}",
            "meta": {"versionId": version},
            "name": name,
        }

    def stay(eid: str, patient: str, oid: str) -> dict[str, Any]:
        return {
            "resourceType": "Encounter",
            "id": f"{p}{eid}",
            "meta": {"versionId": "1"},
            "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": f"Patient/{p}{patient}"},
            "serviceProvider": {"reference": f"Organization/{p}{oid}"},
            "period": {"start": (datetime.now(UTC) - timedelta(hours=5)).isoformat()},
        }

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'o.db'}"
        upgrade(url)
        database: Any = nullcontext(url)
    else:
        database = fresh_database(pg_url)
    names = "SELECT unit_id, name FROM location_occupancy WHERE unit_type = 'hospital'"
    with database as db:
        processor = BatchProcessor(SqlSink(make_engine(db)), rules_from_settings(Settings()))
        table: dict[str, Any] = {}
        for batch in (
            [organization("chu", "CHU de Rivemont", "1"), stay("s1", "a", "chu")],
            [stay("s2", "b", "ch")],
            [organization("ch", "Centre hospitalier de Belleau", "1")],
        ):
            outcome = processor.process(messages(batch), table.get)
            assert outcome.rejects == []
            table.update({pid: value for pid, (_, value) in outcome.states.items()})
        assert dict(rows(db, names)) == {
            f"{p}chu": "CHU de Rivemont",
            f"{p}ch": "Centre hospitalier de Belleau",
        }
        # A new version renames it; a sink started afresh reads the names back from SQL.
        outcome = processor.process(
            messages([organization("ch", "CH de Belleau-sur-Mer", "2")]), table.get
        )
        assert dict(rows(db, names))[f"{p}ch"] == "CH de Belleau-sur-Mer"
        fresh = BatchProcessor(SqlSink(make_engine(db)), rules_from_settings(Settings()))
        fresh.process(messages([stay("s3", "c", "ch")]), {}.get)
        assert dict(rows(db, names))[f"{p}ch"] == "CH de Belleau-sur-Mer"
