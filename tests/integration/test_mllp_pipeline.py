"""The listener's two stages (prepare, finish) with a real broker and a real database: a batch
prepared on top of one whose finish failed is refused too, and the retry publishes new versions
built from what SQL holds."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from ingest.hl7_map import parse_adt, read_header
from ingest.mllp import AdtProcessor, Pending
from ingest.publish import Publisher
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
