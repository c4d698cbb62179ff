"""`simulate.run.feed`: a clean run in memory, keyed like the Kafka sink, with its expected counts;
and the compact territory it is mostly run on."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from simulate.fhir import message_key
from simulate.run import feed
from simulate.territory import compact_territory

START = datetime(2026, 1, 5, tzinfo=UTC)


def counts_from_resources(resources: list[dict[str, Any]]) -> dict[str, int]:
    """The expected counts, read again from the FHIR resources themselves."""
    enc = [r for r in resources if r["resourceType"] == "Encounter"]
    inpatient = [r for r in enc if r["class"]["code"] == "IMP"]
    return {
        "stays": len({r["id"] for r in inpatient}),
        "discharged": len({r["id"] for r in inpatient if r["period"].get("end")}),
        "ed_visits": len({r["id"] for r in enc if r["class"]["code"] == "EMER"}),
        "community_visits": len({r["id"] for r in enc if r["class"]["code"] == "AMB"}),
        "referrals": len({r["id"] for r in resources if r["resourceType"] == "ServiceRequest"}),
        "locations": sum(1 for r in resources if r["resourceType"] == "Location"),
        "patients": len({r["id"] for r in resources if r["resourceType"] == "Patient"}),
    }


def test_a_feed_is_deterministic_keyed_like_kafka_and_counts_what_it_sent() -> None:
    territory = compact_territory("t1.")
    run = feed(territory, 4, START, 3, id_prefix="t1.")
    again = feed(compact_territory("t1."), 4, START, 3, id_prefix="t1.")
    assert run.messages == again.messages
    assert run.expected == again.expected
    assert feed(territory, 5, START, 3, id_prefix="t1.").messages != run.messages

    assert all(key == message_key(r) for key, r in run.messages)
    assert run.resources == [r for _, r in run.messages]
    assert run.expected == counts_from_resources(run.resources)
    assert all(n > 0 for n in run.expected.values()), run.expected
    assert run.expected["discharged"] < run.expected["stays"]
    # Clean: every version of every resource is sent once.
    versions = Counter((r["resourceType"], r["id"], r["meta"]["versionId"]) for r in run.resources)
    assert max(versions.values()) == 1
    # References first, then the traffic in the order it happened.
    kinds = [r["resourceType"] for r in run.resources]
    first_patient = kinds.index("Patient")
    assert set(kinds[:first_patient]) == {"Organization", "Location", "Practitioner"}
    assert not {"Organization", "Location"} & set(kinds[first_patient:])
    assert run.simulation.end == datetime(2026, 1, 8, tzinfo=UTC)


def test_the_compact_territory_carries_the_prefix_and_goes_over_capacity() -> None:
    run = feed(compact_territory("t2."), 1, START, 2, id_prefix="t2.")
    assert run.simulation.counters.over_capacity_placements > 0
    # The GPs and home-nursing services are the community's, shared by every territory.
    ids = [
        r["id"]
        for r in run.resources
        if r["resourceType"] not in ("Practitioner",) and not r["id"].startswith("ssiad")
    ]
    assert all(i.startswith("t2.") for i in ids), [i for i in ids if not i.startswith("t2.")][:5]
    patients = {key for key, _ in run.messages if "/" not in key}
    assert patients and all(p.startswith("t2.") for p in patients)
