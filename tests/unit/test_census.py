"""The census rules: hierarchy, hourly counts, live occupancy and over-capacity episodes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.census import (
    EdArrival,
    Hierarchy,
    Period,
    Place,
    Unit,
    census_slices,
    floor_hour,
    hierarchy_units,
    hourly_census,
    live_occupancy,
    occupancy_at,
    over_capacity_episodes,
)

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def t(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


TREE = Hierarchy(
    places={
        "chu": Place("chu", "si", None, organization="org-chu", name="CHU"),
        "w-card": Place("w-card", "wa", "chu", service_code="cardio", service_name="Cardiologie"),
        "w-card2": Place("w-card2", "wa", "chu", service_code="cardio", service_name="Cardiologie"),
        "w-ed": Place("w-ed", "wa", "chu", service_code="urgences", service_name="Urgences"),
        "b1": Place("b1", "bd", "w-card"),
        "b2": Place("b2", "bd", "w-card"),
        "b3": Place("b3", "bd", "w-card", status="inactive"),
        "b4": Place("b4", "bd", "w-card2"),
    },
    capacity_overrides={"w-ed": 10},
)
NO_PLACES = Hierarchy()

HOSP = Unit("hospital", "org-chu", "org-chu")
CARD = Unit("ward", "w-card", "org-chu")
CARD2 = Unit("ward", "w-card2", "org-chu")
CARDIO = Unit("service", "org-chu/cardio", "org-chu")


def rows_for(unit: Unit, rows: list) -> dict[int, dict[str, int]]:
    """Hour offset from T0 → non-zero counts, for one unit."""
    out: dict[int, dict[str, int]] = {}
    for r in rows:
        if r.unit == unit:
            offset = int((r.hour - T0).total_seconds() // 3600)
            values = {
                k: getattr(r, k)
                for k in (
                    "occupancy",
                    "admissions",
                    "discharges",
                    "transfers_in",
                    "transfers_out",
                    "ed_arrivals",
                )
                if getattr(r, k)
            }
            out[offset] = values
    return out


@pytest.mark.parametrize(
    ("location", "ward", "bed", "hospital"),
    [
        ("b1", "w-card", "b1", "org-chu"),
        ("w-card", "w-card", None, "org-chu"),
        ("unknown-ward", "unknown-ward", None, None),
        (None, None, None, None),
        ("chu", None, None, "org-chu"),
    ],
)
def test_hierarchy_resolves_beds_to_wards_and_hospitals(
    location: str | None, ward: str | None, bed: str | None, hospital: str | None
) -> None:
    assert TREE.ward_of(location) == ward
    assert TREE.bed_of(location) == bed
    assert TREE.hospital_of(location) == hospital


@pytest.mark.parametrize(
    ("unit", "capacity"),
    [
        (CARD, 2),  # two active beds, the inactive one does not count
        (CARD2, 1),
        (Unit("ward", "w-ed", "org-chu"), 10),  # territory config
        (CARDIO, 3),
        (HOSP, 3),  # inpatient beds: the ED boxes (w-ed) are the ED's capacity
        (Unit("hospital", "elsewhere", "elsewhere"), None),
    ],
)
def test_capacity_counts_active_beds_unless_configured(unit: Unit, capacity: int | None) -> None:
    assert TREE.capacity(unit) == capacity


CASES = [
    pytest.param(
        # Synthea: no Location, the stay is at hospital level.
        [Period("s1", 0, "org-a", None, t(0.5), t(26.25), True)],
        [],
        NO_PLACES,
        Unit("hospital", "org-a", "org-a"),
        {
            0: {"admissions": 1},
            **{h: {"occupancy": 1} for h in range(1, 26)},
            26: {"occupancy": 1, "discharges": 1},
        },
        id="hospital-level stay",
    ),
    pytest.param(
        [Period("s1", 0, "org-a", None, t(0), t(0.5), True)],
        [],
        NO_PLACES,
        Unit("hospital", "org-a", "org-a"),
        {0: {"occupancy": 1, "admissions": 1, "discharges": 1}},
        id="short stay in one hour",
    ),
    pytest.param(
        [
            Period("s1", 0, "org-chu", "b1", t(0), t(2)),
            Period("s1", 1, "org-chu", "b4", t(2), t(3), True),
        ],
        [],
        TREE,
        CARD,
        {0: {"occupancy": 1, "admissions": 1}, 1: {"occupancy": 1}, 2: {"transfers_out": 1}},
        id="transfer out of a ward",
    ),
    pytest.param(
        [
            Period("s1", 0, "org-chu", "b1", t(0), t(2)),
            Period("s1", 1, "org-chu", "b4", t(2), t(3), True),
        ],
        [],
        TREE,
        CARDIO,
        {
            0: {"occupancy": 1, "admissions": 1},
            1: {"occupancy": 1},
            2: {"occupancy": 1},
            3: {"discharges": 1},
        },
        id="a move inside a service is no service transfer",
    ),
    pytest.param(
        [
            Period("s1", 0, "org-chu", "b1", t(0), t(1)),
            Period("s1", 1, "org-chu", "b2", t(1), None),
        ],
        [],
        TREE,
        CARD,
        {0: {"occupancy": 1, "admissions": 1}, 1: {"occupancy": 1}, 2: {"occupancy": 1}},
        id="bed move inside a ward; open stay counted to the watermark",
    ),
    pytest.param(
        [],
        [EdArrival("org-chu", "w-ed", t(1.2)), EdArrival("org-chu", None, t(1.9))],
        TREE,
        HOSP,
        {1: {"ed_arrivals": 2}},
        id="ED arrivals per hospital",
    ),
    pytest.param(
        [],
        [
            EdArrival("org-chu", "w-ed", t(0.5), t(2.5)),  # present at hours 1 and 2
            EdArrival("org-chu", "w-ed", t(1.0), t(1.5)),  # present at hour 1 (inclusive start)
            EdArrival("org-chu", "w-ed", t(2.2)),  # still there: counted to the watermark only
        ],
        TREE,
        Unit("ward", "w-ed", "org-chu"),
        {
            0: {"ed_arrivals": 1},
            1: {"occupancy": 2, "ed_arrivals": 1},
            2: {"occupancy": 1, "ed_arrivals": 1},
        },
        id="ED visits occupy the ED ward from arrival to departure",
    ),
    pytest.param(
        [],
        [EdArrival("org-chu", "w-ed", t(0.5), t(2.5))],
        TREE,
        HOSP,
        {0: {"ed_arrivals": 1}},
        id="ED visits are not in the hospital's inpatient occupancy",
    ),
]


@pytest.mark.parametrize(("periods", "arrivals", "tree", "unit", "expected"), CASES)
def test_hourly_census(
    periods: list[Period],
    arrivals: list[EdArrival],
    tree: Hierarchy,
    unit: Unit,
    expected: dict[int, dict[str, int]],
) -> None:
    rows = hourly_census(periods, arrivals, tree, t(0), t(48), watermark=t(2.5))
    assert rows_for(unit, rows) == expected


def test_hourly_census_only_writes_the_window() -> None:
    periods = [Period("s1", 0, "org-a", None, t(0.5), t(10.5), True)]
    rows = hourly_census(periods, [], NO_PLACES, t(3), t(5))
    assert [r.hour for r in rows] == [t(3), t(4), t(5)]


def test_hourly_census_does_not_depend_on_period_order() -> None:
    periods = [
        Period("s2", 0, "org-chu", "b2", t(1), t(5), True),
        Period("s1", 1, "org-chu", "b4", t(2), t(3), True),
        Period("s1", 0, "org-chu", "b1", t(0), t(2)),
    ]
    a = hourly_census(periods, [], TREE, t(0), t(9))
    b = hourly_census(list(reversed(periods)), [], TREE, t(0), t(9))
    assert a == b


def test_live_occupancy_per_bed_ward_service_hospital() -> None:
    periods = [
        Period("s1", 0, "org-chu", "b1", t(0), None),
        Period("s2", 0, "org-chu", "b2", t(0), t(1), True),
        Period("s3", 0, "org-chu", "b4", t(0), None),
    ]
    occ = {
        (o.unit.unit_type, o.unit.unit_id): (o.occupied, o.capacity)
        for o in live_occupancy(periods, TREE, hierarchy_units(TREE))
    }
    assert occ[("bed", "b1")] == (1, 1)
    assert occ[("bed", "b2")] == (0, 1)
    assert occ[("ward", "w-card")] == (1, 2)
    assert occ[("service", "org-chu/cardio")] == (2, 3)
    assert occ[("hospital", "org-chu")] == (2, 3)  # inpatient beds only
    assert occ[("ward", "w-ed")] == (0, 10)
    with_ed = {
        (o.unit.unit_type, o.unit.unit_id): (o.occupied, o.capacity)
        for o in live_occupancy(
            periods,
            TREE,
            hierarchy_units(TREE),
            [EdArrival("org-chu", "w-ed", t(1)), EdArrival("org-chu", "w-ed", t(0), t(1))],
        )
    }
    assert with_ed[("ward", "w-ed")] == (1, 10)  # the open visit, against the ED boxes
    assert with_ed[("service", "org-chu/urgences")] == (1, 10)
    assert with_ed[("hospital", "org-chu")] == (2, 3)


def test_occupancy_at_a_past_instant() -> None:
    periods = [
        Period("s1", 0, "org-chu", "b1", t(0), t(5), True),
        Period("s2", 0, "org-chu", "b2", t(3), None),
    ]
    occ = {
        (o.unit.unit_type, o.unit.unit_id): o.occupied for o in occupancy_at(periods, TREE, t(4))
    }
    assert occ[("ward", "w-card")] == 2
    occ = {
        (o.unit.unit_type, o.unit.unit_id): o.occupied for o in occupancy_at(periods, TREE, t(5))
    }
    assert occ[("ward", "w-card")] == 1


EPISODES = [
    pytest.param([(0, 5), (1, 3)], 2, None, [], False, id="never above"),
    pytest.param([(0, 5), (1, 3), (2, 4)], 2, None, [(2, 3, 3)], False, id="one episode"),
    pytest.param(
        [(0, 5), (1, 3), (3, None), (4, None)],
        1,
        None,
        [(1, None, 3)],
        False,
        id="still above: open",
    ),
    pytest.param(
        [(0, 2), (2, 4), (1, 3)], 1, None, [(1, 3, 2)], False, id="leave and arrive at once"
    ),
    pytest.param(
        [(0, 5), (1, 6), (4, 8)], 1, 3, [(3, 6, 3)], True, id="carried over from before since"
    ),
]


@pytest.mark.parametrize(("spans", "capacity", "since", "expected", "carried"), EPISODES)
def test_over_capacity_episodes(
    spans: list[tuple[float, float | None]],
    capacity: int,
    since: float | None,
    expected: list[tuple[float, float | None, int]],
    carried: bool,
) -> None:
    periods = [
        Period(f"s{i}", 0, "h", "w", t(a), t(b) if b is not None else None)
        for i, (a, b) in enumerate(spans)
    ]
    episodes, was_carried = over_capacity_episodes(
        "w", periods, capacity, t(since) if since is not None else None
    )
    got = [(e.start, e.end, e.peak) for e in episodes]
    assert got == [(t(a), t(b) if b is not None else None, p) for a, b, p in expected]
    assert was_carried is carried


def test_floor_hour_is_utc() -> None:
    from zoneinfo import ZoneInfo

    local = datetime(2026, 3, 2, 9, 45, tzinfo=ZoneInfo("Europe/Paris"))
    assert floor_hour(local) == datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("unit", "name"),
    [(HOSP, "CHU"), (CARD, None), (CARDIO, "Cardiologie"), (Unit("hospital", "x", "x"), None)],
)
def test_unit_names(unit: Unit, name: str | None) -> None:
    assert TREE.name_of(unit) == name


def test_a_hospital_is_named_after_its_site_not_a_ward_of_the_same_organization() -> None:
    # Feeds often put managingOrganization on wards and beds too, and may send them first.
    tree = Hierarchy(
        places={
            "w-ed": Place("w-ed", "wa", "site", organization="org-chu", name="Urgences"),
            "b1": Place("b1", "bd", "w-ed", organization="org-chu", name="Urgences lit 1"),
            "site": Place("site", "si", None, organization="org-chu", name="CHU Dijon"),
        }
    )
    assert tree.name_of(HOSP) == "CHU Dijon"


@st.composite
def _stays(draw: st.DrawFn) -> tuple[list[Period], list[EdArrival]]:
    """Stays of one to three periods in the CHU's beds and wards (some open), and ED visits."""
    places = ["b1", "b2", "b4", "w-card", "w-ed", None]
    periods: list[Period] = []
    for n in range(draw(st.integers(0, 6))):
        at = draw(st.floats(-30, 200)).__round__(2)
        parts = draw(st.integers(1, 3))
        for seq in range(parts):
            length = draw(st.one_of(st.none(), st.floats(0, 60))) if seq == parts - 1 else 5.0
            end = None if length is None else t(at + length)
            last = seq == parts - 1
            periods.append(
                Period(f"s{n}", seq, "org-chu", draw(st.sampled_from(places)), t(at), end, last)
            )
            if end is None:
                break
            at += length  # type: ignore[operator]
    arrivals = [
        EdArrival("org-chu", "w-ed", t(at), None if stay is None else t(at + stay))
        for at, stay in draw(
            st.lists(st.tuples(st.floats(-30, 200), st.one_of(st.none(), st.floats(0, 30))))
        )
    ]
    return periods, arrivals


