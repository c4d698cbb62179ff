"""The Location hierarchy the sink places periods and ED visits in: read from SQL, kept in memory,
and changed by the Locations of a batch (which re-places the stored periods that point there)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.engine import Connection

from parcours.db import upsert
from parcours.db.bulk import bulk_update, bulk_write, chunks, one_of, table_of
from parcours.db.pathway_models import (
    CensusHourlyRow,
    EdVisitRow,
    LocationOccupancyRow,
    LocationRow,
    OrganizationRow,
    SinkVersionRow,
    StayLocationRow,
)
from streams.core.census import HOSPITAL, UNKNOWN_HOSPITAL, WARD, Hierarchy, Unit
from streams.core.events import LocationRecorded, OrganizationRecorded
from streams.sink.rows import (
    NEVER_HI,
    NEVER_LO,
    SinkResult,
    Window,
    location_row,
    place_of,
    widen_window,
)

# The `sink_versions` row counting the changes of the Location tree.
TREE = "locations"
# The prefix of the `sink_versions` rows naming a Location version the database refused.
REFUSED = "refused-location:"
_VERSION = table_of(SinkVersionRow)

log = logging.getLogger(__name__)


def refused_name(location: LocationRecorded) -> str:
    """The `sink_versions` row naming `location`'s version as refused (a hash: ids are long)."""
    digest = hashlib.sha1(  # a name, not a secret
        f"{location.location_id}\x00{location.source.version}".encode(), usedforsecurity=False
    ).hexdigest()
    return REFUSED + digest


def remember_refused(conn: Connection, locations: Sequence[LocationRecorded]) -> None:
    """Record that the database refused these Location versions."""
    rows = [{"name": refused_name(ev), "version": 1} for ev in locations]
    if rows:
        upsert(conn, _VERSION, rows, key=["name"])


def without_refused(
    conn: Connection, locations: Sequence[LocationRecorded]
) -> list[LocationRecorded]:
    """`locations` but the versions the database refused before: the directory topic is read
    again at every start, and a refused version must go to the dead letters once."""
    names = {refused_name(ev): ev for ev in locations}
    known: set[str] = set()
    for part in chunks(sorted(names)):
        found = select(_VERSION.c.name).where(one_of(conn, _VERSION.c.name, part))
        known.update(conn.scalars(found))
    if known:
        log.info("skipped %d Location versions the database refused before", len(known))
    return [ev for name, ev in names.items() if name not in known]


