"""Pure validation: JSON → a valid FHIR R4 resource, or issues naming the failing elements.

Feeds speak R4; Parcours validates with the `fhir.resources.R4B` models (R4B is R4 plus errata for
the resources Parcours reads). fhir.resources checks structure and datatypes but not code values,
so the statuses and classes that the stream processors branch on are checked here too: a feed
that sends `status: "done"` gets a clear 422 rather than a pathway that never closes.
"""

from __future__ import annotations

from typing import Any

import orjson
from fhir.resources.R4B import fhirtypes, get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from ingest.invariants import ID_PATTERN, invariant_issues, nested_resources
from ingest.limits import (
    MAX_ELEMENTS,
    depth_issue,
    elements_issue,
    may_hold_controls,
    measure,
    more_issue,
    text_issues,
)
from ingest.outcome import MAX_ISSUES, Issue, clip, escape_controls
from parcours import fhir_codes as codes
from parcours.fhir_codes import RESOURCE_TYPES, WITHDRAWN_IN_R4B

# Mapped downstream by streams/ (docs/FHIR_PROFILE.md); every other R4 type is published raw.
MAPPED_TYPES: tuple[str, ...] = (
    "Patient",
    "Encounter",
    "Location",
    "Organization",
    "Practitioner",
    "ServiceRequest",
    "Appointment",
    "EpisodeOfCare",
    "Observation",
    "Condition",
)

KNOWN_CLASS_SYSTEMS = frozenset(
    {"http://terminology.hl7.org/CodeSystem/v3-ActCode", codes.V2_PATIENT_CLASS}
)

# Required code elements of the mapped types, with their R4 value sets.
CODES: dict[tuple[str, str], frozenset[str]] = {
    ("Encounter", "status"): codes.ENCOUNTER_STATUSES,
    ("Appointment", "status"): codes.APPOINTMENT_STATUSES,
    ("EpisodeOfCare", "status"): codes.EPISODE_OF_CARE_STATUSES,
    ("ServiceRequest", "status"): codes.SERVICE_REQUEST_STATUSES,
    ("ServiceRequest", "intent"): codes.SERVICE_REQUEST_INTENTS,
    ("Observation", "status"): codes.OBSERVATION_STATUSES,
    ("Location", "status"): codes.LOCATION_STATUSES,
    ("Patient", "gender"): codes.ADMINISTRATIVE_GENDERS,
}


def resource_types() -> frozenset[str]:
    """Every concrete resource type the R4B models know (Patient, Encounter, Bundle, …)."""
    return RESOURCE_TYPES


def model_types_from_fhir_resources() -> frozenset[str]:
    """The same set, found by importing every model (slow: for the test that guards the list)."""
    names: set[str] = set()
    for attr in dir(fhirtypes):
        if not attr.endswith("Type"):
            continue
        name = attr.removesuffix("Type")
        if name in ("Resource", "DomainResource") or not name[:1].isupper():
            continue
        try:
            cls = get_fhir_model_class(name)
        except (ValueError, AttributeError):
            continue
        if isinstance(cls, type) and issubclass(cls, Resource):
            names.add(name)
    return frozenset(names)


def warm_up(types: tuple[str, ...] = (*MAPPED_TYPES, "Bundle")) -> None:
    """Import the models of `types` now, so the first request does not pay for it."""
    for name in types:
        get_fhir_model_class(name)


def is_resource_type(name: str) -> bool:
    """True for a concrete R4 resource type name."""
    return name in resource_types()


def unknown_type_text(name: str) -> str:
    """Why `name` (not a resource type `is_resource_type` knows) is refused."""
    shown = clip(escape_controls(repr(name)), 80)
    if name in WITHDRAWN_IN_R4B:
        return (
            f"{shown} is an R4 resource type that R4B withdrew; the gateway validates with the "
            "R4B definitions and does not accept it"
        )
    return f"{shown} is not an R4 resource type"


