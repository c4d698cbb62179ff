"""OwnershipStore against real databases: who owns what, claims made by two processes, and
lookups of more values than one statement names."""

from __future__ import annotations

import uuid

from ingest.ownership import VALUES_PER_KIND, OwnershipStore, grant
from parcours.db import make_engine


def test_claims_of_two_processes_and_large_lookups(db_url: str) -> None:
    engine = make_engine(db_url)
    tag = uuid.uuid4().hex[:8]
    # Two stores are two processes (each with its own cache of allowed claims).
    first, second = OwnershipStore(engine), OwnershipStore(engine)
    taken = ("patient", f"{tag}-p1")
    free = ("patient", f"{tag}-p2")
    ward = ("resource", f"Location/{tag}-w")
    system = ("system", f"urn:oid:1.2.{tag.encode().hex()[:6]}")
    wanted = [taken, free, ward, system]

    assert first.forbidden("a", wanted) == {}
    # The other process claims one patient between the check and the claim.
    assert second.claim("b", [taken]) == {}
    lost = first.claim("a", wanted)
    assert lost == {taken: "b"}
    # What "a" claimed is its own; a system is never claimed by writing.
    assert second.forbidden("b", wanted) == {free: "a", ward: "a"}
    assert first.forbidden("a", wanted) == {taken: "b"}
    assert first.claim("a", [free, ward]) == {}
    # A grant lets "a" write the patient "b" claimed.
    grant(engine, "a", "patient", taken[1])
    assert OwnershipStore(engine).forbidden("a", wanted) == {}

    # More values of each kind than one statement names: every one is found, none invented.
    many = [("patient", f"{tag}-m{i}") for i in range(VALUES_PER_KIND * 2 + 7)]
    many += [("resource", f"Encounter/{tag}-e{i}") for i in range(VALUES_PER_KIND + 3)]
    assert second.claim("b", many[::2]) == {}
    denied = OwnershipStore(engine).forbidden("a", many)
    assert denied == dict.fromkeys(many[::2], "b")
    assert OwnershipStore(engine).claim("a", many) == dict.fromkeys(many[::2], "b")
    assert OwnershipStore(engine).forbidden("b", many) == dict.fromkeys(many[1::2], "a")
    engine.dispose()
