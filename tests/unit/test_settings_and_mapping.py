"""Settings defaults and the walking skeleton's pure mapping."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from parcours.settings import Settings, normalise_db_url
from parcours.topics import Topics
from streams.core.events import EncounterRecorded
from streams.core.fhir_map import MappingError, map_resource
from streams.runtime.batch import decode_batch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"


def test_defaults_point_the_demo_at_sqlite_and_the_embedded_broker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("PARCOURS_DATA_DIR", str(tmp_path))
    s = Settings()
    assert s.db_url == f"sqlite:///{tmp_path.resolve() / 'parcours.db'}"
    assert s.bootstrap == "127.0.0.1:9092"


def test_standard_env_names_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u@h/db")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("PARCOURS_TOPIC_PREFIX", "x.")
    s = Settings()
    assert s.db_url == "postgresql+psycopg2://u@h/db"
    assert s.bootstrap == "k1:9092,k2:9092"
    assert Topics.from_settings(s).raw == "x.fhir.raw"


def test_normalise_leaves_sqlite_alone() -> None:
    assert normalise_db_url("sqlite:///a.db") == "sqlite:///a.db"


def test_encounter_maps_to_an_aware_event() -> None:
    resource = json.loads((FIXTURES / "encounter_emer.json").read_text())
    [event] = [ev for ev in map_resource(resource) if isinstance(ev, EncounterRecorded)]
    assert event.patient_id == "pat-1"
    assert event.start == datetime(2026, 1, 12, 7, 15, tzinfo=UTC)
    assert event.source.version == "1"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"class": {"code": "XYZ"}}, "Encounter.class.code"),
        ({"status": "done"}, "Encounter.status"),
        ({"subject": None}, "Encounter.subject"),
    ],
)
def test_bad_encounters_are_refused_with_the_element(
    patch: dict[str, object], message: str
) -> None:
    resource = json.loads((FIXTURES / "encounter_emer.json").read_text()) | patch
    with pytest.raises(MappingError, match=message):
        map_resource(resource)


def test_decode_batch_splits_good_from_bad() -> None:
    good = (FIXTURES / "encounter_emer.json").read_bytes()
    events, rejects = decode_batch(
        [(b"pat-1", good), (b"k", b"[1,"), (b"k", b'{"a":1}'), (b"gone", b"")]
    )
    assert len([ev for ev in events if isinstance(ev, EncounterRecorded)]) == 1
    assert [r[0] for r in rejects] == [b"k", b"k", b"gone"]
    assert "resourceType" in rejects[1][2]
    assert "tombstone" in rejects[2][2]


def test_alert_thresholds_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from streams.runtime.batch import rules_from_settings

    monkeypatch.setenv("PARCOURS_ALERT_ED_BOARDING_HOURS", "6")
    monkeypatch.setenv("PARCOURS_ALERT_LOS_P90_DAYS", '{"cardio": 9, "geriatrie": 21.5}')
    monkeypatch.setenv("PARCOURS_ALERT_LOS_P90_DEFAULT_DAYS", "10")
    rules = rules_from_settings(Settings())
    assert rules.ed_boarding == timedelta(hours=6)
    assert rules.los_p90 == {"cardio": timedelta(days=9), "geriatrie": timedelta(days=21.5)}
    assert rules.los_p90_default == timedelta(days=10)
    assert rules.follow_up == timedelta(days=7)