def fhirpath(root: str, loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a FHIRPath expression: `Encounter.location[0].period`."""
    path = root
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "resource_type":
            path += ".resourceType"
        elif part.startswith("function-") or part.startswith("__"):
            # pydantic adds validator names to union locations; they are no FHIR element.
            continue
        else:
            path += f".{part}"
    return path


PYDANTIC_TO_FHIR_CODE = {
    "missing": "required",
    "extra_forbidden": "structure",
    "value_error": "value",
}


def issues_from_validation_error(exc: ValidationError, root: str) -> list[Issue]:
    """One issue per pydantic error, each with the element's FHIRPath."""
    issues = []
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    for err in errors[:MAX_ISSUES]:
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "extra_forbidden":
            msg = "Unknown element (not part of the R4 definition)"
        elif err.get("type") == "missing":
            msg = "Required element is missing"
        issues.append(
            Issue(
                code=PYDANTIC_TO_FHIR_CODE.get(str(err.get("type")), "invalid"),
                diagnostics=clip(escape_controls(msg.replace("\n", " ").replace("  ", " "))),
                expression=(clip(escape_controls(fhirpath(root, tuple(err.get("loc", ()))))),),
            )
        )
    if len(errors) > MAX_ISSUES:
        issues.append(more_issue(len(errors) - MAX_ISSUES, MAX_ISSUES))
    return issues


def check_codes(resource: dict[str, Any], root: str) -> list[Issue]:
    """Code values that fhir.resources does not check and that Parcours relies on."""
    rtype = resource.get("resourceType")
    issues = []
    for (type_name, element), allowed in CODES.items():
        if type_name != rtype or element not in resource:
            continue
        value = resource[element]
        if not isinstance(value, str) or value not in allowed:
            issues.append(
                Issue(
                    code="code-invalid",
                    diagnostics=(
                        f"{clip(repr(value), 80)} is not in the R4 value set "
                        f"({', '.join(sorted(allowed))})"
                    ),
                    expression=(f"{root}.{element}",),
                )
            )
    klass = resource.get("class")
    # A code of a system Parcours knows must be one of it; another system's code is left to the
    # stream mapping (which reads the codes feeds are known to send, and dead-letters the rest).
    if (
        rtype == "Encounter"
        and isinstance(klass, dict)
        and (klass.get("system") in KNOWN_CLASS_SYSTEMS or "system" not in klass)
        and codes.encounter_class(klass) is None
    ):
        code = klass.get("code")
        issues.append(
            Issue(
                code="code-invalid",
                diagnostics=(
                    f"{clip(repr(code), 80)} is not a v3 ActEncounterCode "
                    f"({', '.join(sorted(codes.ENCOUNTER_CLASSES))}) nor an HL7 v2 patient class "
                    f"(system {codes.V2_PATIENT_CLASS}: "
                    f"{', '.join(sorted(codes.V2_PATIENT_CLASSES))})"
                ),
                expression=(f"{root}.class.code",),
            )
        )
    return issues


def validate_resource(
    resource: Any,
    expected_type: str | None = None,
    root: str | None = None,
) -> tuple[int, str, list[Issue]]:
    """Check one resource. Returns (status, reason, issues); no issue means valid (status 0).

    `expected_type` is the type the URL or Bundle request names; `root` prefixes expressions
    (e.g. `Bundle.entry[3].resource`), else the resource type is the root. A resource holding
    more than `MAX_ELEMENTS` values is refused (413) before the models see it.
    400 means the JSON is not a resource of the expected type; 422 means it is one but breaks
    the R4 definition.
    """
    if not isinstance(resource, dict):
        where = root or expected_type or "Resource"
        return (
            400,
            "not-a-resource",
            [Issue("structure", "Expected a JSON object (a FHIR resource)", (where,))],
        )
    rtype = resource.get("resourceType")
    named = isinstance(rtype, str) and rtype.isidentifier() and len(rtype) <= 64
    base: str = root or (str(rtype) if named else expected_type or "Resource")
    deep, elements = measure(resource)
    if deep:
        return 400, "too-deep", [depth_issue(base)]
    if elements > MAX_ELEMENTS:
        return 413, "too-large", [elements_issue(base, elements)]
    if not isinstance(rtype, str) or not rtype:
        return (
            400,
            "not-a-resource",
            [
                Issue(
                    "required" if rtype is None else "structure",
                    "resourceType is missing" if rtype is None else "resourceType must be a string",
                    (f"{base}.resourceType",),
                )
            ],
        )
    if not is_resource_type(rtype):
        return (
            400,
            "unknown-type",
            [
                Issue(
                    "not-supported",
                    unknown_type_text(rtype),
                    (f"{base}.resourceType",),
                )
            ],
        )
    if expected_type is not None and rtype != expected_type:
        return (
            400,
            "type-mismatch",
            [
                Issue(
                    "invalid",
                    f"resourceType is {clip(escape_controls(repr(rtype)), 80)} but the request "
                    f"is for {expected_type!r}",
                    (f"{base}.resourceType",),
                )
            ],
        )
    rid = resource.get("id")
    if rid is not None and (not isinstance(rid, str) or not ID_PATTERN.match(rid)):
        return (
            422,
            "invalid-resource",
            [Issue("value", "id must be 1-64 of A-Z a-z 0-9 - .", (f"{base}.id",))],
        )
    if may_hold_controls(orjson.dumps(resource)):
        issues = text_issues(resource, base)
        if issues:
            return 422, "invalid-character", issues
    try:
        get_fhir_model_class(rtype).model_validate(resource)
    except ValidationError as exc:
        return 422, "invalid-resource", issues_from_validation_error(exc, base)
    except RecursionError:
        return 400, "too-deep", [depth_issue(base)]
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        # A model validator that trips over an odd value instead of reporting it.
        issue = Issue("invalid", f"Not a valid {rtype} ({type(exc).__name__})", (base,))
        return 422, "invalid-resource", [issue]
    return rule_issues(resource, base)


def rule_issues(resource: dict[str, Any], base: str) -> tuple[int, str, list[Issue]]:
    """Codes and invariants of a structurally valid resource and of every resource nested in
    it (contained, Bundle entries): an Encounter `done` is refused wherever it sits."""
    found = [(resource, base, False), *nested_resources(resource, base)]
    issues = [i for res, where, _ in found for i in check_codes(res, where)]
    if issues:
        return 422, "invalid-code", issues[:MAX_ISSUES]
    issues = [i for res, where, inner in found for i in invariant_issues(res, where, inner)]
    if issues:
        return 422, "invariant", issues[:MAX_ISSUES]
    return 0, "", []
