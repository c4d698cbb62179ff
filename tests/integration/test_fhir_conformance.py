"""The conformance corpus (tests/fixtures/conformance) through gateway → broker → worker → SQL.

Every expected stay, ED visit, community visit, admission and discharge instant and LOS below is
read by hand from the fixture files (times converted to UTC by hand). The pipeline must give
exactly these, on PostgreSQL and on SQLite (the demo's default).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from dashboard import queries
from ingest.auth import create_token
from parcours.db import make_engine, upgrade
from parcours.settings import Settings
from parcours.timeutil import to_utc
from parcours.topics import Topics, ensure_topics
from tests.integration.ingest_helpers import gateway_env, read_topic, run_gateway
from tests.integration.streams_helpers import count, rows, worker_env
from tests.support import fresh_database, parcours_process, wait_until

pytestmark = pytest.mark.integration
CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "conformance"
SOURCE = "synthea-conf"
FHIR = {"Content-Type": "application/fhir+json"}


def utc(value: Any) -> str:
    """An instant as the tests compare it (ISO, UTC); a raw SQLite value is UTC already."""
    return to_utc(datetime.fromisoformat(str(value))).isoformat()


# --- What the fixtures say, by hand ---------------------------------------------------------------

# stay → (patient, admitted, discharged, LOS hours, admit source, from ED, disposition)
STAYS = {
    # +00:00 as sent; NUBC 01 is "home".
    "enc-off-imp": (
        "pat-offsets",
        "2026-02-01T08:00:00+00:00",
        "2026-02-03T20:00:00+00:00",
        60.0,
        None,
        None,
        "home",
    ),
    # 22:00+01:00 on 28 March → 04:30+02:00 on 29 March (the clocks went forward): 5.5 h.
    "enc-dst-imp": (
        "pat-dst",
        "2026-03-28T21:00:00+00:00",
        "2026-03-29T02:30:00+00:00",
        5.5,
        "gp",
        None,
        "home",
    ),
    # partOf → the ED Encounter; ACUTE is an inpatient class.
    "enc-po-imp": (
        "pat-partof",
        "2026-02-10T10:00:00+00:00",
        "2026-02-14T10:00:00+00:00",
        96.0,
        "emd",
        "enc-po-ed",
        "rehab",
    ),
    # classHistory: EMER until 01:00Z, then IMP; the stay starts where the ED part ends, and
    # follows that ED visit (same id).
    "enc-ch": (
        "pat-classhist",
        "2026-02-21T01:00:00+00:00",
        "2026-02-23T13:00:00+00:00",
        60.0,
        None,
        "enc-ch",
        None,
    ),
    # FR Core: a venue, and one Encounter per ward movement partOf it (not stays of their own).
    "enc-venue": (
        "pat-venue",
        "2026-03-10T07:00:00+00:00",
        "2026-03-14T09:00:00+00:00",
        98.0,
        None,
        None,
        "home",
    ),
    # Sent before its hospital (with the opt-in): 09:00+01:00 → next day 09:00+01:00.
    "enc-early-imp": (
        "pat-early",
        "2026-03-01T08:00:00+00:00",
        "2026-03-02T08:00:00+00:00",
        24.0,
        None,
        None,
        None,
    ),
}
# ED visit → (patient, arrived, departed, admitted)
ED_VISITS = {
    # +05:30: 10:00 → 13:30 local.
    "enc-off-ed": ("pat-offsets", "2026-01-10T04:30:00+00:00", "2026-01-10T08:00:00+00:00", False),
    "enc-po-ed": ("pat-partof", "2026-02-10T07:00:00+00:00", "2026-02-10T10:00:00+00:00", True),
    "enc-ch": ("pat-classhist", "2026-02-20T22:00:00+00:00", "2026-02-21T01:00:00+00:00", True),
    # Sent for pat-old, which pat-keep replaced.
    "enc-old-ed": ("pat-keep", "2026-01-06T02:00:00+00:00", "2026-01-06T04:00:00+00:00", False),
    "enc-early-ed": ("pat-early", "2026-03-05T08:00:00+00:00", "2026-03-05T09:00:00+00:00", False),
}
# community visit → (patient, class, start)
COMMUNITY = {
    "enc-off-amb": ("pat-offsets", "AMB", "2026-01-20T14:00:00+00:00"),  # -05:00
    "enc-keep-amb": ("pat-keep", "AMB", "2026-01-05T09:00:00+00:00"),
    "enc-batch-amb": ("pat-batch", "VR", "2026-01-15T13:00:00+00:00"),
    # Received by pat-old before the merge.
    "enc-old-amb": ("pat-keep", "AMB", "2026-01-02T15:00:00+00:00"),
}
# Ward periods of the stay across the DST change: (ward, start, end); the second lasts 2 real
# hours although the wall clock says 01:30 → 04:30. The planned entry is not a period.
DST_PERIODS = [
    ("loc-ward-med", "2026-03-28T21:00:00+00:00", "2026-03-29T00:30:00+00:00"),
    ("loc-ward-surg", "2026-03-29T00:30:00+00:00", "2026-03-29T02:30:00+00:00"),
]
# The venue's ward periods: its movements', the venue's own place (the site) replaced.
VENUE_PERIODS = [
    ("loc-ward-med", "2026-03-10T07:00:00+00:00", "2026-03-12T13:00:00+00:00"),
    ("loc-ward-surg", "2026-03-12T13:00:00+00:00", "2026-03-14T09:00:00+00:00"),
]
SYNTHEA_FOLDER = {
    # Synthea's names: patient files sort before the information files, which must go first.
    "Abel_Offsets_0001.json": "patient_offsets.json",
    "Berthe_Heure_0002.json": "patient_dst.json",
    "Carl_Lien_0003.json": "patient_ed_partof.json",
    "Dora_Classe_0004.json": "patient_classhistory.json",
    "Emile_Garde_0005.json": "patient_keep.json",
    "Fanny_Venue_0006.json": "patient_venue.json",
    "hospitalInformation1764950400000.json": "hospitalInformation.json",
    "practitionerInformation1764950400000.json": "practitionerInformation.json",
}


def load(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def statuses(answer: dict[str, Any]) -> list[str]:
    return [e["response"]["status"] for e in answer["entry"]]


@contextmanager
def database(backend: str, pg_url: str, tmp_path: Path) -> Iterator[str]:
    if backend == "postgresql":
        with fresh_database(pg_url) as url:
            yield url
    else:
        url = f"sqlite:///{tmp_path / 'conformance.db'}"
        upgrade(url)
        yield url


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_the_conformance_corpus_gives_the_hand_counted_pathways(
    backend: str, broker: str, pg_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics.from_settings(Settings(topic_prefix=topic_prefix))
    ensure_topics(broker, topics.all(), 4)
    with database(backend, pg_url, tmp_path) as db:
        engine = make_engine(db)
        token = create_token(engine, SOURCE)

        # --- Without the opt-in: FHIR's transaction rules. ---------------------------------
        env = gateway_env(broker, db, topic_prefix, PARCOURS_INGEST_DEFER_UNRESOLVED="false")
        with run_gateway(env, tmp_path / "gateway-a.log") as gw, gw.client(token) as client:
            # A patient before its hospital: the whole transaction fails, naming the entry and
            # the reference.
            early = client.post("/fhir", content=load("patient_early.json"), headers=FHIR)
            assert early.status_code == 422, early.text
            issues = early.json()["issue"]
            assert any(
                i["expression"] == ["Bundle.entry[1].resource.location[0].location.reference"]
                and "loc-late" in i["diagnostics"]
                for i in issues
            ), issues

            # A Synthea output folder, pushed as a folder: information Bundles go first.
            folder = tmp_path / "synthea-output" / "fhir"
            folder.mkdir(parents=True)
            for target, name in SYNTHEA_FOLDER.items():
                shutil.copy(CORPUS / name, folder / target)
            pushed = subprocess.run(
                [sys.executable, "-m", "parcours", "ingest", "push", str(folder)],
                env={**env, "PARCOURS_INGEST_URL": gw.url, "PARCOURS_INGEST_TOKEN": token},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert pushed.returncode == 0, pushed.stdout + pushed.stderr
            # 6 + 2 information resources, 4 + 2 + 3 + 2 + 2 + 4 patient resources.
            assert "accepted: 25" in pushed.stdout and "rejected: 0" in pushed.stdout

            # The same hospital Bundle again: every conditional create finds its resource.
            again = client.post("/fhir", content=load("hospitalInformation.json"), headers=FHIR)
            assert again.status_code == 200
            assert statuses(again.json()) == ["200 OK"] * 6
            assert [e["response"]["location"] for e in again.json()["entry"]] == [
                "Organization/org-chu",
                "Organization/org-clinic",
                "Location/loc-chu",
                "Location/loc-clinic",
                "Location/loc-ward-med",
                "Location/loc-ward-surg",
            ]

            # A conditional update: the ward found by its identifier gets the new version.
            renamed = client.post("/fhir", content=load("location_update.json"), headers=FHIR)
            assert statuses(renamed.json()) == ["201 Created"]
            assert renamed.json()["entry"][0]["response"]["location"] == "Location/loc-ward-surg"

            # A second record of pat-keep's person, then the merge: what it received before
            # and with the merge lands on the Patient that replaced it.
            old = client.post("/fhir", content=load("patient_old.json"), headers=FHIR)
            assert statuses(old.json()) == ["201 Created"] * 2
            merged = client.post("/fhir", content=load("patient_merged.json"), headers=FHIR)
            assert statuses(merged.json()) == ["201 Created"] * 2

            # No match, and two matches: the transaction fails.
            nomatch = client.post("/fhir", content=load("patient_no_match.json"), headers=FHIR)
            assert nomatch.status_code == 422
            (issue,) = nomatch.json()["issue"]
            assert issue["code"] == "not-found" and "loc-nowhere" in issue["diagnostics"]
            twice = client.post(
                "/fhir", content=load("two_locations_same_identifier.json"), headers=FHIR
            )
            assert statuses(twice.json()) == ["201 Created"] * 2
            ambiguous = client.post("/fhir", content=load("patient_two_matches.json"), headers=FHIR)
            assert ambiguous.status_code == 422
            (issue,) = ambiguous.json()["issue"]
            assert issue["code"] == "multiple-matches"
            assert "loc-dup-a" in issue["diagnostics"] and "loc-dup-b" in issue["diagnostics"]

            # In a batch only the entry with the bad reference fails.
            batch = client.post("/fhir", content=load("batch_one_bad_reference.json"), headers=FHIR)
            assert statuses(batch.json()) == [
                "201 Created",
                "201 Created",
                "422 Unprocessable Entity",
            ]
            bad = batch.json()["entry"][2]["response"]["outcome"]["issue"][0]
            assert bad["expression"] == ["Bundle.entry[2].resource.serviceProvider.reference"]

        # --- With the opt-in, and a worker running: the patient first, its hospital later. -----
        env = gateway_env(broker, db, topic_prefix, PARCOURS_INGEST_DEFER_UNRESOLVED="true")
        wenv = worker_env(broker, db, topic_prefix)
        log = tmp_path / "worker.log"
        with (
            run_gateway(env, tmp_path / "gateway-b.log") as gw,
            gw.client(token) as client,
            parcours_process(["streams", "worker"], wenv, log) as worker,
        ):
            early = client.post("/fhir", content=load("patient_early.json"), headers=FHIR)
            assert early.status_code == 200, early.text
            assert statuses(early.json()) == ["201 Created"] * 3
            metrics = httpx.get(f"{gw.url}/metrics", timeout=10).text
            assert (
                'parcours_ingest_unresolved_references_total{element="Encounter.location.location",'
                f'source="{SOURCE}"}} 2.0'
            ) in metrics
            pending = queries.unresolved_references(engine)
            assert sorted(
                zip(pending.resource_type, pending.value, pending.element, strict=True)
            ) == [
                ("Location", "loc-late", "Encounter.location.location"),
                ("Organization", "org-late", "Encounter.serviceProvider"),
            ]

            def alive() -> None:
                assert worker.poll() is None, log.read_text()[-3000:]

            def early_counted() -> bool:
                alive()
                return count(db, "SELECT count(*) FROM stays WHERE stay_id = 'enc-early-imp'") == 1

            # Counted before its place is known: the stay is there, its Location not yet.
            wait_until(early_counted, timeout_s=150, what="the early stay in SQL")
            waiting = queries.places_not_received(engine)
            late = client.post("/fhir", content=load("hospital_late.json"), headers=FHIR)
            assert statuses(late.json()) == ["201 Created"] * 2
            org_late, loc_late = (e["response"]["location"] for e in late.json()["entry"])
            # Feed health listed the place the early patient named (its stay and its ED visit
            # wait for it), before it arrived.
            assert set(waiting.location_id) == {loc_late.removeprefix("Location/")}
            assert waiting.waiting.sum() == 2
            assert queries.unresolved_references(engine).empty

            def placed() -> bool:
                alive()
                done = (
                    count(db, "SELECT count(*) FROM stays") == len(STAYS)
                    and count(db, "SELECT count(*) FROM ed_visits") == len(ED_VISITS)
                    and count(db, "SELECT count(*) FROM community_visits") == len(COMMUNITY)
                    and count(db, "SELECT count(*) FROM locations") == 4 + 2 + 1
                )
                return done and (
                    count(
                        db,
                        "SELECT count(*) FROM ed_visits WHERE encounter_id = 'enc-early-ed' "
                        "AND hospital_id = :h",
                        h=org_late.removeprefix("Organization/"),
                    )
                    == 1
                )

            try:
                wait_until(placed, timeout_s=150, what="every pathway in SQL, the early one")
            except AssertionError as exc:
                found = {
                    t: rows(db, f"SELECT * FROM {t}")
                    for t in ("stays", "ed_visits", "community_visits", "locations")
                }
                tail = log.read_text()[-2000:]
                raise AssertionError(f"{exc}; in SQL: {found}; worker: {tail}") from exc

            # Valid FHIR that the worker cannot place (a class of a code system it does not
            # know): acknowledged, then dead-lettered under the integrator that sent it.
            odd = {
                "resourceType": "Encounter",
                "id": "enc-odd-class",
                "status": "finished",
                "class": {"system": "urn:example:local-classes", "code": "Z"},
                "subject": {"reference": "Patient/pat-offsets"},
                "period": {"start": "2026-03-01T08:00:00Z", "end": "2026-03-01T09:00:00Z"},
            }
            sent = client.post("/fhir/Encounter", content=json.dumps(odd), headers=FHIR)
            assert sent.status_code == 201, sent.text

            def odd_shown() -> bool:
                alive()
                return (
                    count(
                        db,
                        "SELECT count(*) FROM ingest_rejections WHERE source = :s "
                        "AND resource_id = 'enc-odd-class' AND reason = 'worker-mapping'",
                        s=SOURCE,
                    )
                    == 1
                )

            wait_until(odd_shown, timeout_s=60, what="the dead letter on the sender's Feed health")
        [dead] = [
            m for m in read_topic(broker, topics.deadletter) if b"enc-odd-class" in (m.value or b"")
        ]
        headers = dict(dead.headers)
        assert headers["source"] == SOURCE.encode()
        assert headers["resource-type"] == b"Encounter"
        assert b"Encounter.class.code" in headers["reason"]

        stays = {
            r[0]: (r[1], utc(r[2]), utc(r[3]), round(r[4], 6), r[5], r[6], r[7])
            for r in rows(
                db,
                "SELECT stay_id, patient_id, admitted_at, discharged_at, los_hours, admit_source, "
                "from_ed_encounter, disposition FROM stays",
            )
        }
        assert stays == STAYS
        eds = {
            r[0]: (r[1], utc(r[2]), utc(r[3]), bool(r[4]))
            for r in rows(
                db,
                "SELECT encounter_id, patient_id, arrived_at, departed_at, admitted FROM ed_visits",
            )
        }
        assert eds == ED_VISITS
        community = {
            r[0]: (r[1], r[2], utc(r[3]))
            for r in rows(
                db, "SELECT encounter_id, patient_id, class_code, start_at FROM community_visits"
            )
        }
        assert community == COMMUNITY
        for table in ("stays", "ed_visits", "community_visits"):
            assert count(db, f"SELECT count(*) FROM {table} WHERE patient_id = 'pat-old'") == 0
        assert queries.places_not_received(engine).empty
        (name,) = rows(db, "SELECT name FROM locations WHERE location_id = 'loc-ward-surg'")
        assert name == ("Chirurgie digestive",)
        # Managing organizations: by conditional reference, and by identifier only (the clinic).
        assert dict(rows(db, "SELECT location_id, organization FROM locations")) == {
            "loc-chu": "org-chu",
            "loc-clinic": "org-clinic",
            "loc-ward-med": "org-chu",
            "loc-ward-surg": "org-chu",
            "loc-dup-a": None,
            "loc-dup-b": None,
            loc_late.removeprefix("Location/"): org_late.removeprefix("Organization/"),
        }

        periods = rows(
            db,
            "SELECT ward_id, start_at, end_at FROM stay_locations WHERE stay_id = 'enc-dst-imp' "
            "ORDER BY seq",
        )
        assert [(w, utc(s), utc(e)) for w, s, e in periods] == DST_PERIODS
        periods = rows(
            db,
            "SELECT ward_id, start_at, end_at FROM stay_locations WHERE stay_id = 'enc-venue' "
            "ORDER BY seq",
        )
        assert [(w, utc(s), utc(e)) for w, s, e in periods] == VENUE_PERIODS
        # The hospital of every stay: the Organization its serviceProvider names.
        hospitals = dict(rows(db, "SELECT stay_id, hospital_id FROM stays"))
        assert hospitals == {
            **{s: "org-chu" for s in STAYS if s != "enc-early-imp"},
            "enc-early-imp": org_late.removeprefix("Organization/"),
        }
        # The early stay's period points at the Location that arrived later, now known.
        (place,) = rows(
            db,
            "SELECT sl.location_id, l.organization FROM stay_locations sl "
            "JOIN locations l ON l.location_id = sl.location_id WHERE sl.stay_id = 'enc-early-imp'",
        )
        assert place == (loc_late.removeprefix("Location/"), org_late.removeprefix("Organization/"))
        shown = subprocess.run(
            [sys.executable, "-m", "parcours", "pathways", "show", "pat-early", "--json"],
            env=wenv,
            capture_output=True,
            check=True,
        )
        (stay,) = json.loads(shown.stdout)["stays"]
        assert [p["location_known"] for p in stay["locations"]] == [True]
        engine.dispose()


def test_single_resources_and_ndjson_resolve_conditional_references_too(
    broker: str, pg_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics.from_settings(Settings(topic_prefix=topic_prefix))
    ensure_topics(broker, topics.all(), 4)
    syn = "https://github.com/synthetichealth/synthea"
    org = {
        "resourceType": "Organization",
        "id": "org-single",
        "identifier": [{"system": syn, "value": "org-single"}],
        "name": "CH single",
    }
    encounter = {
        "resourceType": "Encounter",
        "id": "enc-single",
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": "Patient/pat-single"},
        "period": {"start": "2026-01-05T10:00:00+01:00", "end": "2026-01-05T10:20:00+01:00"},
        "serviceProvider": {"reference": f"Organization?identifier={syn}|org-single"},
    }
    with fresh_database(pg_url) as db:
        engine = make_engine(db)
        token = create_token(engine, SOURCE)
        env = gateway_env(broker, db, topic_prefix)
        with run_gateway(env, tmp_path / "gateway.log") as gw, gw.client(token) as client:
            # Conditional create with the If-None-Exist header: the second is the first.
            header = {**FHIR, "If-None-Exist": f"identifier={syn}|org-single"}
            first = client.post("/fhir/Organization", content=json.dumps(org), headers=header)
            assert first.status_code == 201, first.text
            again = {**org, "id": "org-single-copy"}
            second = client.post("/fhir/Organization", content=json.dumps(again), headers=header)
            assert second.status_code == 200
            assert second.headers["Location"] == "/fhir/Organization/org-single"

            created = client.post("/fhir/Encounter", content=json.dumps(encounter), headers=FHIR)
            assert created.status_code == 201, created.text
            assert created.json()["serviceProvider"]["reference"] == "Organization/org-single"

            lost = {**encounter, "id": "enc-lost"}
            lost["serviceProvider"] = {"reference": f"Organization?identifier={syn}|nowhere"}
            refused = client.post("/fhir/Encounter", content=json.dumps(lost), headers=FHIR)
            assert refused.status_code == 422
            assert refused.json()["issue"][0]["expression"] == [
                "Encounter.serviceProvider.reference"
            ]
            lines = "\n".join(json.dumps(r) for r in (encounter, lost)).encode()
            answer = client.post(
                "/fhir/$import",
                content=lines,
                headers={"Content-Type": "application/fhir+ndjson"},
            )
            assert statuses(answer.json()) == ["200 OK", "422 Unprocessable Entity"]
        published = [
            json.loads(r.value)
            for r in read_topic(broker, topics.raw)
            if r.key == b"Organization/org-single-copy" or r.key == b"pat-single"
        ]
        # Nothing of the second Organization was published; the Encounter once, resolved.
        assert [p["id"] for p in published] == ["enc-single"]
        engine.dispose()
