"""Drive one simulation into a sink: as fast as possible (backfill) or paced (real time × speed)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tqdm import tqdm

from simulate.fhir import FhirWriter, message_key
from simulate.imperfect import Deliverer, Delivery
from simulate.model import PatientRec, ReferralRec, Simulation, StayRec, VisitRec
from simulate.sinks import Sink
from simulate.territory import Territory
from simulate.truth import pathway_stats, write_truth

log = logging.getLogger(__name__)

# Ahead of the pace by less than this, a run does not sleep: a float clock can leave a remainder
# that no sleep would ever consume.
PACING_SLACK_S = 0.001


@dataclass
class RunSummary:
    """What a run produced."""

    seed: int
    start: datetime
    end: datetime
    resources: int = 0
    deliveries: dict[str, int] = field(default_factory=dict)
    sink: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    truth: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for JSON and the summary table."""
        return {
            "seed": self.seed,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "resources": self.resources,
            "deliveries": self.deliveries,
            "sink": self.sink,
            "counters": self.counters,
            # Rates need a full window (e.g. 30 days for readmissions); null when there is none.
            "rates": {k: None if math.isnan(v) else round(v, 4) for k, v in self.rates.items()},
            "elapsed_s": round(self.elapsed_s, 2),
            "resources_per_s": round(self.resources / self.elapsed_s) if self.elapsed_s else None,
            "truth": self.truth,
        }


@dataclass
class History:
    """The part of a run before `until`: sent as fast as possible to `sink`, or not at all when
    `skip` (it is already in the raw topic). `on_done(n)` is called once it is acknowledged;
    the live part waits until `go_live()` holds; `on_reached(t)` is called whenever everything
    delivered up to simulated time `t` was sent."""

    until: datetime
    sink: Sink
    skip: bool = False
    on_done: Callable[[int], None] = lambda _n: None
    on_reached: Callable[[datetime], None] = lambda _t: None
    go_live: Callable[[], bool] = lambda: True


def deliveries(sim: Simulation, deliverer: Deliverer) -> Iterator[Delivery]:
    """The places and people first (clean, at the start), then the simulated traffic."""
    writer = FhirWriter(sim.territory, sim.directory)
    for resource in writer.directory_resources(sim.start):
        yield Delivery(sim.start, resource)
    yield from deliverer.run((e.sent_at, writer.resource(e)) for e in sim.run())


@dataclass
class Feed:
    """A clean run in memory: every message (Kafka key, FHIR resource) in delivery order, and
    what the SQL tables hold once a worker has read them all (`expected`); the `simulation`
    holds the ground truth (`simulate.truth`)."""

    messages: list[tuple[str, dict[str, Any]]]
    expected: dict[str, int]
    simulation: Simulation

    @property
    def resources(self) -> list[dict[str, Any]]:
        """The resources alone, in delivery order."""
        return [resource for _, resource in self.messages]


def feed(
    territory: Territory,
    seed: int,
    start: datetime,
    days: float,
    *,
    id_prefix: str = "",
    warmup_days: int | None = None,
) -> Feed:
    """Simulate [start, start + days) without imperfections (no duplicate, nothing late, nothing
    invalid) and keep the messages, keyed like `KafkaSink` keys them, with the expected counts:
    inpatient `stays` (and those `discharged`), `ed_visits`, `community_visits`, `referrals`,
    `locations` and `patients`, taken from the simulated facts as they were when sent."""
    sim = Simulation(territory, seed, start, days, warmup_days=warmup_days, id_prefix=id_prefix)
    writer = FhirWriter(territory, sim.directory)
    directory = writer.directory_resources(sim.start)
    messages = [(message_key(r), r) for r in directory]
    stays: set[str] = set()
    discharged: set[str] = set()
    ed_visits: set[str] = set()
    seen: dict[str, set[str]] = {"visits": set(), "referrals": set(), "patients": set()}
    for emission in sim.run():
        rec = emission.record
        if isinstance(rec, StayRec):
            if rec.cls == "EMER":
                ed_visits.add(rec.id)
            else:
                stays.add(rec.id)
                if rec.end is not None:
                    discharged.add(rec.id)
        elif isinstance(rec, VisitRec):
            seen["visits"].add(rec.id)
        elif isinstance(rec, ReferralRec):
            seen["referrals"].add(rec.id)
        elif isinstance(rec, PatientRec):
            seen["patients"].add(rec.id)
        resource = writer.resource(emission)
        messages.append((message_key(resource), resource))
    expected = {
        "stays": len(stays),
        "discharged": len(discharged),
        "ed_visits": len(ed_visits),
        "community_visits": len(seen["visits"]),
        "referrals": len(seen["referrals"]),
        "locations": sum(1 for r in directory if r["resourceType"] == "Location"),
        "patients": len(seen["patients"]),
    }
    return Feed(messages, expected, sim)


