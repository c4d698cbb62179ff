"""Delivery with the defects of real feeds: duplicates, out-of-order and late delivery, missing
discharge times, invalid resources. Pure and seeded.

The truth is never touched: a duplicate is an identical copy, a late or out-of-order resource is
the same resource delivered later, a missing discharge time keeps `meta.lastUpdated` (the true
discharge time), and an invalid resource is an extra copy under its own id, which a gateway must
reject.
"""

from __future__ import annotations

import copy
import heapq
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from simulate.territory import Imperfections

TIME_FIELDS = ("period", "authoredOn", "start", "birthDate", "created")


@dataclass(frozen=True)
class Delivery:
    """A resource delivered at simulated time `at`; `tag` says which defect, if any, it carries."""

    at: datetime
    resource: dict[str, Any]
    tag: str = "ok"

    @property
    def valid(self) -> bool:
        """False for the deliberately invalid resources."""
        return self.tag != "invalid"


def strip_discharge_time(resource: dict[str, Any]) -> dict[str, Any]:
    """A finished Encounter without its end times, as some ADT feeds send it."""
    res = copy.deepcopy(resource)
    res.get("period", {}).pop("end", None)
    if res.get("location"):
        res["location"][-1].get("period", {}).pop("end", None)
    return res


def corrupt(resource: dict[str, Any], how: int) -> dict[str, Any]:
    """An invalid copy of `resource` under a new id: a required element dropped, an impossible
    date, or an element FHIR R4 does not have."""
    res = copy.deepcopy(resource)
    res["id"] = f"{res['id']}-err"
    res.get("meta", {})["versionId"] = "1"
    kind = how % 3
    if kind == 0 and "status" in res and res["resourceType"] != "Patient":
        del res["status"]
    elif kind == 1:
        if "period" in res:
            res["period"]["start"] = "2026-02-30T25:61:00+01:00"
        elif "birthDate" in res:
            res["birthDate"] = "1950-13-45"
        else:
            for name in TIME_FIELDS:
                if name in res:
                    res[name] = "2026-02-30T25:61:00+01:00"
                    break
            else:
                res["colour"] = "blue"
    else:
        res["diagnosisText"] = "not an R4 element"
    return res


def is_discharge(resource: dict[str, Any]) -> bool:
    """A finished inpatient Encounter carrying its discharge time."""
    return (
        resource.get("resourceType") == "Encounter"
        and resource.get("status") == "finished"
        and (resource.get("class") or {}).get("code") == "IMP"
        and "end" in (resource.get("period") or {})
    )


class Deliverer:
    """Applies the configured defects to a stream of (sent_at, resource), in order of delivery."""

    def __init__(self, rates: Imperfections, seed: int) -> None:
        self.rates = rates
        self.rng = np.random.default_rng([seed, 3])
        self.counts: Counter[str] = Counter()
        self._heap: list[tuple[datetime, int, Delivery]] = []
        self._seq = 0

    def _push(self, delivery: Delivery) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (delivery.at, self._seq, delivery))
        self.counts[delivery.tag if delivery.tag in ("duplicate", "invalid") else "resources"] += 1

    def _due(self, until: datetime | None) -> Iterator[Delivery]:
        while self._heap and (until is None or self._heap[0][0] <= until):
            yield heapq.heappop(self._heap)[2]

    def run(self, items: Iterable[tuple[datetime, dict[str, Any]]]) -> Iterator[Delivery]:
        """Deliveries, ordered by delivery time; the clean items keep their relative order."""
        r = self.rates
        for sent_at, resource in items:
            yield from self._due(sent_at)
            u = self.rng.random(6)
            res, tag = resource, "ok"
            if u[0] < r.missing_discharge_rate and is_discharge(resource):
                res, tag = strip_discharge_time(resource), "missing_discharge"
                self.counts[tag] += 1
            delay = timedelta(0)
            if u[1] < r.late_rate:
                lo, hi = r.late_hours
                delay, tag = timedelta(hours=lo + (hi - lo) * float(u[5])), "late"
                self.counts[tag] += 1
            elif u[2] < r.out_of_order_rate:
                lo, hi = r.out_of_order_minutes
                delay, tag = timedelta(minutes=lo + (hi - lo) * float(u[5])), "out_of_order"
                self.counts[tag] += 1
            self._push(Delivery(sent_at + delay, res, tag))
            if u[3] < r.duplicate_rate:
                again = delay + timedelta(minutes=30 * float(u[5]))
                self._push(Delivery(sent_at + again, copy.deepcopy(res), "duplicate"))
            if u[4] < r.invalid_rate:
                self._push(Delivery(sent_at, corrupt(resource, self._seq), "invalid"))
        yield from self._due(None)
