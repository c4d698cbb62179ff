"""The territory simulation: a pure, seeded discrete-event model in simulated time.

`Simulation.run()` yields `Emission`s (a new version of one resource-shaped fact) in event-time
order. It never reads the clock: the same territory, seed and start give the same stream.

Flows: ED arrivals (hourly and weekly seasonality, public holidays, optional winter surge) → ED
stay → discharge home or admission; community referrals (GP consultation + ServiceRequest) →
booked Appointment → scheduled admission; inpatient stays move between wards (ICU step-down) with
log-normal lengths of stay; discharge dispositions; home nursing (EpisodeOfCare); community
follow-up appointments, some missed; readmissions within 30 days.

A warm-up period runs before `start` so that wards are full on day one. Nothing is emitted during
the warm-up; at `start` the model emits an initial load (the current version of every stay in
progress, active home care and booked appointments), like an ADT feed's first synchronisation.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import holidays
import numpy as np

from simulate.territory import ED_SERVICE, ICU_SERVICES, Territory, Ward

FAMILY_NAMES = (
    "Martin", "Bernard", "Thomas", "Petit", "Robert", "Richard", "Durand", "Dubois", "Moreau",
    "Laurent", "Simon", "Michel", "Lefebvre", "Leroy", "Roux", "David", "Bertrand", "Morel",
    "Fournier", "Girard", "Bonnet", "Dupont", "Lambert", "Fontaine", "Rousseau", "Vincent",
    "Muller", "Lefevre", "Faure", "Andre", "Mercier", "Blanc", "Guerin", "Boyer", "Garnier",
    "Chevalier", "Francois", "Legrand", "Gauthier", "Garcia", "Perrin", "Robin", "Clement",
)  # fmt: skip
GIVEN_FEMALE = (
    "Marie", "Jeanne", "Camille", "Louise", "Chloé", "Léa", "Manon", "Inès", "Sarah", "Julie",
    "Nathalie", "Isabelle", "Sylvie", "Catherine", "Françoise", "Monique", "Colette", "Emma",
)  # fmt: skip
GIVEN_MALE = (
    "Jean", "Pierre", "Michel", "Louis", "Lucas", "Hugo", "Gabriel", "Arthur", "Thomas",
    "Nicolas", "Philippe", "Alain", "Bernard", "Patrick", "André", "Jacques", "Paul", "Léo",
)  # fmt: skip

ALIVE_DISPOSITIONS = ("home", "home_care", "rehab", "other")


# --- Facts (frozen snapshots; each emission carries one) ------------------------------------------


@dataclass(frozen=True)
class GpRec:
    """A community general practitioner."""

    id: str
    rpps: str
    family: str
    given: str
    gender: str


@dataclass(frozen=True)
class NursingRec:
    """A home-nursing service (Organization)."""

    id: str
    name: str
    finess: str


@dataclass(frozen=True)
class PatientRec:
    """A patient; `deceased_at` once they died."""

    id: str
    ins: str
    family: str
    given: str
    gender: str
    birth_date: date
    gp: str
    deceased_at: datetime | None = None


@dataclass(frozen=True)
class Move:
    """A stay in one ward (and bed; None for an extra bed over capacity)."""

    ward: str
    bed: str | None
    start: datetime
    end: datetime | None = None


@dataclass(frozen=True)
class StayRec:
    """An ED visit (`EMER`) or an inpatient stay (`IMP`): one Encounter."""

    id: str
    patient: str
    cls: str
    establishment: str
    start: datetime
    moves: tuple[Move, ...]
    status: str = "in-progress"
    end: datetime | None = None
    admit_source: str | None = None
    disposition: str | None = None
    part_of: str | None = None
    based_on: str | None = None
    readmission_of: str | None = None


@dataclass(frozen=True)
class ReferralRec:
    """A community referral (ServiceRequest) from a GP to a hospital service."""

    id: str
    patient: str
    gp: str
    establishment: str
    service: str
    authored: datetime
    status: str = "active"


@dataclass(frozen=True)
class AppointmentRec:
    """A scheduled admission (`admission`) or a community follow-up (`followup`)."""

    id: str
    patient: str
    purpose: str
    start: datetime
    created: datetime
    status: str = "booked"
    based_on: str | None = None
    practitioner: str | None = None
    establishment: str | None = None
    service: str | None = None
    after_stay: str | None = None


@dataclass(frozen=True)
class VisitRec:
    """A community consultation with a GP (AMB Encounter)."""

    id: str
    patient: str
    gp: str
    start: datetime
    end: datetime
    reason: str
    appointment: str | None = None


@dataclass(frozen=True)
class HomeCareRec:
    """Home nursing after discharge (EpisodeOfCare)."""

    id: str
    patient: str
    provider: str
    start: datetime
    after_stay: str
    status: str = "active"
    end: datetime | None = None


Record = PatientRec | StayRec | ReferralRec | AppointmentRec | VisitRec | HomeCareRec


@dataclass(frozen=True)
class Emission:
    """Version `version` of `record`, true at event time `at`; sent at `sent_at`.

    `sent_at` equals `at` except for the initial load at the start, which is sent at the start.
    """

    at: datetime
    version: int
    record: Record
    sent_at: datetime

    @property
    def key(self) -> tuple[str, str]:
        """(record kind, id)."""
        return type(self.record).__name__, self.record.id


@dataclass(frozen=True)
class Directory:
    """The community side of the territory, generated from the seed."""

    gps: tuple[GpRec, ...]
    nursing: tuple[NursingRec, ...]


def _luhn_digit(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return str((10 - total % 10) % 10)


def build_directory(territory: Territory, seed: int) -> Directory:
    """GPs (synthetic names, RPPS numbers) and home-nursing services, from the seed."""
    rng = np.random.default_rng([seed, 1])
    gps = []
    for n in range(1, territory.community.gps + 1):
        female = bool(rng.random() < 0.5)
        given = str(rng.choice(GIVEN_FEMALE if female else GIVEN_MALE))
        body = "10" + "".join(str(d) for d in rng.integers(0, 10, 8))
        gps.append(
            GpRec(
                id=f"gp-{n:04d}",
                rpps=body + _luhn_digit(body),
                family=str(rng.choice(FAMILY_NAMES)),
                given=given,
                gender="female" if female else "male",
            )
        )
    dep = territory.community.department
    nursing = [
        NursingRec(
            id=f"ssiad-{n:02d}",
            name=f"Soins infirmiers à domicile {territory.community.city} {n}",
            finess=f"{dep}0{n:06d}"[:9],
        )
        for n in range(1, territory.community.home_nursing + 1)
    ]
    return Directory(tuple(gps), tuple(nursing))


# --- The simulation -------------------------------------------------------------------------------


class _Event(NamedTuple):
    at: datetime
    seq: int
    kind: str
    data: dict[str, Any]


@dataclass
class Counters:
    """What happened, for summaries and tests."""

    ed_arrivals: int = 0
    ed_diverted_out: int = 0
    ed_admissions: int = 0
    admission_refused: int = 0
    referrals: int = 0
    scheduled_admissions: int = 0
    scheduled_cancelled: int = 0
    transfers: int = 0
    discharges: int = 0
    deaths: int = 0
    readmissions: int = 0
    followups_done: int = 0
    followups_missed: int = 0
    over_capacity_placements: int = 0


class Simulation:
    """One seeded run over [start, start + days) (forever when `days` is None)."""

    def __init__(
        self,
        territory: Territory,
        seed: int,
        start: datetime,
        days: float | None,
        warmup_days: int | None = None,
        id_prefix: str = "",
    ) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self.territory = territory
        self.seed = seed
        self.start = start.astimezone(UTC)
        self.end = None if days is None else self.start + timedelta(days=days)
        warmup = territory.warmup_days if warmup_days is None else warmup_days
        self.begin = self.start - timedelta(days=warmup)
        self.tz = ZoneInfo(territory.timezone)
        self.prefix = id_prefix
        self.rng = np.random.default_rng([seed, 2])
        self.directory = build_directory(territory, seed)
        self.holidays = holidays.country_holidays(territory.country)
        self.counters = Counters()
        self.patients: dict[str, PatientRec] = {}
        self.stays: dict[str, StayRec] = {}
        self.referrals: dict[str, ReferralRec] = {}
        self.appointments: dict[str, AppointmentRec] = {}
        self.visits: dict[str, VisitRec] = {}
        self.homecare: dict[str, HomeCareRec] = {}
        self._versions: dict[tuple[str, str], int] = {}
        self._ids: dict[str, int] = {}
        self._heap: list[_Event] = []
        self.now = self.begin - timedelta(days=366)
        self._seq = 0
        self._out: list[Emission] = []
        self.announced: set[str] = set()
        self._live = False
        self._free: dict[str, list[str]] = {}
        self._extra: dict[str, int] = {}
        for ward in territory.wards:
            beds = ward.bed_ids()
            heapq.heapify(beds)
            self._free[ward.id] = beds
            self._extra[ward.id] = 0
        self._sched_rate = self._scheduled_rates()
        self.ed_admit_p = self._ed_admission_probability()
        self._ed_fresh = 0
        self._ed_forced = 0
        self._profile_total = sum(territory.ed.hourly_profile)
        self._handlers: dict[str, Callable[[_Event], None]] = {
            "day": self._on_day,
            "ed_arrival": self._on_ed_arrival,
            "ed_depart": self._on_ed_depart,
            "referral": self._on_referral,
            "book": self._on_book,
            "scheduled_admit": self._on_scheduled_admit,
            "segment_end": self._on_segment_end,
            "followup": self._on_followup,
            "homecare_end": self._on_homecare_end,
            "direct_admit": self._on_direct_admit,
            "emit": self._on_emit,
        }

    # -- rates -------------------------------------------------------------------------------

    def _scheduled_rates(self) -> dict[str, float]:
        """Elective admissions per day per ward: what the target occupancy needs beyond the ED.

        Little's law: occupied beds = admissions/day × mean length of stay (days).
        """
        t = self.territory
        rates: dict[str, float] = {}
        for est in t.establishments:
            inpatient = [w for w in est.wards if not w.is_ed]
            weights = {w.id: t.services[w.service].ed_weight * w.beds for w in inpatient}
            total_w = sum(weights.values()) or 1.0
            ed_adm = est.ed_daily_arrivals * t.ed.admission_ratio
            for w in inpatient:
                svc = t.services[w.service]
                mean_los = svc.los_median_days * float(np.exp(svc.los_sigma**2 / 2))
                needed = svc.target_occupancy * w.beds / mean_los
                from_ed = ed_adm * weights[w.id] / total_w
                rates[w.id] = max(0.0, needed - from_ed) if svc.scheduled else 0.0
        return rates

    def _ed_admission_probability(self) -> float:
        """The admission probability of a fresh ED visit such that, readmissions through the ED
        (always admitted) included, the share of ED visits admitted is `ed.admission_ratio`."""
        t = self.territory
        fresh = sum(e.ed_daily_arrivals for e in t.establishments)
        if fresh <= 0:
            return t.ed.admission_ratio
        admissions = 0.0
        for ward in t.wards:
            if not ward.is_ed:
                svc = t.services[ward.service]
                mean_los = svc.los_median_days * float(np.exp(svc.los_sigma**2 / 2))
                admissions += svc.target_occupancy * ward.beds / mean_los
        back = admissions * t.flows.readmission_rate * t.flows.readmission_via_ed
        ratio = t.ed.admission_ratio
        return float(np.clip((ratio * (fresh + back) - back) / fresh, 0.05, 1.0))

    def _ed_probability(self) -> float:
        """The admission probability of a fresh ED visit, corrected with the readmissions seen so
        far so that all ED visits together are admitted at `ed.admission_ratio`."""
        if self._ed_fresh < 500:
            return self.ed_admit_p
        fresh, forced = self._ed_fresh, self._ed_forced
        ratio = self.territory.ed.admission_ratio
        return min(max((ratio * (fresh + forced) - forced) / fresh, 0.05), 1.0)

    def _local(self, at: datetime) -> datetime:
        return at.astimezone(self.tz)

    def _is_off_day(self, day: date) -> bool:
        return day.weekday() >= 5 or day in self.holidays

    def surge_active(self, at: datetime) -> bool:
        """True when the configured winter surge covers `at` (local calendar day)."""
        surge = self.territory.surge
        if not surge.enabled:
            return False
        local = self._local(at)
        md = (local.month, local.day)
        lo = tuple(int(x) for x in surge.start.split("-"))
        hi = tuple(int(x) for x in surge.end.split("-"))
        return lo <= md <= hi if lo <= hi else (md >= lo or md <= hi)

    def ed_rate(self, est_daily: float, at: datetime) -> float:
        """Expected ED arrivals in the hour starting at `at`."""
        ed = self.territory.ed
        local = self._local(at)
        profile = ed.hourly_profile[local.hour] / self._profile_total
        rate = est_daily * profile * ed.weekday_factors[local.weekday()]
        if local.date() in self.holidays:
            rate *= ed.holiday_factor
        if self.surge_active(at):
            rate *= self.territory.surge.ed_factor
        return rate

    # -- plumbing ----------------------------------------------------------------------------

    def _schedule(self, at: datetime, kind: str, **data: Any) -> None:
        # Nothing may happen before now: a past event would be handled out of time order.
        self._seq += 1
        heapq.heappush(self._heap, _Event(max(at, self.now), self._seq, kind, data))

    def _new_id(self, kind: str, width: int = 7) -> str:
        n = self._ids.get(kind, 0) + 1
        self._ids[kind] = n
        return f"{self.prefix}{kind}-{n:0{width}d}"

    def _emit(self, at: datetime, record: Record) -> None:
        key = (type(record).__name__, record.id)
        version = self._versions.get(key, 0) + 1
        self._versions[key] = version
        self._store(record)
        if not self._live:
            return
        patient = getattr(record, "patient", None)
        if patient is not None and patient not in self.announced:
            self._announce(at, patient)
        if isinstance(record, PatientRec):
            self.announced.add(record.id)
        self._out.append(Emission(at, version, record, at))

    def _announce(self, at: datetime, patient_id: str) -> None:
        rec = self.patients[patient_id]
        self.announced.add(patient_id)
        self._out.append(Emission(at, self._versions[("PatientRec", rec.id)], rec, at))

    def _store(self, record: Record) -> None:
        if isinstance(record, PatientRec):
            self.patients[record.id] = record
        elif isinstance(record, StayRec):
            self.stays[record.id] = record
        elif isinstance(record, ReferralRec):
            self.referrals[record.id] = record
        elif isinstance(record, AppointmentRec):
            self.appointments[record.id] = record
        elif isinstance(record, VisitRec):
            self.visits[record.id] = record
        else:
            self.homecare[record.id] = record

    def _go_live(self) -> None:
        """Initial load at the start: every fact still open, in its current version."""
        self._live = True
        at = self.start
        open_records: list[StayRec | HomeCareRec | AppointmentRec] = [
            s for s in self.stays.values() if s.status == "in-progress"
        ]
        open_records += [h for h in self.homecare.values() if h.status == "active"]
        open_records += [
            a for a in self.appointments.values() if a.status == "booked" and a.start >= at
        ]
        for rec in open_records:
            pid = rec.patient
            if pid not in self.announced:
                self._announce(at, pid)
            version = self._versions[(type(rec).__name__, rec.id)]
            self._out.append(Emission(_last_change(rec), version, rec, at))

    def run(self) -> Iterator[Emission]:
        """Simulate, yielding emissions in the order they are sent."""
        # Referrals start a full booking lag before the warm-up, so that scheduled admissions
        # already flow at their steady rate when the warm-up begins.
        lead = self.territory.flows.referral_lag_days[1] + 1
        for d in range(lead, 0, -1):
            self._schedule(self.begin - timedelta(days=d), "day", referrals_only=True)
        self._schedule(self.begin, "day")
        while self._heap:
            event = self._heap[0]
            if self.end is not None and event.at >= self.end:
                break
            if not self._live and event.at >= self.start:
                self._go_live()
                yield from self._drain()
                continue
            heapq.heappop(self._heap)
            self.now = event.at
            self._handlers[event.kind](event)
            yield from self._drain()
        if not self._live:
            self._go_live()
            yield from self._drain()

    def _drain(self) -> Iterator[Emission]:
        out, self._out = self._out, []
        yield from out

    # -- people ------------------------------------------------------------------------------

    def _new_patient(self, at: datetime, age_mean: float = 55.0) -> PatientRec:
        rng = self.rng
        u = rng.random(6)
        female = bool(u[0] < 0.52)
        age = min(max(age_mean + 22.0 * float(rng.standard_normal()), 0.1), 101.0)
        birth = (self._local(at) - timedelta(days=age * 365.25)).date()
        dep = self.territory.community.department
        body = f"{2 if female else 1}{birth.year % 100:02d}{birth.month:02d}{dep}"
        body += f"{int(u[1] * 1_000_000):06d}"
        ins = body + f"{97 - int(body) % 97:02d}"
        gps = self.directory.gps
        gp = gps[int(u[2] * len(gps))] if gps else None
        given = GIVEN_FEMALE if female else GIVEN_MALE
        rec = PatientRec(
            id=self._new_id("pat", 6),
            ins=ins,
            family=FAMILY_NAMES[int(u[3] * len(FAMILY_NAMES))],
            given=given[int(u[4] * len(given))],
            gender="female" if female else "male",
            birth_date=birth,
            gp=gp.id if gp else "",
        )
        self._emit(at, rec)
        return rec

    def _lognormal(self, median: float, sigma: float) -> float:
        return median * math.exp(sigma * float(self.rng.standard_normal()))

    def _local_time(self, day: date, lo_hour: int, hi_hour: int) -> datetime:
        minutes = int(self.rng.integers(lo_hour * 60, hi_hour * 60))
        local = datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=self.tz)
        return local.astimezone(UTC)

    # -- beds --------------------------------------------------------------------------------

    def _take_bed(self, ward: Ward, at: datetime, over_ok: bool) -> Move | None:
        free = self._free[ward.id]
        if free:
            return Move(ward.id, heapq.heappop(free), at)
        if over_ok:
            self._extra[ward.id] += 1
            self.counters.over_capacity_placements += 1
            return Move(ward.id, None, at)
        return None

    def _release(self, move: Move) -> None:
        if move.bed is None:
            self._extra[move.ward] -= 1
        else:
            heapq.heappush(self._free[move.ward], move.bed)

    def _place(self, est_id: str, service: str, at: datetime, outlier: bool) -> Move | None:
        """A bed in `service` at the establishment; over capacity only in a surge; else (for
        unplanned admissions) a bed in another ward of the establishment ("outlier")."""
        est = self.territory.establishment(est_id)
        wards = [w for w in est.wards if w.service == service]
        wards.sort(key=lambda w: -len(self._free[w.id]))
        for ward in wards:
            move = self._take_bed(ward, at, over_ok=False)
            if move:
                return move
        over_ok = self.surge_active(at) and self.territory.surge.allow_over_capacity
        if wards and over_ok:
            return self._take_bed(wards[0], at, over_ok=True)
        if outlier and service != ED_SERVICE:
            others = [
                w
                for w in est.wards
                if not w.is_ed and w.service not in ICU_SERVICES and self._free[w.id]
            ]
            if others:
                others.sort(key=lambda w: (-len(self._free[w.id]), w.id))
                return self._take_bed(others[0], at, over_ok=False)
        return None

    # -- handlers ----------------------------------------------------------------------------

    def _on_day(self, ev: _Event) -> None:
        t0 = ev.at
        referrals_only = bool(ev.data.get("referrals_only"))
        if not referrals_only:
            self._schedule(t0 + timedelta(days=1), "day")
        for est in self.territory.establishments:
            if est.ed_daily_arrivals <= 0 or referrals_only:
                continue
            for h in range(24):
                hour = t0 + timedelta(hours=h)
                for _ in range(int(self.rng.poisson(self.ed_rate(est.ed_daily_arrivals, hour)))):
                    at = hour + timedelta(seconds=float(self.rng.uniform(0, 3600)))
                    self._schedule(at, "ed_arrival", est=est.id)
        # Day events fall on local midnight give or take the DST hour: take the local date at
        # noon, so that the day's referral hours are inside [t0, t0 + 24 h).
        day = self._local(t0 + timedelta(hours=12)).date()
        for ward_id, rate in self._sched_rate.items():
            for _ in range(int(self.rng.poisson(rate))):
                at = self._local_time(day, 8, 19)
                self._schedule(at, "referral", ward=ward_id)

    def _on_ed_arrival(self, ev: _Event) -> None:
        at = ev.at
        known = ev.data.get("patient")
        if known is not None and self.patients[known].deceased_at is not None:
            return
        est_ids = [ev.data["est"]] + [
            e.id for e in self.territory.establishments if e.ed_wards and e.id != ev.data["est"]
        ]
        move = None
        for est_id in est_ids:
            move = self._place(est_id, ED_SERVICE, at, outlier=False)
            if move:
                break
        if move is None:
            self.counters.ed_diverted_out += 1
            return
        self.counters.ed_arrivals += 1
        patient_id = known or self._new_patient(at).id
        ed = self.territory.ed
        readmission_of = ev.data.get("readmission_of")
        if ev.data.get("force_admit"):
            self._ed_forced += 1
            outcome = "admit"
        else:
            self._ed_fresh += 1
            u = self.rng.random()
            p = self._ed_probability()
            outcome = "admit" if u < p else "left" if u < p + ed.left_without_being_seen else "home"
        stay = StayRec(
            id=self._new_id("urg"),
            patient=patient_id,
            cls="EMER",
            establishment=self.territory.ward(move.ward).establishment,
            start=at,
            moves=(move,),
            admit_source="gp" if ev.data.get("based_on") else None,
            based_on=ev.data.get("based_on"),
            readmission_of=readmission_of,
        )
        self._emit(at, stay)
        hours = self._lognormal(ed.los_median_hours, ed.los_sigma)
        if outcome == "admit":
            hours += self._lognormal(1.5, 0.7)  # waiting for a bed (boarding)
        elif outcome == "left":
            hours = min(hours, self._lognormal(1.0, 0.5))
        self._schedule(at + timedelta(hours=hours), "ed_depart", stay=stay.id, outcome=outcome)

    def _on_ed_depart(self, ev: _Event) -> None:
        at = ev.at
        stay = self.stays[ev.data["stay"]]
        outcome = ev.data["outcome"]
        self._release(stay.moves[-1])
        admission = None
        if outcome == "admit":
            admission = self._admit_from_ed(stay, at)
            if admission is None:
                self.counters.admission_refused += 1
        disposition = {"home": "home", "left": "aadvice"}.get(outcome)
        if outcome == "admit":
            disposition = None if admission else "other-hcf"
        last = replace(stay.moves[-1], end=at)
        finished = replace(
            stay, moves=(*stay.moves[:-1], last), status="finished", end=at, disposition=disposition
        )
        self._emit(at, finished)
        if admission is not None:
            self._emit(at, admission)

    def _admit_from_ed(self, ed_stay: StayRec, at: datetime) -> StayRec | None:
        t = self.territory
        est = t.establishment(ed_stay.establishment)
        inpatient = [w for w in est.wards if not w.is_ed]
        weights = np.array([t.services[w.service].ed_weight * w.beds for w in inpatient], float)
        if not inpatient or weights.sum() <= 0:
            return None
        ward = inpatient[int(self.rng.choice(len(inpatient), p=weights / weights.sum()))]
        move = self._place(est.id, ward.service, at, outlier=True)
        if move is None:
            return None
        self.counters.ed_admissions += 1
        if ed_stay.readmission_of:
            self.counters.readmissions += 1
        stay = StayRec(
            id=self._new_id("sej"),
            patient=ed_stay.patient,
            cls="IMP",
            establishment=est.id,
            start=at,
            moves=(move,),
            admit_source="emd",
            part_of=ed_stay.id,
            based_on=ed_stay.based_on,
            readmission_of=ed_stay.readmission_of,
        )
        self._store(stay)
        self._start_segment(stay, move, at)
        return stay

    def _start_segment(self, stay: StayRec, move: Move, at: datetime) -> None:
        service = self.territory.services[self.territory.ward(move.ward).service]
        days = self._lognormal(service.los_median_days, service.los_sigma)
        days = max(days, 2.0 / 24.0)
        self._schedule(at + timedelta(days=days), "segment_end", stay=stay.id)

    def _on_referral(self, ev: _Event) -> None:
        at = ev.at
        ward = self.territory.ward(ev.data["ward"])
        patient = self._new_patient(at, age_mean=60.0)
        gp = patient.gp or (self.directory.gps[0].id if self.directory.gps else "")
        minutes = float(self.rng.uniform(15, 30))
        # `at` is the end of the consultation: the GP's software sends it when it is closed.
        visit = VisitRec(
            id=self._new_id("cons"),
            patient=patient.id,
            gp=gp,
            start=at - timedelta(minutes=minutes),
            end=at,
            reason="referral",
        )
        self._emit(at, visit)
        referral = ReferralRec(
            id=self._new_id("dem"),
            patient=patient.id,
            gp=gp,
            establishment=ward.establishment,
            service=ward.service,
            authored=visit.end,
        )
        self.counters.referrals += 1
        self._emit(referral.authored, referral)
        flows = self.territory.flows
        if self.rng.random() < flows.referral_to_ed_share:
            est = self.territory.establishment(ward.establishment)
            ed_est = est.id if est.ed_wards else self._first_ed_establishment()
            if ed_est is not None:
                delay = timedelta(hours=float(self.rng.uniform(1, 48)))
                self._schedule(
                    referral.authored + delay,
                    "ed_arrival",
                    est=ed_est,
                    patient=patient.id,
                    based_on=referral.id,
                )
                return
        lo, hi = flows.referral_lag_days
        day = self._local(at).date() + timedelta(days=int(self.rng.integers(lo, hi + 1)))
        while self._is_off_day(day) and self.rng.random() >= flows.scheduled_weekend_factor:
            day += timedelta(days=1)
        admit_at = self._local_time(day, 8, 14)
        book_at = referral.authored + timedelta(hours=float(self.rng.uniform(1, 48)))
        book_at = min(book_at, admit_at - timedelta(hours=1))
        self._schedule(book_at, "book", referral=referral.id, admit_at=admit_at, ward=ward.id)

    def _first_ed_establishment(self) -> str | None:
        for est in self.territory.establishments:
            if est.ed_wards and est.ed_daily_arrivals > 0:
                return est.id
        return None

    def _on_book(self, ev: _Event) -> None:
        referral = self.referrals[ev.data["referral"]]
        ward = self.territory.ward(ev.data["ward"])
        appt = AppointmentRec(
            id=self._new_id("rdv"),
            patient=referral.patient,
            purpose="admission",
            start=ev.data["admit_at"],
            created=ev.at,
            based_on=referral.id,
            establishment=ward.establishment,
            service=ward.service,
        )
        self._emit(ev.at, appt)
        self._schedule(appt.start, "scheduled_admit", appointment=appt.id)

    def _on_scheduled_admit(self, ev: _Event) -> None:
        at = ev.at
        appt = self.appointments[ev.data["appointment"]]
        if self.patients[appt.patient].deceased_at is not None:
            self._emit(at, replace(appt, status="cancelled"))
            return
        if self.rng.random() < self.territory.flows.admission_noshow_rate:
            self._emit(at, replace(appt, status="noshow"))
            return
        assert appt.establishment is not None and appt.service is not None
        move = self._place(appt.establishment, appt.service, at, outlier=False)
        if move is None:
            self.counters.scheduled_cancelled += 1
            self._emit(at, replace(appt, status="cancelled"))
            return
        self.counters.scheduled_admissions += 1
        self._emit(at, replace(appt, status="fulfilled"))
        stay = StayRec(
            id=self._new_id("sej"),
            patient=appt.patient,
            cls="IMP",
            establishment=appt.establishment,
            start=at,
            moves=(move,),
            admit_source="gp",
            based_on=appt.based_on,
        )
        self._emit(at, stay)
        self._start_segment(stay, move, at)
        referral = self.referrals.get(appt.based_on or "")
        if referral is not None:
            self._emit(at, replace(referral, status="completed"))

    def _on_segment_end(self, ev: _Event) -> None:
        at = ev.at
        stay = self.stays[ev.data["stay"]]
        t = self.territory
        current = stay.moves[-1]
        service = t.services[t.ward(current.ward).service]
        death_rate = service.death_rate if service.death_rate is not None else t.flows.death
        if self.rng.random() < death_rate:
            self._discharge(stay, at, "exp")
            return
        target = self._pick(service.transfers)
        if target is not None:
            move = self._place(stay.establishment, target, at, outlier=False)
            if move is not None:
                self._release(current)
                self.counters.transfers += 1
                moved = replace(stay, moves=(*stay.moves[:-1], replace(current, end=at), move))
                self._emit(at, moved)
                self._start_segment(moved, move, at)
                return
        self._discharge(stay, at, self._pick(t.flows.dispositions) or "home")

    def _pick(self, probabilities: Any) -> str | None:
        """A key drawn with its probability; None with the remaining probability (if < 1)."""
        items = list(probabilities.items())
        total = sum(p for _, p in items)
        u = self.rng.random() * max(total, 1.0)
        for key, p in items:
            if u < p:
                return str(key)
            u -= p
        return None

    def _discharge(self, stay: StayRec, at: datetime, disposition: str) -> None:
        current = stay.moves[-1]
        self._release(current)
        self.counters.discharges += 1
        done = replace(
            stay,
            moves=(*stay.moves[:-1], replace(current, end=at)),
            status="finished",
            end=at,
            disposition=disposition,
        )
        self._emit(at, done)
        flows = self.territory.flows
        if disposition == "exp":
            self.counters.deaths += 1
            self._emit(at, replace(self.patients[stay.patient], deceased_at=at))
            return
        if disposition == "home_care" and self.directory.nursing:
            provider = self.directory.nursing[int(self.rng.integers(len(self.directory.nursing)))]
            episode = HomeCareRec(
                id=self._new_id("epi"),
                patient=stay.patient,
                provider=provider.id,
                start=at,
                after_stay=stay.id,
            )
            self._emit(at, episode)
            lo, hi = flows.home_care_days
            self._schedule(
                at + timedelta(days=float(self.rng.uniform(lo, hi))), "homecare_end", id=episode.id
            )
        if disposition in ("home", "home_care"):
            self._book_followup(stay, at)
        if self.rng.random() < flows.readmission_rate:
            window = flows.readmission_window_days
            days = min(max(self._lognormal(8.0, 0.7), 0.5), window - 0.5)
            est = self.territory.establishment(stay.establishment)
            ed_est = est.id if est.ed_wards else self._first_ed_establishment()
            if ed_est is None or self.rng.random() >= flows.readmission_via_ed:
                services = [self.territory.ward(m.ward).service for m in stay.moves]
                ward_services = [s for s in services if s not in ICU_SERVICES] or services
                first_service = ward_services[0]
                self._schedule(
                    at + timedelta(days=days),
                    "direct_admit",
                    patient=stay.patient,
                    est=stay.establishment,
                    service=first_service,
                    readmission_of=stay.id,
                )
            else:
                self._schedule(
                    at + timedelta(days=days),
                    "ed_arrival",
                    est=ed_est,
                    patient=stay.patient,
                    force_admit=True,
                    readmission_of=stay.id,
                )

    def _on_direct_admit(self, ev: _Event) -> None:
        """An unplanned admission straight to a ward, arranged by the GP (a readmission)."""
        at = ev.at
        if self.patients[ev.data["patient"]].deceased_at is not None:
            return
        move = self._place(ev.data["est"], ev.data["service"], at, outlier=True)
        if move is None:
            self.counters.admission_refused += 1
            return
        self.counters.readmissions += 1
        stay = StayRec(
            id=self._new_id("sej"),
            patient=ev.data["patient"],
            cls="IMP",
            establishment=ev.data["est"],
            start=at,
            moves=(move,),
            admit_source="gp",
            readmission_of=ev.data["readmission_of"],
        )
        self._emit(at, stay)
        self._start_segment(stay, move, at)

    def _book_followup(self, stay: StayRec, at: datetime) -> None:
        patient = self.patients[stay.patient]
        lo, hi = self.territory.flows.followup_days
        day = self._local(at).date() + timedelta(days=int(self.rng.integers(lo, hi + 1)))
        while day.weekday() == 6 or day in self.holidays:
            day += timedelta(days=1)
        appt = AppointmentRec(
            id=self._new_id("rdv"),
            patient=patient.id,
            purpose="followup",
            start=self._local_time(day, 8, 19),
            created=at,
            practitioner=patient.gp or None,
            after_stay=stay.id,
        )
        self._emit(at, appt)
        self._schedule(appt.start, "followup", appointment=appt.id)

    def _on_followup(self, ev: _Event) -> None:
        at = ev.at
        appt = self.appointments[ev.data["appointment"]]
        if appt.status != "booked":
            return
        if self.patients[appt.patient].deceased_at is not None:
            self._emit(at, replace(appt, status="cancelled"))
            return
        if self.rng.random() < self.territory.flows.followup_missing_share:
            self.counters.followups_missed += 1
            self._emit(at, replace(appt, status="noshow"))
            return
        self.counters.followups_done += 1
        self._emit(at, replace(appt, status="fulfilled"))
        minutes = float(self.rng.uniform(15, 30))
        visit = VisitRec(
            id=self._new_id("cons"),
            patient=appt.patient,
            gp=appt.practitioner or "",
            start=at,
            end=at + timedelta(minutes=minutes),
            reason="followup",
            appointment=appt.id,
        )
        # The GP's software sends the consultation when it is closed.
        self._schedule(visit.end, "emit", record=visit)

    def _on_emit(self, ev: _Event) -> None:
        self._emit(ev.at, ev.data["record"])

    def _on_homecare_end(self, ev: _Event) -> None:
        episode = self.homecare[ev.data["id"]]
        if episode.status == "active":
            self._emit(ev.at, replace(episode, status="finished", end=ev.at))


def _last_change(rec: Record) -> datetime:
    """When the current version of an open record came to be."""
    if isinstance(rec, StayRec):
        return rec.moves[-1].start
    if isinstance(rec, HomeCareRec):
        return rec.start
    if isinstance(rec, AppointmentRec):
        return rec.created
    raise TypeError(type(rec))
