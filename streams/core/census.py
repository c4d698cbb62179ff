"""Census: occupancy, capacity and hourly counts per bed, ward, service and hospital. Pure.

Design. Patient events are keyed by patient, but the census adds up every patient of a unit, so it
is *not* kept as running counters in a stream table (a counter incremented per event double-counts
on every replay). Instead the sink stores each stay's periods (`stay_locations`: a bed, a ward or,
when the feed has no `Encounter.location`, the whole hospital) as part of the patient's derived
state, and the census is a pure function of those periods:

- `live_occupancy(periods, hierarchy, units, ed_open)`: patients present now (open periods, and
  open ED visits) per unit;
- `hourly_census(periods, ed_arrivals, hierarchy, lo, hi, watermark)`: for each unit and each hour
  in `[lo, hi]`: occupancy at the hour (present at its first instant), admissions, discharges,
  transfers in/out and ED arrivals during the hour;
- `over_capacity_episodes(...)`: the time spans in which a ward held more patients than its
  capacity.

The sink recomputes only the hours a batch can have changed (from the earliest period it touched to
the hospital's latest known time) and replaces those rows, so replays, duplicates and restarts
converge to the rows a clean run writes. Hours where every count is zero have no row.

Places. A bed is a Location with physicalType `bd` and `partOf` its ward (`wa`); a ward's `partOf`
is the hospital Location, whose `managingOrganization` is the hospital Organization. The ward's
service is `Location.type`. Capacity: the territory config (`Settings.census_capacity`) if it names
the unit, else the number of `active` beds (a ward), summed over wards for services and hospitals.
Without any Location (Synthea), periods are at hospital level (the Encounter's serviceProvider) and
only hospital units exist, with unknown capacity.

The ED. An ED visit counts in the ED ward (and its service, `urgences`) from its arrival to its
departure, boarders included (admitted, still waiting for a bed), against the ED boxes (the beds
of the ED ward). The hospital unit counts inpatients against inpatient beds only: ED boxes are
neither in its occupancy nor in its capacity, so its percentage is that of its beds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache, cached_property
from typing import NamedTuple

HOUR = timedelta(hours=1)
HOSPITAL, SERVICE, WARD, BED = "hospital", "service", "ward", "bed"
LEVELS = (HOSPITAL, SERVICE, WARD)
UNKNOWN_HOSPITAL = "unknown"
ED_SERVICE = "urgences"


@dataclass(frozen=True)
class Place:
    """A Location as the census needs it."""

    location_id: str
    physical_type: str | None = None
    part_of: str | None = None
    status: str = "active"
    name: str | None = None
    service_code: str | None = None
    service_name: str | None = None
    organization: str | None = None


class Unit(NamedTuple):
    """A census unit: a hospital, a service of a hospital, a ward or a bed.

    A named tuple rather than a frozen dataclass: the census hashes and compares units for every
    hour it counts, and a tuple does that in C."""

    unit_type: str
    unit_id: str
    hospital_id: str


@dataclass(frozen=True)
class Period:
    """A stay's time in one place (`end` None while the patient is still there).

    `discharged` marks the last period of a finished stay: its end is a discharge.
    """

    stay_id: str
    seq: int
    hospital_id: str
    location_id: str | None
    start: datetime
    end: datetime | None = None
    discharged: bool = False
    # The ward the feed named, used while the Location of `location_id` is unknown.
    ward_hint: str | None = None


@dataclass(frozen=True)
class EdArrival:
    """An ED visit: its arrival counts in the hospital (and the ED ward when known); while it
    lasts (`at` to `departed`, None while still there) it occupies the ED ward."""

    hospital_id: str
    ward_id: str | None
    at: datetime
    departed: datetime | None = None


@dataclass(frozen=True)
class HourCounts:
    """One `census_hourly` row."""

    unit: Unit
    hour: datetime
    occupancy: int = 0
    admissions: int = 0
    discharges: int = 0
    transfers_in: int = 0
    transfers_out: int = 0
    ed_arrivals: int = 0


@dataclass(frozen=True)
class Occupancy:
    """One `location_occupancy` row."""

    unit: Unit
    name: str | None
    occupied: int
    capacity: int | None


@dataclass(frozen=True)
class Episode:
    """A span during which a ward held more patients than its capacity (`end` None: still)."""

    ward_id: str
    start: datetime
    end: datetime | None
    peak: int
    capacity: int


# The most levels of `partOf` climbed from a place (a site, building, wing, floor, ward, room and
# bed are seven). Past them a chain is a feed's mistake; climbing it whole for every place would
# cost the square of its length.
MAX_LEVELS = 32


@dataclass
class Hierarchy:
    """The Location tree plus capacity overrides from the territory config."""

    places: Mapping[str, Place] = field(default_factory=dict)
    capacity_overrides: Mapping[str, int] = field(default_factory=dict)
    # Organization id → name: the name of a hospital that no Location names.
    organizations: Mapping[str, str | None] = field(default_factory=dict)
    _units: dict[tuple[str, str | None, str | None], dict[str, Unit | None]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _names: dict[Unit, str | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def _climb(self, location_id: str | None) -> list[Place]:
        chain: list[Place] = []
        seen: set[str] = set()
        while (
            location_id
            and location_id in self.places
            and location_id not in seen
            and len(chain) < MAX_LEVELS
        ):
            seen.add(location_id)
            place = self.places[location_id]
            chain.append(place)
            location_id = place.part_of
        return chain

    def bed_of(self, location_id: str | None) -> str | None:
        """The bed a period's location is, if it is a bed."""
        chain = self._climb(location_id)
        return chain[0].location_id if chain and chain[0].physical_type == "bd" else None

    def ward_of(self, location_id: str | None) -> str | None:
        """The ward containing `location_id` (itself if a ward). An unknown location is taken
        as a ward: feeds may point straight at wards before their Location arrives."""
        if location_id is None:
            return None
        chain = self._climb(location_id)
        if not chain:
            return location_id
        for place in chain:
            if place.physical_type == "wa":
                return place.location_id
        if chain[0].physical_type == "bd":
            return chain[0].part_of
        return None

    def hospital_of(self, location_id: str | None) -> str | None:
        """The hospital (its Organization id if the top Location names one) of a location."""
        chain = self._climb(location_id)
        for place in chain:
            if place.organization:
                return place.organization
        if len(chain) == MAX_LEVELS:
            return None  # a chain climbed only in part: its top is not known
        top = chain[-1] if chain else None
        if top is not None and top.physical_type in ("si", "bu"):
            return top.location_id
        if top is not None and top.part_of:
            return top.part_of
        return None

    def service_of(self, ward_id: str | None) -> tuple[str, str | None] | None:
        """(code, name) of a ward's service."""
        place = self.places.get(ward_id) if ward_id else None
        if place is None or not place.service_code:
            return None
        return place.service_code, place.service_name

    def units_of(
        self, hospital_id: str, location_id: str | None, ward_hint: str | None = None
    ) -> dict[str, Unit | None]:
        """The unit of a place at each level (None where it is unknown). `ward_hint`, the ward
        the feed named, stands in while the Location itself is unknown."""
        key = (hospital_id, location_id, ward_hint)
        found = self._units.get(key)
        if found is None:
            found = self._units[key] = self._units_of(hospital_id, location_id, ward_hint)
        return found

    def _units_of(
        self, hospital_id: str, location_id: str | None, ward_hint: str | None
    ) -> dict[str, Unit | None]:
        if ward_hint and (location_id is None or location_id not in self.places):
            location_id = ward_hint
        ward = self.ward_of(location_id)
        service = self.service_of(ward)
        return {
            HOSPITAL: Unit(HOSPITAL, hospital_id, hospital_id),
            SERVICE: Unit(SERVICE, f"{hospital_id}/{service[0]}", hospital_id) if service else None,
            WARD: Unit(WARD, ward, hospital_id) if ward else None,
        }

    def name_of(self, unit: Unit) -> str | None:
        """A display name for a unit."""
        if unit not in self._names:
            # Services and hospitals are looked up over every place: once per unit.
            self._names[unit] = self._name_of(unit)
        return self._names[unit]

    def _name_of(self, unit: Unit) -> str | None:
        if unit.unit_type == SERVICE:
            code = unit.unit_id.rsplit("/", 1)[-1]
            for place in self.places.values():
                if place.service_code == code and place.service_name:
                    return place.service_name
            return code
        found = self.places.get(unit.unit_id)
        if found is None and unit.unit_type == HOSPITAL:
            # A hospital is known by its Organization id; its site Location (the top of the tree,
            # not one of its wards or beds, which name the same Organization) carries the name.
            mine = [p for p in self.places.values() if p.organization == unit.unit_id]
            found = next(
                (p for p in mine if p.physical_type in ("si", "bu") and not p.part_of),
                next((p for p in mine if not p.part_of), None),
            )
        if found is not None and found.name:
            return found.name
        return self.organizations.get(unit.unit_id) if unit.unit_type == HOSPITAL else None

    @cached_property
    def _index(self) -> tuple[dict[str, int], dict[str, list[str]]]:
        """(active beds per ward, wards per hospital), built once: capacity is asked per unit."""
        beds: dict[str, int] = defaultdict(int)
        wards: dict[str, list[str]] = defaultdict(list)
        for p in self.places.values():
            if p.physical_type == "bd" and p.status == "active" and p.part_of:
                beds[p.part_of] += 1
            elif p.physical_type == "wa":
                wards[self.hospital_of(p.location_id) or UNKNOWN_HOSPITAL].append(p.location_id)
        return dict(beds), dict(wards)

    def capacity(self, unit: Unit) -> int | None:
        """Capacity of a unit: config override, else its active beds (None if none is known)."""
        if unit.unit_id in self.capacity_overrides:
            return self.capacity_overrides[unit.unit_id]
        if unit.unit_type == BED:
            return 1
        if unit.unit_type == WARD:
            return self._ward_capacity(unit.unit_id)
        wards = self._index[1].get(unit.hospital_id, [])
        if unit.unit_type == SERVICE:
            code = unit.unit_id.rsplit("/", 1)[-1]
            wards = [w for w in wards if self.places[w].service_code == code]
        else:
            # A hospital's capacity is its inpatient beds; the ED boxes are the ED's.
            wards = [w for w in wards if self.places[w].service_code != ED_SERVICE]
        caps = [c for c in (self._ward_capacity(w) for w in wards) if c is not None]
        return sum(caps) if caps else None

    def _ward_capacity(self, ward_id: str) -> int | None:
        if ward_id in self.capacity_overrides:
            return self.capacity_overrides[ward_id]
        return self._index[0].get(ward_id) or None