def run_simulation(
    territory: Territory,
    seed: int,
    start: datetime,
    days: float | None,
    sink: Sink,
    *,
    speed: float | None = None,
    truth_dir: Path | None = None,
    warmup_days: int | None = None,
    id_prefix: str = "",
    progress: bool = False,
    stop: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    history: History | None = None,
) -> RunSummary:
    """Simulate [start, start + days) into `sink`; paced at `speed`× real time when given.

    With `history`, what is delivered before `history.until` is not paced and goes to
    `history.sink` (straight to the raw topic), or nowhere if it is already there
    (`history.skip`); the same simulation then goes on into `sink`, paced from `history.until`.
    `stop()` is polled between deliveries (Ctrl-C in real-time mode). The truth is written up to
    the simulated time reached.
    """
    sim = Simulation(territory, seed, start, days, warmup_days=warmup_days, id_prefix=id_prefix)
    deliverer = Deliverer(territory.imperfections, seed)
    wall0 = clock()
    sim_now = sim.start
    count = 0
    # Pacing starts where the history ends.
    live_from = sim.start if history is None else max(history.until, sim.start)
    in_history = history is not None and live_from > sim.start
    if days is not None:
        total_hours: int | None = int(days * 24)
    elif in_history:
        total_hours = int((live_from - sim.start).total_seconds() // 3600)
    else:
        total_hours = None
    desc = "history" if in_history else "simulate"
    bar = tqdm(total=total_hours, unit="sim h", disable=not progress, desc=desc, leave=False)
    shown = 0
    last_log = wall0
    try:
        for delivery in deliveries(sim, deliverer):
            if stop():
                break
            if delivery.at > sim_now:
                sim_now = delivery.at
            if in_history and history is not None:
                if delivery.at < live_from:
                    if not history.skip:
                        history.sink.send(delivery.resource, delivery.valid)
                        count += 1
                    hours = int((sim_now - sim.start).total_seconds() // 3600)
                    if hours > shown:
                        bar.update(hours - shown)
                        shown = hours
                    continue
                # The history is acknowledged before anything of the live part is sent.
                history.sink.close()
                bar.close()
                in_history = False
                history.on_done(count)
                while not history.go_live() and not stop():
                    sleep(0.5)
                if stop():
                    break
                wall0 = clock()
                bar = tqdm(total=None, unit="sim h", disable=not progress, desc="live", leave=False)
                shown = int((sim_now - sim.start).total_seconds() // 3600)
            # Late deliveries after the end of a finite run go out at once.
            paced = sim_now if sim.end is None else min(sim_now, sim.end)
            if speed:
                ahead = (paced - live_from).total_seconds() / speed - (clock() - wall0)
                if ahead > PACING_SLACK_S:
                    sink.flush()
                    if history is not None:
                        history.on_reached(paced)
                    while ahead > PACING_SLACK_S and not stop():
                        sleep(min(ahead, 0.5))
                        ahead = (paced - live_from).total_seconds() / speed - (clock() - wall0)
            sink.send(delivery.resource, delivery.valid)
            count += 1
            hours = int((sim_now - sim.start).total_seconds() // 3600)
            if hours > shown:
                bar.update(hours - shown)
                shown = hours
                if speed and not progress and clock() - last_log >= 60:
                    last_log = clock()
                    log.info("simulated %s: %d resources sent", sim_now.isoformat(), count)
    finally:
        bar.close()
        if in_history and history is not None:
            history.sink.close()
        sink.close()
        if history is not None and not in_history:
            history.on_reached(sim_now)
    end = sim.end if sim.end is not None and not stop() else sim_now
    end = max(end, sim.start + timedelta(hours=1))
    summary = RunSummary(
        seed=seed,
        start=sim.start,
        end=end,
        resources=count,
        deliveries=dict(deliverer.counts),
        sink=sink.summary(),
        counters=vars(sim.counters).copy(),
        rates=pathway_stats(sim, end),
        elapsed_s=clock() - wall0,
    )
    if truth_dir is not None:
        paths = write_truth(sim, truth_dir, end=end, extra={"run": summary.as_dict()})
        summary.truth = {k: str(v) for k, v in paths.items()}
    return summary
