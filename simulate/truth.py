"""Ground truth of a simulated run, for tests that compare what Parcours derived with reality.

- `occupancy_hourly.csv`: per ward and hour (UTC, `[hour, hour + 1h)`): `occupancy` = patients
  in the ward at the top of the hour (a move counts from its start, inclusive, to its end,
  exclusive; ED visits count in the ED ward), `arrivals` and `departures` = moves that began or
  ended within the hour, and the ward's `capacity` (active beds).
- `patients.ndjson`: one line per patient seen in the run, with their pathway facts.
- `summary.json`: the run's parameters and counters.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from simulate.model import Simulation, StayRec


def _epoch(at: datetime) -> float:
    return at.timestamp()


def hour_grid(start: datetime, end: datetime) -> list[datetime]:
    """The UTC hours h with start <= h < end (start rounded up to the hour)."""
    first = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if first < start:
        first += timedelta(hours=1)
    hours = []
    while first < end:
        hours.append(first)
        first += timedelta(hours=1)
    return hours


def occupancy_rows(sim: Simulation, end: datetime | None = None) -> list[dict[str, Any]]:
    """Hourly occupancy per ward over [sim.start, end) (default: the run's end)."""
    end = end or sim.end
    if end is None:
        raise ValueError("an endless run needs an explicit end")
    hours = hour_grid(sim.start, end)
    h = np.array([_epoch(x) for x in hours])
    starts: dict[str, list[float]] = {w.id: [] for w in sim.territory.wards}
    ends: dict[str, list[float]] = {w.id: [] for w in sim.territory.wards}
    for stay in sim.stays.values():
        for move in stay.moves:
            starts[move.ward].append(_epoch(move.start))
            ends[move.ward].append(_epoch(move.end) if move.end else float("inf"))
    rows: list[dict[str, Any]] = []
    for ward in sim.territory.wards:
        s = np.sort(np.array(starts[ward.id]))
        e = np.sort(np.array(ends[ward.id]))
        occ = np.searchsorted(s, h, side="right") - np.searchsorted(e, h, side="right")
        arr = np.searchsorted(s, h + 3600, side="left") - np.searchsorted(s, h, side="left")
        dep = np.searchsorted(e, h + 3600, side="left") - np.searchsorted(e, h, side="left")
        for i, hour in enumerate(hours):
            rows.append(
                {
                    "hour": hour.isoformat(),
                    "ward_id": ward.id,
                    "establishment_id": ward.establishment,
                    "service": ward.service,
                    "capacity": ward.beds,
                    "occupancy": int(occ[i]),
                    "arrivals": int(arr[i]),
                    "departures": int(dep[i]),
                }
            )
    return rows


def _stay_facts(stay: StayRec, sim: Simulation) -> dict[str, Any]:
    return {
        "id": stay.id,
        "class": stay.cls,
        "establishment": stay.establishment,
        "start": stay.start.isoformat(),
        "end": stay.end.isoformat() if stay.end else None,
        "status": stay.status,
        "admit_source": stay.admit_source,
        "disposition": stay.disposition,
        "part_of": stay.part_of,
        "based_on": stay.based_on,
        "readmission_of": stay.readmission_of,
        "moves": [
            {
                "ward": m.ward,
                "bed": m.bed,
                "service": sim.territory.ward(m.ward).service,
                "start": m.start.isoformat(),
                "end": m.end.isoformat() if m.end else None,
            }
            for m in stay.moves
        ],
    }


def patient_facts(sim: Simulation) -> list[dict[str, Any]]:
    """Pathway facts per patient, for every patient whose data was emitted."""
    facts: dict[str, dict[str, Any]] = {}
    for pid in sorted(sim.announced):
        p = sim.patients[pid]
        facts[pid] = {
            "patient_id": pid,
            "ins": p.ins,
            "gp": p.gp or None,
            "deceased_at": p.deceased_at.isoformat() if p.deceased_at else None,
            "ed_visits": [],
            "stays": [],
            "referrals": [],
            "appointments": [],
            "visits": [],
            "home_care": [],
        }
    for stay in sim.stays.values():
        if stay.patient in facts:
            kind = "ed_visits" if stay.cls == "EMER" else "stays"
            facts[stay.patient][kind].append(_stay_facts(stay, sim))
    for ref in sim.referrals.values():
        if ref.patient in facts:
            facts[ref.patient]["referrals"].append(
                {
                    "id": ref.id,
                    "gp": ref.gp,
                    "establishment": ref.establishment,
                    "service": ref.service,
                    "authored": ref.authored.isoformat(),
                    "status": ref.status,
                }
            )
    for appt in sim.appointments.values():
        if appt.patient in facts:
            facts[appt.patient]["appointments"].append(
                {
                    "id": appt.id,
                    "purpose": appt.purpose,
                    "start": appt.start.isoformat(),
                    "status": appt.status,
                    "after_stay": appt.after_stay,
                    "based_on": appt.based_on,
                }
            )
    for visit in sim.visits.values():
        if visit.patient in facts:
            facts[visit.patient]["visits"].append(
                {
                    "id": visit.id,
                    "gp": visit.gp,
                    "start": visit.start.isoformat(),
                    "reason": visit.reason,
                    "appointment": visit.appointment,
                }
            )
    for hc in sim.homecare.values():
        if hc.patient in facts:
            facts[hc.patient]["home_care"].append(
                {
                    "id": hc.id,
                    "provider": hc.provider,
                    "start": hc.start.isoformat(),
                    "end": hc.end.isoformat() if hc.end else None,
                    "after_stay": hc.after_stay,
                }
            )
    return list(facts.values())


def write_truth(
    sim: Simulation, out_dir: Path, end: datetime | None = None, extra: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write the ground truth files of `sim` into `out_dir`; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "occupancy": out_dir / "occupancy_hourly.csv",
        "patients": out_dir / "patients.ndjson",
        "summary": out_dir / "summary.json",
    }
    rows = occupancy_rows(sim, end)
    with open(paths["occupancy"], "w", newline="", encoding="utf-8") as fh:
        fields = [
            "hour",
            "ward_id",
            "establishment_id",
            "service",
            "capacity",
            "occupancy",
            "arrivals",
            "departures",
        ]
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with open(paths["patients"], "w", encoding="utf-8") as fh:
        for fact in patient_facts(sim):
            fh.write(json.dumps(fact, ensure_ascii=False) + "\n")
    last = end or sim.end
    summary = {
        "territory": sim.territory.name,
        "seed": sim.seed,
        "start": sim.start.isoformat(),
        "end": last.isoformat() if last else None,
        "counters": asdict(sim.counters),
        **(extra or {}),
    }
    paths["summary"].write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return paths


def pathway_stats(sim: Simulation, end: datetime | None = None) -> dict[str, float]:
    """Rates over the emitted window [start, end), measured on what actually happened.

    - `ed_admission_ratio`: ED visits that began and ended in the window and led to an
      inpatient stay;
    - `readmission_rate`: live discharges in the window followed by a new inpatient stay of the
      same patient within the readmission window (only discharges whose window fits in the run);
    - `followup_missing_share`: follow-up appointments due in the window that were missed.
    """
    end = end or sim.end
    if end is None:
        raise ValueError("an endless run needs an explicit end")
    start = sim.start
    admitted_from = {s.part_of for s in sim.stays.values() if s.cls == "IMP" and s.part_of}
    ed = [
        s
        for s in sim.stays.values()
        if s.cls == "EMER" and start <= s.start < end and s.end is not None and s.end < end
    ]
    ed_ratio = sum(1 for s in ed if s.id in admitted_from) / len(ed) if ed else float("nan")
    window = timedelta(days=sim.territory.flows.readmission_window_days)
    by_patient: dict[str, list[datetime]] = {}
    for s in sim.stays.values():
        if s.cls == "IMP":
            by_patient.setdefault(s.patient, []).append(s.start)
    discharges = [
        s
        for s in sim.stays.values()
        if s.cls == "IMP"
        and s.end is not None
        and s.disposition != "exp"
        and start <= s.end < end - window
    ]
    readmitted = sum(
        1
        for s in discharges
        if any(s.end is not None and s.end <= t < s.end + window for t in by_patient[s.patient])
    )
    due = [
        a
        for a in sim.appointments.values()
        if a.purpose == "followup"
        and start <= a.start < end
        and a.status in ("fulfilled", "noshow")
    ]
    missed = sum(1 for a in due if a.status == "noshow")
    return {
        "ed_visits": float(len(ed)),
        "ed_admission_ratio": ed_ratio,
        "discharges_with_full_window": float(len(discharges)),
        "readmission_rate": readmitted / len(discharges) if discharges else float("nan"),
        "followups_due": float(len(due)),
        "followup_missing_share": missed / len(due) if due else float("nan"),
    }