def floor_hour(at: datetime) -> datetime:
    """The start of the UTC hour containing `at`."""
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _segments(
    periods: Sequence[Period], units: Sequence[Mapping[str, Unit | None]], level: str
) -> list[tuple[Unit | None, datetime, datetime | None, bool, bool]]:
    """One stay's periods merged per unit at `level`: (unit, start, end, is_first, discharged).
    `units` holds the units of each period (`Hierarchy.units_of`)."""
    out: list[tuple[Unit | None, datetime, datetime | None, bool, bool]] = []
    for i, p in enumerate(periods):
        unit = units[i][level]
        if out and out[-1][0] == unit:
            first = out[-1][3]
            out[-1] = (unit, out[-1][1], p.end, first, p.discharged)
        else:
            out.append((unit, p.start, p.end, i == 0, p.discharged))
    return out


def _by_stay(periods: Iterable[Period]) -> list[list[Period]]:
    stays: dict[str, list[Period]] = defaultdict(list)
    for p in periods:
        stays[p.stay_id].append(p)
    return [sorted(ps, key=lambda p: (p.seq, p.start)) for _, ps in sorted(stays.items())]


def _hour_of(at: datetime) -> int:
    """The hour containing `at`, as whole hours since the epoch (UTC)."""
    return int(at.timestamp() // 3600)


def _hour_after(at: datetime) -> int:
    """The first hour that starts at or after `at`, as whole hours since the epoch."""
    return -int(-at.timestamp() // 3600)


def hourly_census(
    periods: Iterable[Period],
    ed_arrivals: Iterable[EdArrival],
    hierarchy: Hierarchy,
    lo: datetime,
    hi: datetime,
    watermark: datetime | None = None,
) -> list[HourCounts]:
    """Counts per (unit, hour) for the hours from `floor_hour(lo)` to `floor_hour(hi)`.

    Pass every period of every stay that overlaps the window (the stay's other periods too: a
    transfer is seen from the period before it). Open periods count as present up to the hour of
    `watermark` (the latest time known for the hospital), not beyond, so that rows exist only for
    hours the data reached. Rows whose counts are all zero are left out.

    Hours are whole hours since the epoch inside (this runs for every batch of the worker);
    they become datetimes only in the rows it returns.
    """
    first, last = _hour_of(lo), _hour_of(hi)
    counts: dict[tuple[Unit, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    # Each time is converted once, not once per level and count it takes part in.
    hour_of = cache(_hour_of)
    hour_after = cache(_hour_after)

    def bump(unit: Unit | None, at: datetime, what: str) -> None:
        hour = hour_of(at)
        if unit is not None and first <= hour <= last:
            counts[(unit, hour)][what] += 1

    limit = min(last, _hour_of(watermark)) if watermark is not None else last
    steps: dict[Unit, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for stay in _by_stay(periods):
        stay_units = [hierarchy.units_of(p.hospital_id, p.location_id, p.ward_hint) for p in stay]
        for level in LEVELS:
            segs = _segments(stay, stay_units, level)
            for k, (unit, start, end, is_first, discharged) in enumerate(segs):
                if k == 0 and is_first:
                    bump(unit, start, "admissions")
                elif k > 0 and segs[k - 1][0] != unit:
                    bump(segs[k - 1][0], start, "transfers_out")
                    bump(unit, start, "transfers_in")
                if end is not None and discharged and k == len(segs) - 1:
                    bump(unit, end, "discharges")
                if unit is None:
                    continue
                # Present at hour H when start <= H < end: +1 from the first such hour, -1 after
                # the last one; the sweep below turns these steps into hourly occupancy.
                hour = max(hour_after(start), first)
                stop = limit if end is None else min(last, hour_after(end) - 1)
                if hour <= stop:
                    steps[unit][hour] += 1
                    steps[unit][stop + 1] -= 1
    for arrival in ed_arrivals:
        units = hierarchy.units_of(arrival.hospital_id, arrival.ward_id)
        for level in LEVELS:
            bump(units[level], arrival.at, "ed_arrivals")
        # Present in the ED ward and service (not the hospital's beds) while the visit lasts.
        hour = max(hour_after(arrival.at), first)
        end = arrival.departed
        stop = limit if end is None else min(last, hour_after(end) - 1)
        if hour > stop:
            continue
        for level in (SERVICE, WARD):
            unit = units[level]
            if unit is not None:
                steps[unit][hour] += 1
                steps[unit][stop + 1] -= 1
    for unit, deltas in steps.items():
        present = 0
        marks = sorted(deltas.items())
        for i, (mark, delta) in enumerate(marks):
            present += delta
            if present <= 0 or i + 1 == len(marks):
                continue
            for hour in range(mark, marks[i + 1][0]):
                counts[(unit, hour)]["occupancy"] = present
    times: dict[int, datetime] = {}
    rows = []
    for (unit, hour), values in counts.items():
        if any(values.values()):
            if hour not in times:
                times[hour] = datetime.fromtimestamp(hour * 3600, UTC)
            rows.append(HourCounts(unit=unit, hour=times[hour], **values))
    rows.sort(key=lambda r: (r.unit.unit_type, r.unit.unit_id, r.hour))
    return rows


def census_slices(
    periods: Iterable[Period],
    ed_arrivals: Iterable[EdArrival],
    lo: datetime,
    hi: datetime,
    span: timedelta,
    stored: Iterable[datetime] = (),
) -> Iterator[tuple[datetime, datetime, list[Period], list[EdArrival]]]:
    """The hours from `floor_hour(lo)` to `floor_hour(hi)` in consecutive slices of `span` (the
    last one shorter), each with what `hourly_census` needs to count it: every period of the
    stays that reach into the slice, and the ED visits that do. The `hourly_census` of the
    slices, put together, is that of the whole window; a slice at a time, a window of months
    never holds all its hours at once.

    Only the slices that something reaches into, or that hold one of the `stored` hours (rows
    that may have to go), are given: a window of decades with a few stays costs a few slices.
    Yields (first hour, last hour, periods, ED arrivals) per slice, in order.
    """
    first_hour, last_hour = floor_hour(lo), floor_hour(hi)
    if last_hour < first_hour:
        return
    count = (last_hour - first_hour) // span + 1

    def reach(start: datetime, until: datetime | None) -> range:
        """The slices from the one holding `start` to the one holding `until` (None: open)."""
        if start >= last_hour + HOUR or (until is not None and until < first_hour):
            return range(0)
        a = max(0, (floor_hour(start) - first_hour) // span)
        b = count - 1 if until is None else min(count - 1, (floor_hour(until) - first_hour) // span)
        return range(a, b + 1)

    stays_in: dict[int, list[Period]] = defaultdict(list)
    for ps in _by_stay(periods):
        ends = [p.end for p in ps if p.end is not None]
        until = max(ends) if len(ends) == len(ps) else None
        for k in reach(min(p.start for p in ps), until):
            stays_in[k] += ps
    arrivals_in: dict[int, list[EdArrival]] = defaultdict(list)
    for arrival in ed_arrivals:
        for k in reach(arrival.at, arrival.departed):
            arrivals_in[k].append(arrival)
    held = {(h - first_hour) // span for h in stored if first_hour <= h <= last_hour}
    for k in sorted(stays_in.keys() | arrivals_in.keys() | held):
        start = first_hour + k * span
        yield start, min(start + span - HOUR, last_hour), stays_in[k], arrivals_in[k]


def live_occupancy(
    periods: Iterable[Period],
    hierarchy: Hierarchy,
    units: Iterable[Unit] = (),
    ed_open: Iterable[EdArrival] = (),
) -> list[Occupancy]:
    """Occupied places per bed, ward, service and hospital from the open periods, and the ED
    boxes occupied by the open ED visits (`ed_open`: in the ED ward and service only).

    `units` adds units that must appear even when empty (those a batch touched, every ward of the
    hierarchy…), so that a unit that empties is written back as 0.
    """
    occupied: dict[Unit, int] = defaultdict(int)
    for unit in units:
        occupied[unit] += 0
    for visit in ed_open:
        if visit.departed is not None:
            continue
        at_levels = hierarchy.units_of(visit.hospital_id, visit.ward_id)
        for level in (SERVICE, WARD):
            found = at_levels[level]
            if found is not None:
                occupied[found] += 1
    for p in periods:
        if p.end is not None:
            continue
        for at_level in hierarchy.units_of(p.hospital_id, p.location_id, p.ward_hint).values():
            if at_level is not None:
                occupied[at_level] += 1
        bed = hierarchy.bed_of(p.location_id)
        if bed:
            occupied[Unit(BED, bed, p.hospital_id)] += 1
    return [
        Occupancy(unit, hierarchy.name_of(unit), n, hierarchy.capacity(unit))
        for unit, n in sorted(occupied.items(), key=lambda kv: (kv[0].unit_type, kv[0].unit_id))
    ]


def hierarchy_units(hierarchy: Hierarchy) -> list[Unit]:
    """Every bed, ward, service and hospital the Location tree defines."""
    found: set[Unit] = set()
    for place in hierarchy.places.values():
        if place.physical_type not in ("bd", "wa"):
            continue
        hospital = hierarchy.hospital_of(place.location_id) or UNKNOWN_HOSPITAL
        units = hierarchy.units_of(hospital, place.location_id)
        found.update(u for u in units.values() if u is not None)
        if place.physical_type == "bd":
            found.add(Unit(BED, place.location_id, hospital))
    return sorted(found, key=lambda u: (u.unit_type, u.unit_id))


def occupancy_at(periods: Iterable[Period], hierarchy: Hierarchy, at: datetime) -> list[Occupancy]:
    """Occupancy per unit at a past instant: periods with start <= at < end count."""
    present = [
        Period(p.stay_id, p.seq, p.hospital_id, p.location_id, p.start, None, False, p.ward_hint)
        for p in periods
        if p.start <= at and (p.end is None or at < p.end)
    ]
    return live_occupancy(present, hierarchy, hierarchy_units(hierarchy))


def ward_periods(periods: Iterable[Period], hierarchy: Hierarchy) -> dict[str, list[Period]]:
    """Periods grouped by the ward they are in (periods without a ward are left out)."""
    out: dict[str, list[Period]] = defaultdict(list)
    for p in periods:
        ward = hierarchy.units_of(p.hospital_id, p.location_id, p.ward_hint)[WARD]
        if ward:
            out[ward.unit_id].append(p)
    return dict(out)


def over_capacity_episodes(
    ward_id: str, periods: Iterable[Period], capacity: int, since: datetime | None = None
) -> tuple[list[Episode], bool]:
    """Spans where the ward held more than `capacity` patients, from `since` on.

    Changes at the same instant are taken together (a patient leaving as another arrives is no
    overlap). Pass every period that overlaps `[since, ∞)`. The second value is True when the ward
    was already above capacity just before `since`: that episode, carried over from earlier, comes
    first with start `since` (the caller knows its true start).
    """
    deltas: dict[datetime, int] = defaultdict(int)
    for p in periods:
        deltas[p.start] += 1
        if p.end is not None:
            deltas[p.end] -= 1
    changes = sorted(deltas.items())
    level, i = 0, 0
    start: datetime | None = None
    peak = 0
    carried = False
    if since is not None:
        while i < len(changes) and changes[i][0] < since:
            level += changes[i][1]
            i += 1
        if level > capacity:
            start, peak, carried = since, level, True
    episodes: list[Episode] = []
    for at, delta in changes[i:]:
        level += delta
        if level > capacity:
            if start is None:
                start, peak = at, level
            peak = max(peak, level)
        elif start is not None:
            episodes.append(Episode(ward_id, start, at, peak, capacity))
            start, peak = None, 0
    if start is not None:
        episodes.append(Episode(ward_id, start, None, peak, capacity))
    return episodes, carried
