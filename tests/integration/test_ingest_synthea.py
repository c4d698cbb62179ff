"""All 24 Synthea bundles through `parcours ingest push` and the real gateway: every entry lands on
the raw topic exactly once, keyed by its patient. Expected figures are computed from the files."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from ingest.auth import create_token
from parcours.db import make_engine
from parcours.settings import Settings
from parcours.topics import Topics
from tests.integration.ingest_helpers import gateway_env, read_topic, run_gateway
from tests.support import fresh_database, parcours_env

pytestmark = pytest.mark.integration
SHARED_TYPES = ("Organization", "Practitioner")


def expected_from_files(paths: list[Path]) -> tuple[int, dict[tuple[str, str], str]]:
    """(entry count, expected Kafka key per (type, id)), read straight from the JSON files.

    Synthea repeats the same Organization and Practitioner, with identical content, in several
    files: identical content is one resource version, published once.
    """
    entries = 0
    keys: dict[tuple[str, str], str] = {}
    contents: dict[tuple[str, str], set[str]] = {}
    for path in paths:
        bundle = json.loads(path.read_text())
        patient_id = next(
            e["resource"]["id"]
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == "Patient"
        )
        for entry in bundle["entry"]:
            entries += 1
            res = entry["resource"]
            ident = (res["resourceType"], res["id"])
            contents.setdefault(ident, set()).add(json.dumps(res, sort_keys=True))
            shared = res["resourceType"] in SHARED_TYPES
            keys[ident] = f"{ident[0]}/{ident[1]}" if shared else patient_id
    # The premise of "published once": no (type, id) comes with two different contents.
    assert all(len(c) == 1 for c in contents.values())
    return entries, keys


@pytest.fixture
def db(pg_url: str) -> Iterator[str]:
    """The gateway remembers what it published: each run needs a database of its own."""
    with fresh_database(pg_url) as url:
        yield url


# The default body limit, and one below seven of the 24 files (1.3–3.0 MB), which `push` then
# sends in parts.
@pytest.mark.parametrize("max_body", [None, 1_000_000])
def test_all_synthea_bundles_land_exactly_once_keyed_by_patient(
    broker: str,
    db: str,
    topic_prefix: str,
    shared_data: Path,
    tmp_path: Path,
    max_body: int | None,
) -> None:
    paths = sorted((shared_data / "fhir" / "synthea-r4-2019").glob("*.json"))
    assert len(paths) == 24
    entries, expected = expected_from_files(paths)
    assert entries == 6938 and len(expected) == 6910  # the data README's counts

    source = f"synthea-{uuid.uuid4().hex[:6]}"
    engine = make_engine(db)
    token = create_token(engine, source)
    limit = {} if max_body is None else {"PARCOURS_INGEST_MAX_BODY_BYTES": str(max_body)}
    env = gateway_env(broker, db, topic_prefix, **limit)
    with run_gateway(env, tmp_path / "gw.log") as gw:
        push = subprocess.run(
            [sys.executable, "-m", "parcours", "ingest", "push", *map(str, paths)],
            env=parcours_env(PARCOURS_INGEST_URL=gw.url, PARCOURS_INGEST_TOKEN=token, **limit),
            capture_output=True,
            text=True,
            timeout=280,
        )
        assert push.returncode == 0, push.stderr[-3000:] + gw.log_tail()
    too_big = [p.name for p in paths if max_body is not None and p.stat().st_size > max_body]
    assert (f"note: {len(too_big)} Bundle(s)" in push.stderr) == bool(too_big), push.stderr
    summary = push.stdout.splitlines()
    assert summary[:3] == [
        f"accepted: {len(expected)}",
        f"duplicates: {entries - len(expected)}",
        "rejected: 0",
    ]

    topics = Topics.from_settings(Settings(topic_prefix=topic_prefix))
    # Organizations and Practitioners go to the directory topic, the rest to the raw topic.
    directory = read_topic(broker, topics.directory)
    assert {json.loads(m.value)["resourceType"] for m in directory} <= set(SHARED_TYPES)
    raw = read_topic(broker, topics.raw) + directory
    landed = Counter((json.loads(m.value)["resourceType"], json.loads(m.value)["id"]) for m in raw)
    assert len(raw) == len(expected)
    assert set(landed) == set(expected)
    assert max(landed.values()) == 1
    wrong_keys = [
        (ident, m.key)
        for m in raw
        if m.key.decode()
        != expected[(ident := (json.loads(m.value)["resourceType"], json.loads(m.value)["id"]))]
    ]
    assert wrong_keys == []
    # References inside the published resources are real `Type/id`, never `urn:uuid:`.
    assert not any(b"urn:uuid:" in m.value for m in raw)

    with engine.connect() as conn:
        logged = conn.execute(
            text("SELECT count(*) FROM ingest_log WHERE source = :s"), {"s": source}
        ).scalar_one()
        totals = conn.execute(
            text("SELECT accepted_total, duplicate_total FROM integrators WHERE name = :s"),
            {"s": source},
        ).one()
    engine.dispose()
    assert logged == len(expected)
    assert tuple(totals) == (len(expected), entries - len(expected))
