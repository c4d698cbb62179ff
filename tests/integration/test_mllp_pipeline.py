"""The listener's two stages (prepare, finish) with a real broker and a real database: a batch
prepared on top of one whose finish failed is refused too, and the retry publishes new versions
built from what SQL holds; merge loops are refused whichever batch, or gateway, made the merge
they would undo."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from ingest.entries import prepare_bundle
from ingest.hl7_map import parse_adt, read_header
from ingest.mllp import AdtProcessor, Outcome, Pending
from ingest.publish import Publisher
from ingest.references import IdentifierIndex, apply_merges
from parcours.db import make_engine, upgrade
from parcours.settings import Settings
from parcours.topics import Topics, ensure_topics
from tests.hl7_messages import adt

pytestmark = pytest.mark.integration
PARIS = ZoneInfo("Europe/Paris")


def pending(payload: bytes) -> Pending:
    header = read_header(payload)
    msg = parse_adt(payload, PARIS, header)
    return Pending(msg, "gam-test", header, payload, datetime.now(UTC), None)


def test_a_failed_finish_refuses_the_batch_built_on_it_and_versions_are_not_reused(
    broker: str, topic_prefix: str, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'hl7.db'}"
    upgrade(db)
    settings = Settings(database_url=db, kafka_bootstrap_servers=broker, topic_prefix=topic_prefix)
    ensure_topics(broker, Topics.from_settings(settings).all(), 2)
    engine = make_engine(db)
    publisher = Publisher(settings)
    processor = AdtProcessor(engine, publisher, publish_locations=False)
    admit = adt("A01", ipp="PIPE1", nda="STAY1", movement="M1")
    move = adt("A02", ipp="PIPE1", nda="STAY1", movement="M2", ward="NEURO", at="20260302100000")
    try:
        first = processor.prepare([pending(admit)])
        # The second batch is prepared on the first's state, before the first is stored.
        second = processor.prepare([pending(move)])
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE patient_identifiers RENAME TO patient_identifiers_off"))
        try:
            assert [o.code for o in processor.finish(first)] == ["AE"]
            assert first.failed
            processor.invalidate([first, second])
            assert [o.code for o in processor.abandon(second)] == ["AE"]
        finally:
            with engine.begin() as conn:
                conn.execute(
                    text("ALTER TABLE patient_identifiers_off RENAME TO patient_identifiers")
                )
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM hl7_encounters")).scalar() == 0

        # The sender resends both: accepted, from what SQL holds, under versions never used.
        assert [o.code for o in processor.process([pending(admit), pending(move)])] == [
            "AA",
            "AA",
        ]
        with engine.connect() as conn:
            version, state = conn.execute(
                text("SELECT version, state FROM hl7_encounters WHERE encounter_id = 'STAY1'")
            ).one()
        # Versions 1 and 2 went out with the refused batches; the retry's two messages give 3, 4.
        assert version == 4
        assert "NEURO" in str(state) and "CARDIO" in str(state)
    finally:
        publisher.close()
        engine.dispose()


@pytest.fixture
def processor(broker: str, topic_prefix: str, tmp_path: Path) -> Iterator[AdtProcessor]:
    """A listener's processor on a fresh SQLite database and this test's topics."""
    db = f"sqlite:///{tmp_path / 'hl7.db'}"
    upgrade(db)
    settings = Settings(database_url=db, kafka_bootstrap_servers=broker, topic_prefix=topic_prefix)
    ensure_topics(broker, Topics.from_settings(settings).all(), 2)
    engine = make_engine(db)
    publisher = Publisher(settings)
    try:
        yield AdtProcessor(engine, publisher, publish_locations=False)
    finally:
        publisher.close()
        engine.dispose()


def merge(merged: str, into: str) -> Pending:
    """An A40 that merges patient `merged` (MRG-1) into `into` (PID-3)."""
    return pending(adt("A40", ipp=into, merged_ipp=merged, ins=None))


def refusals(outcomes: list[Outcome]) -> list[tuple[str, str, str]]:
    return [
        (o.code, o.rejection.reason, o.rejection.location) if o.rejection else (o.code, "", "")
        for o in outcomes
    ]


def test_a_merge_back_is_refused_within_a_batch_and_on_top_of_an_unstored_one(
    processor: AdtProcessor,
) -> None:
    loop = ("AE", "merge-loop", "MRG-1")
    assert refusals(processor.process([merge("X1", "Y1"), merge("Y1", "X1")])) == [
        ("AA", "", ""),
        loop,
    ]
    # The second batch is prepared while the first, which made the merge, is not stored yet.
    first = processor.prepare([merge("X2", "Y2")])
    second = processor.prepare([merge("Y2", "X2"), merge("Z2", "X2")])
    assert refusals(processor.finish(first)) == [("AA", "", "")]
    assert refusals(processor.finish(second)) == [loop, ("AA", "", "")]


def test_merges_of_the_fhir_gateway_and_of_the_listener_are_one_memory(
    processor: AdtProcessor,
) -> None:
    index = IdentifierIndex(processor.store.engine)
    # A FHIR feed merged F1 into F2 (Patient F1 `link` replaced-by F2): an A40 may not undo it.
    index.record("fhir-feed", datetime.now(UTC), [], [], {"F1": "F2"})
    assert refusals(processor.process([merge("F2", "F1")])) == [("AE", "merge-loop", "MRG-1")]
    # An A40 merged H1 into H2: a FHIR feed may not undo it either.
    assert refusals(processor.process([merge("H1", "H2")])) == [("AA", "", "")]
    back = prepare_bundle(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {
                        "resourceType": "Patient",
                        "id": "H2",
                        "link": [{"other": {"reference": "Patient/H1"}, "type": "replaced-by"}],
                    },
                    "request": {"method": "PUT", "url": "Patient/H2"},
                }
            ],
        }
    )
    assert apply_merges(back.items, index.lookup) == {}
    assert [i.reason for i in back.items] == ["merge-loop"]
