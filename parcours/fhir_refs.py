"""How Parcours reads a FHIR Reference: one definition for the gateway (patient keys, ownership)
and the stream mapping, so that what the gateway checks is what the worker folds. Also the one
rule on patient merges that both gateways (FHIR and HL7 v2) apply."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Longest chain of merges followed when looking for a loop.
MAX_MERGE_CHAIN = 32
# A FHIR id. A patient id read from a reference becomes a Kafka key and an SQL key (128 wide).
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# The element in which the stream worker reads the patient of each type it folds onto a
# pathway (Appointment: the first `participant[].actor` that names a Patient). A resource of
# these types that names no usable patient there is dead-lettered by the worker, so the gateway
# refuses it first.
PATIENT_ELEMENTS: dict[str, str] = {
    "Encounter": "subject",
    "ServiceRequest": "subject",
    "EpisodeOfCare": "patient",
    "Appointment": "participant",
}


def reference_to(ref: Any, *types: str) -> str | None:
    """The id `ref` points to when it names one of `types`: `Type/id`, an absolute URL ending in
    `Type/id` (possibly followed by `_history/version`), or a bare `urn:uuid`."""
    if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
        return None
    text: str = ref["reference"]
    if text.startswith("urn:uuid:"):
        return text.removeprefix("urn:uuid:")
    parts = text.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] in types and parts[-1]:
        return parts[-1]
    return None


@dataclass(frozen=True)
class PathwayPatient:
    """The patient a resource is folded under (`patient_id`), or, when None, the element that
    should have named one (`element`, FHIRPath below the resource) and why (`problem`)."""

    patient_id: str | None
    element: str
    problem: str = ""


def pathway_patient(resource: Mapping[str, Any]) -> PathwayPatient | None:
    """The patient the stream worker folds `resource` under; None for types it folds under no
    patient element (Patient is keyed by its own id; Location, Organization… by `Type/id`; the
    types it does not map are published raw).

    The patient is what `reference_to(…, "Patient")` reads, and must be a FHIR id."""
    rtype = resource.get("resourceType")
    element = PATIENT_ELEMENTS.get(rtype) if isinstance(rtype, str) else None
    if element is None:
        return None
    if element == "participant":
        return _participant_patient(resource)
    ref = resource.get(element)
    found = reference_to(ref, "Patient")
    if found is not None and FHIR_ID.match(found):
        return PathwayPatient(found, element)
    if not isinstance(ref, dict):
        return PathwayPatient(None, element, f"{rtype}.{element} is missing: {_NEEDS}")
    text = ref.get("reference")
    if not isinstance(text, str):
        return PathwayPatient(
            None, element, f"{rtype}.{element} has no reference (Patient/<id>): {_NEEDS}"
        )
    return PathwayPatient(
        None,
        f"{element}.reference",
        f"{rtype}.{element}.reference {_shown(text)} does not name a Patient: {_NEEDS}",
    )


# What a patient reference must be, for the messages.
_NEEDS = (
    "the resource needs a reference to its Patient, `Patient/<id>` or an absolute URL ending in "
    "`Patient/<id>` (optionally followed by `/_history/<version>`), the id being 1-64 of "
    "A-Z a-z 0-9 - ."
)


def _shown(text: str) -> str:
    """A reference as a message quotes it: cut, control characters escaped by `repr`."""
    return repr(text[:80] + ("…" if len(text) > 80 else ""))


def _participant_patient(resource: Mapping[str, Any]) -> PathwayPatient:
    """An Appointment's patient: the first participant actor that names one."""
    participants = resource.get("participant")
    participants = participants if isinstance(participants, list) else []
    first_try: tuple[int, str] | None = None
    for i, participant in enumerate(participants):
        actor = participant.get("actor") if isinstance(participant, dict) else None
        found = reference_to(actor, "Patient")
        if found is not None and FHIR_ID.match(found):
            return PathwayPatient(found, "participant")
        text = actor.get("reference") if isinstance(actor, dict) else None
        if first_try is None and isinstance(text, str) and "Patient" in text:
            first_try = (i, text)
    if first_try is not None:
        i, text = first_try
        return PathwayPatient(
            None,
            f"participant[{i}].actor.reference",
            f"Appointment.participant[{i}].actor.reference {_shown(text)} does not name a "
            f"Patient: {_NEEDS}",
        )
    return PathwayPatient(
        None, "participant", f"Appointment.participant has no Patient actor: {_NEEDS}"
    )


def merge_loops(
    merged: str, into: str, replaced_by: Callable[[str], str | None], steps: int = MAX_MERGE_CHAIN
) -> bool:
    """Whether merging Patient `merged` into Patient `into` would make a loop: following the
    merges already made from `into` (`replaced_by` gives the Patient that replaced one, or None)
    comes back to `merged`. Each Patient of a loop is replaced by another: no pathway is left."""
    current: str | None = into
    for _ in range(steps):
        if current is None:
            return False
        if current == merged:
            return True
        current = replaced_by(current)
    return False
