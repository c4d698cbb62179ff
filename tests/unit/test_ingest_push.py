"""Pure parts of `parcours ingest push` and of the gateway's answers."""

from __future__ import annotations

import json
from pathlib import Path

from ingest.bulk import PushRequest, Summary, count_response, plan_file
from ingest.entries import prepare_resource
from ingest.outcome import Issue, Rejection, operation_outcome, outcome_reason, status_line
from ingest.responses import entry_response, location, response_bundle
from ingest.service import EntryResult


def test_plan_file_splits_ndjson_below_the_size_limit(tmp_path: Path) -> None:
    lines = [json.dumps({"resourceType": "Patient", "id": f"p{i}"}) for i in range(10)]
    path = tmp_path / "f.ndjson"
    path.write_text("\n".join(lines) + "\n\n")
    requests = list(plan_file(path, max_body_bytes=len(lines[0]) * 3 + 3))
    assert [r.count for r in requests] == [3, 3, 3, 1]
    assert all(r.kind == "ndjson" for r in requests)
    assert b"".join(r.body for r in requests).count(b"\n") == 10


def test_plan_file_bundle_and_single_resource(tmp_path: Path) -> None:
    bundle = tmp_path / "b.json"
    bundle.write_text(json.dumps({"resourceType": "Bundle", "type": "batch", "entry": [{}, {}]}))
    single = tmp_path / "p.json"
    single.write_text(json.dumps({"resourceType": "Patient", "id": "p"}))
    (b,) = plan_file(bundle, 10_000)
    (s,) = plan_file(single, 10_000)
    assert (b.kind, b.count) == ("bundle", 2)
    assert (s.kind, s.type_name) == ("resource", "Patient")


def test_summary_counts_entries_and_reasons() -> None:
    rejected = Rejection(422, "invalid-code", [Issue("code-invalid", "bad", ("Encounter.status",))])
    answer = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [
            {"response": {"status": "201 Created"}},
            {"response": {"status": "200 OK"}},
            {"response": {"status": "422 Unprocessable Entity", "outcome": rejected.outcome()}},
        ],
    }
    summary = Summary()
    req = PushRequest(Path("x"), "bundle", b"", 3)
    count_response(req, 200, answer, summary)
    too_large = Rejection(413, "too-large", [Issue("too-costly", "big", ("http.Content-Length",))])
    count_response(req, 413, too_large.outcome(), summary)
    assert (summary.accepted, summary.duplicates) == (1, 1)
    assert summary.rejected == {"invalid-code": 1, "too-large": 3}
    assert summary.lines()[:3] == ["accepted: 1", "duplicates: 1", "rejected: 4"]


def test_reason_codes_travel_in_the_outcome() -> None:
    outcome = operation_outcome([Issue("value", "x", ("Patient.birthDate",))], "invalid-resource")
    assert outcome_reason(outcome) == "invalid-resource"
    assert outcome_reason({"resourceType": "OperationOutcome", "issue": []}) is None
    assert status_line(422) == "422 Unprocessable Entity"


def test_response_entries_give_versioned_locations() -> None:
    versioned = prepare_resource(
        {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "7"}}, "Patient"
    )
    hashed = prepare_resource({"resourceType": "Patient", "id": "p2"}, "Patient")
    assert location(versioned) == "Patient/p1/_history/7"
    assert location(hashed) == "Patient/p2"
    assert entry_response(EntryResult(versioned, 201)) == {
        "response": {
            "status": "201 Created",
            "location": "Patient/p1/_history/7",
            "etag": 'W/"7"',
        }
    }
    bundle = response_bundle("transaction", [EntryResult(hashed, 200)])
    assert bundle["type"] == "transaction-response"
    assert bundle["entry"][0]["response"]["status"] == "200 OK"


class _Cluster:
    """The two ClusterMetadata methods a partitioner reads, for 6 partitions."""

    def topics(self) -> set[str]:
        return {"raw"}

    def partitions_for_topic(self, _topic: str) -> set[int]:
        return set(range(6))

    def available_partitions_for_topic(self, _topic: str) -> set[int]:
        return set(range(6))


