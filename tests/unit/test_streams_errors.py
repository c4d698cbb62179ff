"""How the worker classifies database errors, names dead letters, routes reference data and
reports its counters (pure functions; the real errors are met in the integration tests)."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from sqlalchemy.exc import OperationalError

from parcours.topics import Topics, is_directory_key
from streams.runtime.batch import db_error_kind, describe_error
from streams.runtime.worker import (
    WorkerMetrics,
    dead_letter_stage,
    progress_row,
    rejection_row,
    senders,
)


class PgError(Exception):
    """Stands in for a psycopg2 error: what the classifier reads is its SQLSTATE."""

    def __init__(self, message: str, pgcode: str | None) -> None:
        super().__init__(message)
        self.pgcode = pgcode


@pytest.mark.parametrize(
    ("pgcode", "kind"),
    [
        ("54001", "refused"),  # stack depth limit exceeded: the statement will never pass
        ("22P05", "refused"),  # untranslatable character (a NUL in text)
        ("22001", "refused"),  # value too long
        ("23505", "refused"),  # unique violation
        ("42601", "refused"),  # syntax error
        ("08006", "transient"),  # connection failure
        ("57P01", "transient"),  # admin shutdown
        ("40P01", "transient"),  # deadlock detected
        ("53300", "transient"),  # too many connections
        ("57014", "timeout"),  # statement timeout
    ],
)
def test_database_errors_are_classified_by_sqlstate(pgcode: str, kind: str) -> None:
    raw = PgError("boom", pgcode)
    assert db_error_kind(raw) == kind
    # Wrapped by SQLAlchemy, or raised on a raw cursor: the same answer.
    assert db_error_kind(OperationalError("SELECT 1", {}, raw)) == kind


def test_a_lost_connection_without_sqlstate_is_transient_and_sqlite_lock_too() -> None:
    class OperationalErrorLike(Exception):
        pass

    OperationalErrorLike.__name__ = "OperationalError"
    assert db_error_kind(OperationalErrorLike("server closed the connection")) == "transient"
    assert db_error_kind(sqlite3.OperationalError("database is locked")) == "transient"
    assert db_error_kind(sqlite3.OperationalError("no such table: x")) == "refused"
    assert db_error_kind(ValueError("a bug on one patient")) == "refused"


def test_error_descriptions_never_carry_the_statement_or_its_parameters() -> None:
    raw = PgError(
        'unsupported Unicode escape sequence\nCONTEXT: JSON data, line 1: [{"name":"Ward', "22P05"
    )
    wrapped = OperationalError("INSERT INTO locations SELECT … %s", ('[{"secret": 1}]',), raw)
    text = describe_error(wrapped)
    assert text == "PgError: unsupported Unicode escape sequence"
    assert "INSERT" not in text and "secret" not in text


def test_reference_data_goes_to_the_directory_topic() -> None:
    topics = Topics("raw", "dead", "events", "alerts", "directory")
    assert topics.for_key(b"Location/w-1") == "directory"
    assert topics.for_key("Organization/org-1") == "directory"
    assert topics.for_key(b"Practitioner/gp-1") == "directory"
    assert topics.for_key(b"HealthcareService/hs") == "directory"
    assert topics.for_key(b"patient-42") == "raw"
    assert topics.for_key(b"ServiceRequest/sr-1") == "raw"
    assert not is_directory_key(None)


def test_a_dead_letter_becomes_a_feed_health_row_without_nul() -> None:
    payload = json.dumps({"resourceType": "Location", "id": "w\u0000x", "name": "Ward\u0000A"})
    now = datetime(2026, 3, 2, tzinfo=UTC)
    row = rejection_row(b"Location/w", payload.encode(), "sql: DataError: bad\u0000", now)
    assert row["source"] == "stream-worker"
    assert row["reason"] == "worker-sql"
    assert row["resource_type"] == "Location"
    assert row["resource_id"] == "wx"
    assert "\u0000" not in row["diagnostics"]
    assert rejection_row(b"p1", b"not json", "not valid JSON: x", now)["resource_id"] == "p1"
    assert rejection_row(b"p1", b"{}", "x", now, b"samu-21")["source"] == "samu-21"
    assert dead_letter_stage("pathway: KeyError: x") == "pathway"
    assert dead_letter_stage("Encounter.status 'done' is not…") == "mapping"


def test_a_message_dead_lettered_again_is_the_same_feed_health_row() -> None:
    now, later = datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 3, tzinfo=UTC)
    key = rejection_row(b"p1", b"{}", "x", now, b"samu-21")["dedupe_key"]
    assert rejection_row(b"p1", b"{}", "x", later, b"samu-21")["dedupe_key"] == key
    others = [
        rejection_row(b"p1", b"{}", "x", now)["dedupe_key"],
        rejection_row(b"p2", b"{}", "x", now, b"samu-21")["dedupe_key"],
        rejection_row(b"p1", b"{ }", "x", now, b"samu-21")["dedupe_key"],
        rejection_row(b"p1", b"{}", "y", now, b"samu-21")["dedupe_key"],
        rejection_row(b"p", b"1{}", "x", now, b"samu-21")["dedupe_key"],
    ]
    assert len({key, *others}) == 6
    assert all(len(k) <= 64 for k in others)


def test_metrics_render_in_prometheus_text() -> None:
    metrics = WorkerMetrics()
    metrics.messages = 12
    metrics.dead_lettered = {"sql": 2, "mapping": 1}
    text = metrics.render()
    assert "parcours_worker_messages_total 12\n" in text
    assert 'parcours_worker_dead_lettered_total{stage="sql"} 2\n' in text
    assert 'parcours_worker_dead_lettered_total{stage="mapping"} 1\n' in text


def test_lag_never_counts_from_an_end_short_of_what_was_applied() -> None:
    now = datetime(2026, 3, 2, tzinfo=UTC)
    # The broker reports 153,811 as the end while the worker applied up to 153,886.
    row = progress_row("fhir.raw", 0, "w", 153_887, 153_811, now)
    assert row["highwater"] == 153_887
    assert row["lag"] == 0
    assert progress_row("fhir.raw", 0, "w", 10, 15, now)["lag"] == 5


def test_a_dead_letter_keeps_the_headers_that_say_who_sent_it() -> None:
    listed = SimpleNamespace(
        value=b"a", headers=[("source", b"lab-1"), ("received-at", b"t"), ("other", b"x")]
    )
    mapped = SimpleNamespace(value=b"b", headers={"source": b"gp-2"})
    bare = SimpleNamespace(value=b"c", headers=None)
    found = senders([listed, mapped, bare])  # type: ignore[list-item]
    assert found == {b"a": {"source": b"lab-1", "received-at": b"t"}, b"b": {"source": b"gp-2"}}


def test_a_feed_health_row_is_made_of_any_payload() -> None:
    now = datetime(2026, 3, 2, tzinfo=UTC)
    deep = b'{"resourceType":"Patient","id":"d","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert (
        rejection_row(b"deep-patient", deep, "not valid JSON", now)["resource_id"] == "deep-patient"
    )
    lone = b'{"resourceType":"Encounter","id":"\\ud800x"}'
    row = rejection_row(b"k", lone, "bad \ud800 reason", now, b"feed-\xff")
    for value in row.values():
        if isinstance(value, str):
            value.encode("utf-8")  # what PostgreSQL's text takes