@given(
    _stays(),
    st.floats(-10, 100),
    st.floats(0, 150),
    st.integers(1, 40),
    st.one_of(st.none(), st.floats(0, 250)),
)
def test_the_census_of_its_slices_is_the_census_of_the_window(
    stays: tuple[list[Period], list[EdArrival]],
    lo: float,
    length: float,
    span_hours: int,
    watermark: float | None,
) -> None:
    periods, arrivals = stays
    mark = None if watermark is None else t(watermark)
    whole = hourly_census(periods, arrivals, TREE, t(lo), t(lo + length), mark)
    sliced = [
        row
        for first, last, in_slice, arrived in census_slices(
            periods, arrivals, t(lo), t(lo + length), timedelta(hours=span_hours)
        )
        for row in hourly_census(in_slice, arrived, TREE, first, last, mark)
    ]
    key = lambda r: (r.unit.unit_type, r.unit.unit_id, r.hour)  # noqa: E731
    assert sorted(sliced, key=key) == whole


def test_census_slices_are_those_something_reaches_or_that_hold_stored_hours() -> None:
    periods = [
        Period("early", 0, "org-chu", "b1", t(0), t(2), True),
        Period("late", 0, "org-chu", "b2", t(72), t(74), True),
        Period("open", 0, "org-chu", "b4", t(50), None),
    ]
    arrivals = [EdArrival("org-chu", "w-ed", t(1), t(3))]
    slices = list(census_slices(periods, arrivals, t(0.5), t(119.5), timedelta(hours=24), [t(30)]))
    # Day 1 holds a stored hour only; days 2 to 4 are reached by the open stay.
    assert [(first, last) for first, last, _, _ in slices] == [
        (t(0), t(23)),
        (t(24), t(47)),
        (t(48), t(71)),
        (t(72), t(95)),
        (t(96), t(119)),
    ]
    assert [sorted(p.stay_id for p in ps) for _, _, ps, _ in slices] == [
        ["early"],
        [],
        ["open"],
        ["late", "open"],
        ["open"],
    ]
    assert [len(a) for _, _, _, a in slices] == [1, 0, 0, 0, 0]
    # Without the stored hour and the open stay, the days nothing reaches are left out.
    closed = periods[:2]
    assert [
        first for first, _, _, _ in census_slices(closed, [], t(0), t(119), timedelta(hours=24))
    ] == [t(0), t(72)]


