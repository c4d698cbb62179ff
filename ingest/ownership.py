"""Which integrator may write which patient, and which resource of no patient.

- A patient belongs to the integrator that first wrote anything about it (its Patient resource
  or a resource whose subject it is): that write claims the patient id. A Patient merged into
  another (`link` replaced-by) needs the right to write that other patient too.
- A resource of no patient (Location, Organization, Practitioner, HealthcareService…) belongs
  to the integrator that first wrote that `Type/id`: a later version from anyone else would
  rename another hospital's ward or close it.
- An identifier system (a hospital's IPP namespace, say) belongs to the integrators an admin
  assigned it to (`parcours ingest grant NAME --system S`): once assigned, a Patient carrying
  an identifier of that system can be written only by them. Writing a Patient never claims a
  system: shared namespaces (the national INS, a regional id) appear in every feed, and the
  first to send one would lock everyone else out. A system nobody was assigned stays open.

Anyone else gets 403, unless an admin grants them the patient, the resource, the system, or
everything an integrator owns (`--from OWNER`).

Claims and grants are only ever added, so an allowed (integrator, claim) pair is cached for the
life of the process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from ingest.bundle import patient_key
from parcours.db import upsert
from parcours.db.bulk import keyed
from parcours.db.ingest_models import IngestGrantRow, IngestOwnerRow
from parcours.fhir_refs import reference_to

Claim = tuple[str, str]
KINDS = ("patient", "resource", "system", "owner")
# Kinds claimed by the first write; systems are only ever assigned by an admin.
CLAIMED_BY_WRITING = frozenset({"patient", "resource"})
MAX_VALUE = 512
# Patient records whose SQL rows (stays, visits, referrals, appointments) are keyed by their id.
ROW_KEYED = frozenset({"Encounter", "Appointment", "ServiceRequest", "EpisodeOfCare"})
CACHE_SIZE = 200_000
# Most values of one kind a lookup names.
VALUES_PER_KIND = 500


@lru_cache(maxsize=32)
def _owners_query(kinds: tuple[str, ...]) -> Any:
    """`SELECT kind, value, integrator … WHERE (kind = k1 AND value IN :v0) OR …`, one term per
    kind (each answered by the primary key), built once per set of kinds: building a statement
    costs more than running it."""
    t = IngestOwnerRow.__table__
    return select(t.c.kind, t.c.value, t.c.integrator).where(
        or_(
            *(
                and_(t.c.kind == kind, t.c.value.in_(bindparam(f"v{i}", expanding=True)))
                for i, kind in enumerate(kinds)
            )
        )
    )


@lru_cache(maxsize=4)
def _claim_statement(dialect: str) -> Any:
    """`INSERT … ON CONFLICT DO NOTHING RETURNING kind, value`: the rows it returns are the
    claims this insert made."""
    t = IngestOwnerRow.__table__
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(t)
        .on_conflict_do_nothing(index_elements=["kind", "value"])
        .returning(t.c.kind, t.c.value)
    )


def claims_of(resource: dict[str, Any], root: str) -> Iterator[tuple[Claim, str]]:
    """What writing `resource` requires owning, each with the element that names it."""
    key = patient_key(resource)
    if key:
        where = f"{root}.id" if resource.get("resourceType") == "Patient" else root
        yield ("patient", key[:MAX_VALUE]), where
        if resource.get("resourceType") in ROW_KEYED and resource.get("id"):
            # Its SQL rows are keyed by its id alone: another integrator's resource of the same
            # id, for one of its own patients, would take them over.
            yield (
                ("resource", f"{resource['resourceType']}/{resource['id']}"[:MAX_VALUE]),
                f"{root}.id",
            )
    elif resource.get("resourceType") != "Patient" and resource.get("id"):
        yield ("resource", f"{resource['resourceType']}/{resource['id']}"[:MAX_VALUE]), f"{root}.id"
    if resource.get("resourceType") != "Patient":
        return
    # A merge (link replaced-by) moves this patient's records to the other one: writing it
    # needs the right to write that one too.
    links = resource.get("link")
    for i, link in enumerate(links if isinstance(links, list) else []):
        if isinstance(link, dict) and link.get("type") == "replaced-by":
            other = reference_to(link.get("other"), "Patient")
            if other and other != key:
                yield ("patient", other[:MAX_VALUE]), f"{root}.link[{i}].other"
    identifiers = resource.get("identifier")
    for i, ident in enumerate(identifiers if isinstance(identifiers, list) else []):
        system = ident.get("system") if isinstance(ident, dict) else None
        if isinstance(system, str) and system:
            yield ("system", system[:MAX_VALUE]), f"{root}.identifier[{i}].system"


class OwnershipStore:
    """SQL side of ownership: check, claim and grant."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._allowed: set[tuple[str, Claim]] = set()
        self._lock = threading.Lock()

    def forbidden(self, source: str, claims: Iterable[Claim]) -> dict[Claim, str]:
        """The claims `source` may not write (another integrator owns them and granted nothing),
        each with its owner. Reads only: what nobody owns is claimed by `claim`, once the caller
        knows what it will publish, so that a refused request claims nothing."""
        with self._lock:
            wanted = [c for c in dict.fromkeys(claims) if (source, c) not in self._allowed]
        if not wanted:
            return {}
        owners = self._owners(wanted)
        denied = self._denied(source, owners)
        with self._lock:
            if len(self._allowed) > CACHE_SIZE:
                self._allowed.clear()
            self._allowed.update((source, c) for c in wanted if c in owners and c not in denied)
        return denied

    def claim(self, source: str, claims: Iterable[Claim]) -> dict[Claim, str]:
        """Claim for `source` the patients and resources of `claims` that nobody owns (before
        anything is published); returns those another integrator claimed first meanwhile (a
        concurrent request), which `source` may not write after all."""
        with self._lock:
            wanted = [
                c
                for c in dict.fromkeys(claims)
                if c[0] in CLAIMED_BY_WRITING and (source, c) not in self._allowed
            ]
        if not wanted:
            return {}
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            # A claim already made stays as it is: what the insert returns is claimed now, and
            # only the rest (claimed by someone meanwhile) is read back.
            made = conn.execute(
                _claim_statement(conn.dialect.name),
                [
                    {"kind": k, "value": v, "integrator": source, "claimed_at": now}
                    for k, v in wanted
                ],
            )
            owners = {(r[0], r[1]): source for r in made}
            rest = [c for c in wanted if c not in owners]
            if rest:
                owners.update(self._owners(rest, conn))
        lost = self._denied(source, owners)
        with self._lock:
            self._allowed.update((source, c) for c in wanted if c in owners and c not in lost)
        return lost

    def _denied(self, source: str, owners: dict[Claim, str]) -> dict[Claim, str]:
        others = {c: o for c, o in owners.items() if o != source}
        granted = self._granted(source, others) if others else set()
        return {c: o for c, o in others.items() if c not in granted}

    def _owners(self, claims: list[Claim], conn: Connection | None = None) -> dict[Claim, str]:
        if conn is None:
            with self.engine.connect() as own:
                return self._owners(claims, own)
        if not claims:
            return {}
        by_kind: dict[str, list[str]] = {}
        for kind, value in claims:
            by_kind.setdefault(kind, []).append(value)
        kinds = tuple(sorted(by_kind))
        found: dict[Claim, str] = {}
        for start in range(0, max(len(v) for v in by_kind.values()), VALUES_PER_KIND):
            params = {
                f"v{i}": by_kind[kind][start : start + VALUES_PER_KIND]
                for i, kind in enumerate(kinds)
            }
            rows = conn.execute(_owners_query(kinds), params)
            found.update(((r[0], r[1]), r[2]) for r in rows)
        return found

    def _granted(self, source: str, owned: dict[Claim, str]) -> set[Claim]:
        g = IngestGrantRow.__table__
        owner_names = sorted(set(owned.values()))
        wanted = [*owned, *(("owner", name) for name in owner_names)]
        grants: set[Claim] = set()
        with self.engine.connect() as conn:
            for where in keyed(g, ("kind", "value"), wanted):
                rows = conn.execute(
                    select(g.c.kind, g.c.value).where(g.c.integrator == source, where)
                )
                grants.update((r[0], r[1]) for r in rows)
        return {c for c, owner in owned.items() if c in grants or ("owner", owner) in grants}


