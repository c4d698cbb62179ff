"""Pure helpers for FHIR Bundles: resolve `urn:uuid` references and find each resource's patient.

Synthea and many integrators send transaction Bundles whose entries reference each other by
`fullUrl: urn:uuid:…`. Downstream, every resource must carry `Type/id` references and a patient
key, so references are rewritten here, once, at the edge.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

from parcours.fhir_refs import pathway_patient, reference_to

PATIENT_FIELDS = ("subject", "patient", "beneficiary")


def _walk_references(node: Any) -> Iterator[dict[str, Any]]:
    """Every dict with a string `reference` inside `node` (contained resources included)."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node
        for value in node.values():
            yield from _walk_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_references(item)


def _url_key(url: str) -> str:
    """`url` as fullUrls are matched: a `urn:uuid:` or `urn:oid:` in lower case."""
    return url.lower() if url[:4].lower() == "urn:" else url


def resolve_entries(bundle: dict[str, Any], in_place: bool = False) -> list[dict[str, Any]]:
    """The Bundle's resources, each with an id and with `urn:uuid` references rewritten.

    An entry without `resource.id` gets the uuid of its `urn:uuid:` fullUrl, or a new uuid.
    References to a fullUrl of the same Bundle become `Type/id`; others are left as they are. A
    `urn:` reference matches its fullUrl whatever the case (a UUID or OID is read alike in
    either case).
    The input is not modified, unless `in_place` (the gateway owns the JSON it just parsed, and
    copying every resource costs a fifth of validating it).
    """
    resources: list[dict[str, Any]] = []
    by_full_url: dict[str, str] = {}
    for entry in bundle.get("entry") or []:
        found = entry.get("resource")
        resource = found if in_place and isinstance(found, dict) else copy.deepcopy(found or {})
        full_url = entry.get("fullUrl")
        if not resource.get("id"):
            if isinstance(full_url, str) and full_url.startswith("urn:uuid:"):
                resource["id"] = full_url.removeprefix("urn:uuid:")
            else:
                resource["id"] = str(uuid.uuid4())
        if isinstance(full_url, str) and "resourceType" in resource:
            by_full_url[_url_key(full_url)] = f"{resource['resourceType']}/{resource['id']}"
        resources.append(resource)
    # Bundles whose fullUrls are already `Type/id` (or absent) have nothing to rewrite: skip the
    # walk through every element, which costs a tenth of validating the resource.
    if all(url == target for url, target in by_full_url.items()):
        return resources
    for resource in resources:
        for ref in _walk_references(resource):
            target = by_full_url.get(_url_key(ref["reference"]))
            if target is not None:
                ref["reference"] = target
    return resources


def patient_key(resource: dict[str, Any]) -> str | None:
    """The patient id a resource belongs to: its own id for a Patient, else subject/patient/
    beneficiary, else (Appointment) the first participant actor that references a Patient. None
    for resources of no single patient. References are read as the stream mapping reads them
    (`parcours.fhir_refs.reference_to`): an absolute URL names the same patient as `Patient/id`.
    For the types the worker folds onto a pathway, it is the patient the worker folds them under
    (`parcours.fhir_refs.pathway_patient`), so key, owner and pathway agree."""
    if resource.get("resourceType") == "Patient":
        return str(resource["id"]) if resource.get("id") else None
    folded = pathway_patient(resource)
    if folded is not None:
        return folded.patient_id
    for name in PATIENT_FIELDS:
        found = reference_to(resource.get(name), "Patient")
        if found:
            return found
    # An Appointment names its patient among its participants, next to practitioners.
    for participant in resource.get("participant") or []:
        found = reference_to(
            participant.get("actor") if isinstance(participant, dict) else None, "Patient"
        )
        if found:
            return found
    return None