def test_a_hospital_no_location_names_takes_its_organizations_name() -> None:
    tree = Hierarchy(
        places=TREE.places,
        organizations={"org-chu": "CHU (Organization)", "org-ch": "CH de Belleau", "w": "Ward?"},
    )
    # The site Location's name first; else the Organization's; only for hospitals.
    assert tree.name_of(HOSP) == "CHU"
    assert tree.name_of(Unit("hospital", "org-ch", "org-ch")) == "CH de Belleau"
    assert tree.name_of(Unit("ward", "w", "org-ch")) is None
    assert tree.name_of(Unit("hospital", "nobody", "nobody")) is None


def test_a_part_of_chain_longer_than_any_building_is_climbed_only_so_far() -> None:
    from streams.core.census import MAX_LEVELS

    # bed → room → ward → floor → building → site (its Organization): read whole.
    kinds = ["bd", "ro", "wa", "lvl", "bu", "si"]
    tree = {
        f"p{i}": Place(
            f"p{i}",
            kind,
            part_of=f"p{i + 1}" if i + 1 < len(kinds) else None,
            organization="chu" if kind == "si" else None,
        )
        for i, kind in enumerate(kinds)
    }
    assert Hierarchy(tree).hospital_of("p0") == "chu"
    assert Hierarchy(tree).ward_of("p0") == "p2"
    # A chain of 10,000 places (each one's partOf the next) is a feed's mistake: climbing it
    # whole from each of its places would take the square of its length.
    n = 10_000
    chain = {f"c{i}": Place(f"c{i}", "wa", part_of=f"c{i + 1}") for i in range(n)}
    chain[f"c{n - 1}"] = Place(f"c{n - 1}", "si", organization="far")
    hierarchy = Hierarchy(chain)
    assert len(hierarchy._climb("c0")) == MAX_LEVELS
    assert hierarchy.hospital_of("c0") is None
    assert hierarchy.hospital_of(f"c{n - 5}") == "far"
    assert hierarchy.ward_of("c0") == "c0"
    # A loop is climbed once round.
    loop = {"a": Place("a", "wa", part_of="b"), "b": Place("b", "wa", part_of="a")}
    assert [p.location_id for p in Hierarchy(loop)._climb("a")] == ["a", "b"]
