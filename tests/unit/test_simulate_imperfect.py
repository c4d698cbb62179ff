"""Feed imperfections at their configured rates, and the gateway sink's HTTP behaviour."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulate import SimulationError
from simulate.imperfect import Deliverer, is_discharge
from simulate.sinks import GatewaySink, NdjsonSink
from simulate.territory import Imperfections, load_territory, territory_from_dict

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def items(n: int) -> list[tuple[datetime, dict[str, Any]]]:
    """n clean resources one minute apart; every fifth is a discharge."""
    out = []
    for i in range(n):
        at = T0 + timedelta(minutes=i)
        res: dict[str, Any] = {
            "resourceType": "Encounter",
            "id": f"e{i}",
            "meta": {"versionId": "1", "lastUpdated": at.isoformat()},
            "status": "finished" if i % 5 == 0 else "in-progress",
            "class": {"code": "IMP"},
            "subject": {"reference": f"Patient/p{i}"},
            "period": {"start": at.isoformat()},
            "location": [{"location": {"reference": "Location/b1"}, "period": {}}],
        }
        if i % 5 == 0:
            res["period"]["end"] = at.isoformat()
            res["location"][0]["period"]["end"] = at.isoformat()
        out.append((at, res))
    return out


RATES = Imperfections(
    duplicate_rate=0.05,
    out_of_order_rate=0.04,
    out_of_order_minutes=(5.0, 30.0),
    late_rate=0.02,
    late_hours=(2.0, 6.0),
    missing_discharge_rate=0.1,
    invalid_rate=0.01,
)


def test_defects_come_at_their_configured_rates() -> None:
    n = 20_000
    deliverer = Deliverer(RATES, 1)
    out = list(deliverer.run(items(n)))
    c = deliverer.counts
    assert c["resources"] == n
    assert abs(c["duplicate"] / n - 0.05) < 0.01
    assert abs(c["late"] / n - 0.02) < 0.005
    assert abs(c["out_of_order"] / n - 0.04 * 0.98) < 0.008
    assert abs(c["invalid"] / n - 0.01) < 0.004
    assert abs(c["missing_discharge"] / (n / 5) - 0.1) < 0.02
    assert len(out) == n + c["duplicate"] + c["invalid"]
    # Delivery times never decrease, yet event order is broken for the delayed ones.
    times = [d.at for d in out]
    assert times == sorted(times)
    positions = [int(d.resource["id"].removeprefix("e").removesuffix("-err")) for d in out]
    inversions = sum(1 for a, b in itertools.pairwise(positions) if b < a)
    assert inversions > 0.03 * n


def test_duplicates_are_identical_and_missing_discharges_keep_last_updated() -> None:
    out = list(Deliverer(RATES, 2).run(items(2000)))
    by_id: dict[str, list[dict[str, Any]]] = {}
    for d in out:
        by_id.setdefault(d.resource["id"], []).append(d.resource)
    dups = [v for v in by_id.values() if len(v) > 1]
    assert dups and all(all(x == v[0] for x in v) for v in dups)
    stripped = [d for d in out if d.tag == "missing_discharge"]
    assert stripped
    for d in stripped:
        r = d.resource
        assert r["status"] == "finished" and "end" not in r["period"]
        assert "end" not in r["location"][-1]["period"] and r["meta"]["lastUpdated"]
        assert not is_discharge(r)


def test_invalid_resources_have_their_own_ids() -> None:
    out = list(Deliverer(RATES, 3).run(items(5000)))
    invalid = [d for d in out if not d.valid]
    assert invalid and all(d.resource["id"].endswith("-err") for d in invalid)
    assert all(d.resource["id"].removesuffix("-err") != d.resource["id"] for d in invalid)


def test_same_seed_same_deliveries() -> None:
    a = [(d.at, d.tag, json.dumps(d.resource)) for d in Deliverer(RATES, 5).run(items(3000))]
    b = [(d.at, d.tag, json.dumps(d.resource)) for d in Deliverer(RATES, 5).run(items(3000))]
    assert a == b


def bundle_entries(request: httpx.Request) -> list[dict[str, Any]]:
    body = json.loads(request.content)
    assert body["resourceType"] == "Bundle" and body["type"] == "batch"
    return body["entry"]


def test_gateway_sink_posts_batches_with_token_and_retries_503() -> None:
    seen: list[httpx.Request] = []
    busy = {"left": 2}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if busy["left"]:
            busy["left"] -= 1
            return httpx.Response(503, headers={"Retry-After": "0"})
        entries = bundle_entries(request)
        statuses = [
            "400 Bad Request" if e["resource"]["id"] == "bad" else "201 Created" for e in entries
        ]
        return httpx.Response(
            200,
            json={
                "resourceType": "Bundle",
                "type": "batch-response",
                "entry": [{"response": {"status": s}} for s in statuses],
            },
        )

    sink = GatewaySink(
        "http://gw.test/", "tok-1", batch_size=3, transport=httpx.MockTransport(handler)
    )
    for i in range(5):
        sink.send({"resourceType": "Patient", "id": f"p{i}"}, valid=True)
    sink.send({"resourceType": "Patient", "id": "bad"}, valid=True)
    sink.close()
    assert all(r.url == "http://gw.test/fhir" for r in seen)
    assert all(r.headers["Authorization"] == "Bearer tok-1" for r in seen)
    assert all(r.headers["Content-Type"] == "application/fhir+json" for r in seen)
    entry = bundle_entries(seen[-1])[0]
    assert entry["request"] == {"method": "PUT", "url": f"Patient/{entry['resource']['id']}"}
    assert sink.summary() == {
        "bundles": 2,
        "sent": 6,
        "accepted": 5,
        "rejected": 1,
        "retries_503": 2,
    }


def test_gateway_sink_counts_a_rejected_bundle_and_sends_invalid_ones_alone() -> None:
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        entries = bundle_entries(request)
        sizes.append(len(entries))
        if any("-err" in e["resource"]["id"] for e in entries):
            return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": []})
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "batch-response"})

    sink = GatewaySink("http://gw.test", "t", batch_size=10, transport=httpx.MockTransport(handler))
    sink.send({"resourceType": "Patient", "id": "a"}, valid=True)
    sink.send({"resourceType": "Patient", "id": "a-err"}, valid=False)
    sink.send({"resourceType": "Patient", "id": "b"}, valid=True)
    sink.close()
    assert sizes == [1, 1, 1]
    assert sink.summary()["accepted"] == 2 and sink.summary()["rejected"] == 1


def test_gateway_sink_gives_up_when_the_gateway_stays_down() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": "0"})

    sink = GatewaySink("http://gw.test", "t", max_retries=3, transport=httpx.MockTransport(handler))
    sink.send({"resourceType": "Patient", "id": "a"}, valid=True)
    with pytest.raises(SimulationError):
        sink.close()


def test_ndjson_sink_writes_one_resource_per_line(tmp_path: Path) -> None:
    sink = NdjsonSink(tmp_path)
    sink.send({"resourceType": "Patient", "id": "é"}, valid=True)
    sink.send({"resourceType": "Patient", "id": "x-err", "colour": 1}, valid=False)
    sink.close()
    lines = (tmp_path / "fhir.ndjson").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["é", "x-err"]
    assert sink.summary() == {"written": 2, "invalid_written": 1}


def test_territory_files_yaml_and_toml_agree(tmp_path: Path) -> None:
    yaml_file = tmp_path / "t.yaml"
    yaml_file.write_text(
        "name: T\nestablishments:\n  - id: h\n    name: H\n    finess: '210000001'\n"
        "    ed_daily_arrivals: 10\n    wards:\n      - {service: urgences, beds: 5}\n"
        "      - {service: cardio, beds: 12}\nflows:\n  followup_missing_share: 0.3\n"
    )
    toml_file = tmp_path / "t.toml"
    toml_file.write_text(
        'name = "T"\n[[establishments]]\nid = "h"\nname = "H"\nfiness = "210000001"\n'
        'ed_daily_arrivals = 10\nwards = [{service = "urgences", beds = 5}, '
        '{service = "cardio", beds = 12}]\n[flows]\nfollowup_missing_share = 0.3\n'
    )
    a, b = load_territory(yaml_file), load_territory(toml_file)
    assert a == b
    assert [w.id for w in a.wards] == ["h-urgences", "h-cardio"]
    assert a.flows.followup_missing_share == 0.3
    assert a.flows.readmission_rate == 0.13  # defaults kept


def test_territory_rejects_unknown_keys_and_services() -> None:
    with pytest.raises(SimulationError, match="unknown FlowConfig keys"):
        territory_from_dict({"flows": {"readmision_rate": 0.1}})
    with pytest.raises(SimulationError, match="unknown service"):
        territory_from_dict(
            {
                "establishments": [
                    {"id": "h", "name": "H", "finess": "1", "wards": [{"service": "x", "beds": 1}]}
                ]
            }
        )


def test_territory_yaml_round_trips_with_every_default_written_out() -> None:
    import yaml

    from simulate.territory import default_territory, territory_yaml

    default = default_territory()
    text = territory_yaml(default)
    assert "followup_missing_share: 0.2" in text and "chu-dijon-rea" in text
    assert territory_from_dict(yaml.safe_load(text)) == default


def test_cli_needs_exactly_one_destination_and_prints_the_territory() -> None:
    from typer.testing import CliRunner

    from parcours.cli import app

    runner = CliRunner()
    printed = runner.invoke(app, ["simulate", "--print-territory"])
    assert printed.exit_code == 0 and printed.stdout.startswith("name: Dijon")
    both = runner.invoke(app, ["simulate", "--days", "1", "--kafka", "--out", "x"])
    assert both.exit_code == 2
    none = runner.invoke(app, ["simulate", "--days", "1"])
    assert none.exit_code == 2
    endless = runner.invoke(app, ["simulate", "--out", "x"])
    assert endless.exit_code == 2