class LocationTree:
    """The Location tree as this sink last read or wrote it."""

    def __init__(self, capacity: Mapping[str, int] | None = None) -> None:
        self.capacity = dict(capacity or {})
        self.hierarchy = Hierarchy({}, self.capacity)
        self._loaded = False
        # `sink_versions` of the Location tree when it was last read or written here.
        self._tree_version: int | None = None

    def load(self, conn: Connection) -> Hierarchy:
        """(Re)read the Location tree from SQL."""
        rows = conn.execute(select(table_of(LocationRow))).mappings().all()
        org = table_of(OrganizationRow)
        names = dict(conn.execute(select(org.c.organization_id, org.c.name)).all())
        self.hierarchy = Hierarchy(
            {r["location_id"]: place_of(dict(r)) for r in rows}, self.capacity, names
        )
        self._tree_version = conn.scalar(select(_VERSION.c.version).where(_VERSION.c.name == TREE))
        self._loaded = True
        return self.hierarchy

    def fresh(self, conn: Connection) -> None:
        """Read the tree again if another worker's sink changed it since this one last did."""
        version = conn.scalar(select(_VERSION.c.version).where(_VERSION.c.name == TREE))
        if not self._loaded or version != self._tree_version:
            self.load(conn)

    def forget(self) -> None:
        """Read the tree again at the next `fresh` (a transaction that changed it rolled back)."""
        self._loaded = False

    def changed(self, conn: Connection) -> None:
        """Count one more change of the tree in `sink_versions`."""
        # Called in the sink's turn (the advisory lock), right after `fresh`: no other
        # writer can bump the version in between.
        self._tree_version = (self._tree_version or 0) + 1
        upsert(conn, _VERSION, [{"name": TREE, "version": self._tree_version}], key=["name"])

    def resolve(
        self, hierarchy: Hierarchy, hint: str | None, location: str | None, ward_ref: str | None
    ) -> tuple[str, str | None, str | None]:
        """(hospital, ward, bed) of a period: the Encounter's hospital first, else the tree's."""
        hospital = hint or hierarchy.hospital_of(location or ward_ref) or UNKNOWN_HOSPITAL
        ward = hierarchy.units_of(hospital, location, ward_ref)[WARD]
        return hospital, ward.unit_id if ward else None, hierarchy.bed_of(location)

    def apply_organizations(
        self, conn: Connection, organizations: Sequence[OrganizationRecorded], result: SinkResult
    ) -> Hierarchy:
        """Store the Organizations of a batch; the hospitals they name take their names, on the
        board too."""
        if not organizations:
            return self.hierarchy
        rows = {
            ev.organization_id: {
                "organization_id": ev.organization_id,
                "name": ev.name,
                "source_version": ev.source.version,
            }
            for ev in organizations
        }
        bulk_write(conn, table_of(OrganizationRow), list(rows.values()), key=["organization_id"])
        result.rows += len(rows)
        old = self.hierarchy
        names = {oid: row["name"] for oid, row in rows.items()}
        if all(old.organizations.get(oid, "") == name for oid, name in names.items()):
            return old
        new = Hierarchy(old.places, self.capacity, {**old.organizations, **names})
        self.hierarchy = new
        self.changed(conn)
        named = [
            {"unit_type": HOSPITAL, "unit_id": oid, "name": new.name_of(Unit(HOSPITAL, oid, oid))}
            for oid in names
        ]
        bulk_update(conn, table_of(LocationOccupancyRow), named, key=["unit_type", "unit_id"])
        return new

    def apply(
        self,
        conn: Connection,
        locations: Sequence[LocationRecorded],
        windows: dict[str, Window],
        result: SinkResult,
    ) -> Hierarchy:
        if not locations:
            return self.hierarchy
        locations = without_refused(conn, locations)
        if not locations:
            return self.hierarchy
        rows = {ev.location_id: location_row(ev) for ev in locations}
        old = self.hierarchy
        changed = [lid for lid, row in rows.items() if old.places.get(lid) != place_of(row)]
        bulk_write(conn, table_of(LocationRow), list(rows.values()), key=["location_id"])
        result.rows += len(rows)
        if not changed:
            return old
        places = dict(old.places)
        places.update({lid: place_of(rows[lid]) for lid in changed})
        new = Hierarchy(places, self.capacity, old.organizations)
        self.hierarchy = new
        self.changed(conn)
        # Periods pointing at a changed place (or at a bed of a changed ward) resolve anew.
        touched = set(changed) | {p.location_id for p in places.values() if p.part_of in changed}
        # While the tree is incomplete a site's Location id stands for its hospital; once the
        # site (and its Organization) is known, what was filed under that stand-in goes.
        occ, ch = table_of(LocationOccupancyRow), table_of(CensusHourlyRow)
        stand_ins = sorted(touched)
        sl = table_of(StayLocationRow)
        found: list[Any] = []
        for part in chunks(stand_ins):
            conn.execute(
                delete(occ).where(
                    or_(one_of(conn, occ.c.hospital_id, part), one_of(conn, occ.c.unit_id, part))
                )
            )
            conn.execute(delete(ch).where(one_of(conn, ch.c.hospital_id, part)))
            found += conn.execute(
                select(
                    sl.c.stay_id,
                    sl.c.seq,
                    sl.c.hospital_id,
                    sl.c.location_id,
                    sl.c.ward_ref,
                    sl.c.ward_id,
                    sl.c.bed_id,
                    sl.c.start_at,
                    sl.c.end_at,
                ).where(
                    or_(one_of(conn, sl.c.location_id, part), one_of(conn, sl.c.ward_ref, part))
                )
            ).all()
        stays = {r.stay_id for r in found}
        moved = []
        for r in found:
            # A period filed under no known hospital (no serviceProvider, Location not yet
            # received) takes the hospital of its Location once the Location arrives.
            hint = None if r.hospital_id == UNKNOWN_HOSPITAL else r.hospital_id
            home, ward, bed = self.resolve(new, hint, r.location_id, r.ward_ref)
            if (home, ward, bed) != (r.hospital_id, r.ward_id, r.bed_id):
                moved.append(
                    {
                        "stay_id": r.stay_id,
                        "seq": r.seq,
                        "hospital_id": home,
                        "ward_id": ward,
                        "bed_id": bed,
                    }
                )
                if home != r.hospital_id:
                    widen_window(windows, r.hospital_id, r.start_at, r.end_at or r.start_at)
        bulk_update(conn, sl, moved, key=["stay_id", "seq"])
        for part in chunks(sorted(stays)):
            spans = conn.execute(
                select(sl.c.hospital_id, func.min(sl.c.start_at), func.max(sl.c.start_at))
                .where(one_of(conn, sl.c.stay_id, part))
                .group_by(sl.c.hospital_id)
            ).all()
            for hospital, lo, hi in spans:
                widen_window(windows, hospital, lo, hi)
        # ED visits count in the ED ward and its service too.
        ed = table_of(EdVisitRow)
        placed = []
        for part in chunks(stand_ins):
            for visit in conn.execute(
                select(ed.c.encounter_id, ed.c.ward_id, ed.c.arrived_at, ed.c.departed_at).where(
                    and_(
                        one_of(conn, ed.c.ward_id, part),
                        or_(ed.c.hospital_id.is_(None), ed.c.hospital_id == UNKNOWN_HOSPITAL),
                    )
                )
            ).all():
                found_hospital = new.hospital_of(visit.ward_id)
                if found_hospital:
                    placed.append(
                        {"encounter_id": visit.encounter_id, "hospital_id": found_hospital}
                    )
                    end = visit.departed_at or visit.arrived_at
                    widen_window(windows, UNKNOWN_HOSPITAL, visit.arrived_at, end)
        bulk_update(conn, ed, placed, key=["encounter_id"])
        for part in chunks(stand_ins):
            for hospital, lo, hi in conn.execute(
                select(
                    ed.c.hospital_id,
                    func.min(ed.c.arrived_at),
                    func.max(func.coalesce(ed.c.departed_at, ed.c.arrived_at)),
                )
                .where(one_of(conn, ed.c.ward_id, part))
                .group_by(ed.c.hospital_id)
            ).all():
                widen_window(windows, hospital or UNKNOWN_HOSPITAL, lo, hi)
        for place in places.values():
            if place.location_id in touched:
                hospital = new.hospital_of(place.location_id)
                if hospital:
                    # Occupancy rows of a hospital list its wards even when they are empty.
                    windows.setdefault(hospital, Window(NEVER_LO, NEVER_HI))
        return new

    def resolve_places(
        self,
        hierarchy: Hierarchy,
        periods: list[dict[str, Any]],
        ed_visits: list[dict[str, Any]],
    ) -> None:
        """Fill in the hospital, ward and bed of new periods and ED visits from the tree."""
        for row in periods:
            hospital, ward, bed = self.resolve(
                hierarchy, row.get("hospital_id"), row.get("location_id"), row.get("ward_ref")
            )
            row.update(hospital_id=hospital, ward_id=ward, bed_id=bed)
        for row in ed_visits:
            row["hospital_id"] = row.get("hospital_id") or hierarchy.hospital_of(row.get("ward_id"))