def grant(engine: Engine, integrator: str, kind: str, value: str) -> None:
    """Let `integrator` write a patient, a resource (`Type/id`), an identifier system, or all
    an owner owns."""
    if kind not in KINDS:
        raise ValueError(f"unknown grant kind {kind!r}")
    with engine.begin() as conn:
        upsert(
            conn,
            IngestGrantRow,
            [
                {
                    "kind": kind,
                    "value": value[:MAX_VALUE],
                    "integrator": integrator,
                    "granted_at": datetime.now(UTC),
                }
            ],
            key=["kind", "value", "integrator"],
            update=[],
        )


def assign_system(engine: Engine, integrator: str, system: str) -> bool:
    """Make `integrator` the owner of identifier `system` if nobody owns it yet; True if it
    now owns it, False if another does (then grant it instead)."""
    with engine.begin() as conn:
        upsert(
            conn,
            IngestOwnerRow,
            [
                {
                    "kind": "system",
                    "value": system[:MAX_VALUE],
                    "integrator": integrator,
                    "claimed_at": datetime.now(UTC),
                }
            ],
            key=["kind", "value"],
            update=[],
        )
        owner = conn.scalar(
            select(IngestOwnerRow.integrator).where(
                IngestOwnerRow.kind == "system", IngestOwnerRow.value == system[:MAX_VALUE]
            )
        )
    return owner == integrator
