"""A small synthetic territory as FHIR R4 resources, for the stream benchmark and tests.

Two hospitals (Organization + site Location), wards per service with beds, and patients who go
through the ED, are admitted (a first Encounter version in progress, a second one finished),
are referred by a GP or seen in the community after discharge. Everything is synthetic and
deterministic for a seed; resources come back sorted by `meta.lastUpdated`, like a live feed.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

SERVICES = (("cardio", "Cardiologie"), ("pneumo", "Pneumologie"), ("chir", "Chirurgie"))
SERVICE_SYSTEM = "https://parcours.example/fhir/CodeSystem/service"
PHYSICAL_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"
START = datetime(2026, 1, 5, tzinfo=UTC)


def _iso(t: datetime) -> str:
    return t.isoformat()


def _location(
    lid: str, name: str, kind: str, part_of: str | None, service: tuple[str, str] | None = None
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Location",
        "id": lid,
        "meta": {"versionId": "1", "lastUpdated": _iso(START - timedelta(days=1))},
        "status": "active",
        "name": name,
        "physicalType": {"coding": [{"system": PHYSICAL_TYPE, "code": kind}]},
    }
    if part_of:
        res["partOf"] = {"reference": f"Location/{part_of}"}
    if service:
        res["type"] = [
            {"coding": [{"system": SERVICE_SYSTEM, "code": service[0], "display": service[1]}]}
        ]
    return res


def territory(
    prefix: str, patients: int, seed: int = 7, days: float = 20.0, beds_per_ward: int = 30
) -> list[dict[str, Any]]:
    """Locations and patient resources of a synthetic territory, in event-time order."""
    rng = random.Random(seed)
    out: list[tuple[datetime, dict[str, Any]]] = []
    hospitals = []
    for h in (1, 2):
        org = f"{prefix}org-{h}"
        site = f"{prefix}site-{h}"
        out.append(
            (
                START - timedelta(days=2),
                {
                    "resourceType": "Organization",
                    "id": org,
                    "meta": {"versionId": "1"},
                    "name": f"Hôpital {h}",
                },
            )
        )
        site_res = _location(site, f"Site {h}", "si", None)
        site_res["managingOrganization"] = {"reference": f"Organization/{org}"}
        out.append((START - timedelta(days=1), site_res))
        ed_ward = f"{prefix}w-{h}-urgences"
        out.append(
            (
                START - timedelta(days=1),
                _location(ed_ward, f"Urgences {h}", "wa", site, ("urgences", "Urgences")),
            )
        )
        wards = []
        for code, display in SERVICES:
            ward = f"{prefix}w-{h}-{code}"
            out.append(
                (
                    START - timedelta(days=1),
                    _location(ward, f"{display} {h}", "wa", site, (code, display)),
                )
            )
            beds = [f"{ward}-b{i:02d}" for i in range(beds_per_ward)]
            for bed in beds:
                out.append((START - timedelta(days=1), _location(bed, bed, "bd", ward)))
            wards.append((ward, beds))
        hospitals.append((org, ed_ward, wards))

    for n in range(patients):
        pid = f"{prefix}p{n:06d}"
        org, ed_ward, wards = rng.choice(hospitals)
        arrive = START + timedelta(seconds=rng.uniform(0, days * 86400))
        subject = {"reference": f"Patient/{pid}"}
        if rng.random() < 0.3:
            sent = arrive - timedelta(days=rng.uniform(1, 10))
            out.append(
                (
                    sent,
                    {
                        "resourceType": "ServiceRequest",
                        "id": f"{pid}-sr",
                        "meta": {"versionId": "1", "lastUpdated": _iso(sent)},
                        "status": "active",
                        "intent": "order",
                        "subject": subject,
                        "requester": {"reference": f"Practitioner/{prefix}gp-{n % 50}"},
                        "performer": [{"reference": f"Organization/{org}"}],
                        "authoredOn": _iso(sent),
                    },
                )
            )
        leave_ed = arrive + timedelta(hours=rng.uniform(1, 6))
        out.append(
            (
                leave_ed,
                {
                    "resourceType": "Encounter",
                    "id": f"{pid}-ed",
                    "meta": {"versionId": "1", "lastUpdated": _iso(leave_ed)},
                    "status": "finished",
                    "class": {"code": "EMER"},
                    "subject": subject,
                    "serviceProvider": {"reference": f"Organization/{org}"},
                    "period": {"start": _iso(arrive), "end": _iso(leave_ed)},
                    "location": [
                        {
                            "location": {"reference": f"Location/{ed_ward}"},
                            "status": "completed",
                            "physicalType": {"coding": [{"code": "wa"}]},
                            "period": {"start": _iso(arrive), "end": _iso(leave_ed)},
                        }
                    ],
                },
            )
        )
        if rng.random() < 0.6:
            admit = leave_ed
            discharge = admit + timedelta(hours=rng.uniform(20, 120))
            moves = [admit]
            if rng.random() < 0.3:
                moves.append(admit + (discharge - admit) * rng.uniform(0.2, 0.8))
            entries = []
            for i, at in enumerate(moves):
                ward, beds = rng.choice(wards)
                until = moves[i + 1] if i + 1 < len(moves) else None
                for ref, kind in ((ward, "wa"), (rng.choice(beds), "bd")):
                    entry: dict[str, Any] = {
                        "location": {"reference": f"Location/{ref}"},
                        "status": "active" if until is None else "completed",
                        "physicalType": {"coding": [{"code": kind}]},
                        "period": {"start": _iso(at)},
                    }
                    if until is not None:
                        entry["period"]["end"] = _iso(until)
                    entries.append(entry)
            stay: dict[str, Any] = {
                "resourceType": "Encounter",
                "id": f"{pid}-stay",
                "class": {"code": "IMP"},
                "subject": subject,
                "serviceProvider": {"reference": f"Organization/{org}"},
                "partOf": {"reference": f"Encounter/{pid}-ed"},
                "hospitalization": {"admitSource": {"coding": [{"code": "emd"}]}},
            }
            first = {
                **stay,
                "meta": {"versionId": "1", "lastUpdated": _iso(admit)},
                "status": "in-progress",
                "period": {"start": _iso(admit)},
                "location": entries[:2],
            }
            out.append((admit, first))
            done_entries = [dict(e) for e in entries]
            for e in done_entries[-2:]:
                e["status"] = "completed"
                e["period"] = {**e["period"], "end": _iso(discharge)}
            last = {
                **stay,
                "meta": {"versionId": "2", "lastUpdated": _iso(discharge)},
                "status": "finished",
                "period": {"start": _iso(admit), "end": _iso(discharge)},
                "location": done_entries,
                "hospitalization": {
                    **stay["hospitalization"],
                    "dischargeDisposition": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition",
                                "code": "home",
                            }
                        ]
                    },
                },
            }
            out.append((discharge, last))
            if rng.random() < 0.7:
                seen = discharge + timedelta(days=rng.uniform(2, 12))
                out.append(
                    (
                        seen,
                        {
                            "resourceType": "Encounter",
                            "id": f"{pid}-gp",
                            "meta": {"versionId": "1", "lastUpdated": _iso(seen)},
                            "status": "finished",
                            "class": {"code": "AMB"},
                            "subject": subject,
                            "period": {
                                "start": _iso(seen),
                                "end": _iso(seen + timedelta(minutes=20)),
                            },
                        },
                    )
                )
    out.sort(key=lambda x: x[0])
    return [r for _, r in out]


def expected_counts(resources: list[dict[str, Any]]) -> dict[str, int]:
    """What the SQL tables must hold once a territory has gone through the worker."""
    enc = [r for r in resources if r["resourceType"] == "Encounter"]
    stays = {r["id"] for r in enc if r["class"]["code"] == "IMP"}
    return {
        "stays": len(stays),
        "discharged": len(
            {r["id"] for r in enc if r["class"]["code"] == "IMP" and r["status"] == "finished"}
        ),
        "ed_visits": sum(1 for r in enc if r["class"]["code"] == "EMER"),
        "community_visits": sum(1 for r in enc if r["class"]["code"] == "AMB"),
        "referrals": sum(1 for r in resources if r["resourceType"] == "ServiceRequest"),
        "locations": sum(1 for r in resources if r["resourceType"] == "Location"),
        "patients": len({r["subject"]["reference"] for r in enc}),
    }