def test_cached_partitioner_matches_kafkas_default() -> None:
    from kafka.partitioner.default import DefaultPartitioner

    from ingest.publish import CachedKeyPartitioner

    cached, default, cluster = CachedKeyPartitioner(), DefaultPartitioner(), _Cluster()
    for i in range(300):
        key = f"patient-{i}".encode()
        for _ in range(2):  # the second call comes from the cache
            assert cached.partition("raw", None, key, None, b"", cluster) == default.partition(
                "raw", None, key, None, b"", cluster
            )


def test_a_synthea_folder_is_pushed_information_first(tmp_path: Path) -> None:
    from ingest.bulk import push_order

    for name in (
        "Aaron697_Brekke496_2fa15bc7.json",
        "practitionerInformation1714415605031.json",
        "hospitalInformation1714415605031.json",
        "Zoe_Last_1.json",
        "notes.txt",
    ):
        (tmp_path / name).write_text("{}")
    single = tmp_path.parent / f"{tmp_path.name}-extra.ndjson"
    single.write_text("{}\n")
    assert [p.name for p in push_order([single, tmp_path])] == [
        "hospitalInformation1714415605031.json",
        "practitionerInformation1714415605031.json",
        single.name,
        "Aaron697_Brekke496_2fa15bc7.json",
        "Zoe_Last_1.json",
    ]
    assert push_order([single]) == [single]


def _patient_bundle(btype: str, encounters: int) -> dict[str, object]:
    entries: list[dict[str, object]] = [
        {
            "fullUrl": "urn:uuid:p1",
            "resource": {"resourceType": "Patient", "name": [{"family": "Grand"}]},
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    for i in range(encounters):
        entries.append(
            {
                "fullUrl": f"urn:uuid:e{i}",
                "resource": {
                    "resourceType": "Encounter",
                    "id": f"e{i}",
                    "status": "finished",
                    "subject": {"reference": "urn:uuid:p1"},
                    "text": {"status": "generated", "div": "x" * 300},
                },
                "request": {"method": "POST", "url": "Encounter"},
            }
        )
    return {"resourceType": "Bundle", "type": btype, "entry": entries}


def test_a_bundle_over_the_limit_goes_in_parts_that_stand_alone(tmp_path: Path) -> None:
    big = tmp_path / "Grand_Patient.json"
    big.write_text(json.dumps(_patient_bundle("transaction", 40)))
    assert big.stat().st_size > 12_000
    parts = list(plan_file(big, 12_000))
    assert len(parts) >= 2 and all(p.parts and len(p.body) <= 12_000 for p in parts)
    bodies = [json.loads(p.body) for p in parts]
    assert {b["type"] for b in bodies} == {"transaction"}
    assert [p.count for p in parts] == [len(b["entry"]) for b in bodies]
    resources = [e["resource"] for b in bodies for e in b["entry"]]
    # Every entry, in order, the Patient first with the id its fullUrl gave it; the references
    # between parts are Type/id.
    assert [r.get("id") for r in resources] == ["p1", *[f"e{i}" for i in range(40)]]
    assert {r["subject"]["reference"] for r in resources[1:]} == {"Patient/p1"}
    assert all(e["request"]["method"] == "POST" for b in bodies for e in b["entry"])


def test_a_bundle_within_the_limit_or_of_another_type_goes_whole(tmp_path: Path) -> None:
    small = tmp_path / "small.json"
    small.write_bytes(json.dumps(_patient_bundle("transaction", 2)).encode())
    [whole] = plan_file(small, 12_000)
    assert (whole.body, whole.parts) == (small.read_bytes(), False)
    collection = tmp_path / "collection.json"
    collection.write_bytes(json.dumps(_patient_bundle("collection", 40)).encode())
    [whole] = plan_file(collection, 12_000)
    assert whole.body == collection.read_bytes()
