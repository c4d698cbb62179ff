"""Pure: FHIR R4 core invariants that the fhir.resources models do not check.

- per-1: a Period's start is not after its end (also Appointment and Slot start/end), and
  neither, nor any other care time the stream worker reads, lies outside 1900–2099 (valid FHIR,
  but no care happens in year 1 or 9999) or at a leap second (no instant the worker can read);
- dom-2 / dom-3: a contained resource contains nothing and is referenced from its container;
- ref-1: a local reference (`#id`) points at a contained resource;
- a Reference's `type`, when it names a resource type, is the type its literal reference names
  ("both SHALL be consistent", R4 Reference.type);
- a literal `Type/id` reference carries a valid id, since the id becomes a Kafka key and SQL key.

Each issue names its element. Nested resources (contained, Bundle entries, Parameters) are
walked by `nested_resources`, so the same rules apply to a resource wherever it sits.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from ingest.outcome import Issue
from parcours.fhir_refs import FHIR_ID, PATIENT_ELEMENTS
from parcours.timeutil import EARLIEST_CARE, LATEST_CARE, outside_care_years

ID_PATTERN = FHIR_ID
# FHIR date, dateTime and instant: a year, then optional month, day, time and zone.
_DATETIME = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
WIDEN = timedelta(hours=14)
# The years of care (`parcours.timeutil.EARLIEST_CARE`): a Period or an Appointment outside them
# is refused.
FIRST_YEAR, LAST_YEAR = EARLIEST_CARE.year, LATEST_CARE.year - 1
_LITERAL_REF = re.compile(r"^([A-Z][A-Za-z]+)/([^/?#]*)(?:/_history/[^/?#]+)?$")
# The type a literal reference names: `Type/id`, or an absolute URL ending in `Type/id`, either
# possibly followed by `/_history/version`.
_REFERENCED_TYPE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[^/?#]+(?:/_history/[^/?#]+)?$")
ABSTRACT_TYPES = ("Resource", "DomainResource")
# `Reference.type` naming a resource type: `Patient`, or the core StructureDefinition's URL.
_TYPE_NAME = re.compile(r"^(?:http://hl7\.org/fhir/StructureDefinition/)?([A-Z][A-Za-z]+)$")


def _bounds(value: str, widen: bool = True) -> tuple[datetime, datetime] | None:
    """The earliest and latest UTC instants a FHIR date, dateTime or instant can stand for.

    Without `widen`, a partial date is read in UTC: two partial dates of one Period share
    their (unknown) zone, so they compare as calendar dates."""
    m = _DATETIME.match(value)
    if not m:
        return None
    year, month, day, hour, minute, second, zone = m.groups()
    try:
        if hour is None:
            # A partial date covers a whole year, month or day in an unknown zone: widen it by
            # the largest UTC offsets so that no true order is refused.
            y, mo = int(year), int(month or 1)
            first = datetime(y, mo, int(day or 1), tzinfo=UTC)
            if day:
                last = first + timedelta(days=1)
            elif month:
                last = first + timedelta(days=calendar.monthrange(y, mo)[1])
            else:
                last = (
                    datetime(y + 1, 1, 1, tzinfo=UTC)
                    if y < 9999
                    else datetime.max.replace(tzinfo=UTC) - WIDEN
                )
            pad = WIDEN if widen else timedelta(0)
            return first - pad, last + pad
        moment = datetime.fromisoformat(f"{year}-{month}-{day}T{hour}:{minute}:{second or '00'}")
    except (ValueError, OverflowError):  # not a date, or one at the end of the calendar
        return None
    if zone is None:
        moment = moment.replace(tzinfo=UTC)
        return moment - WIDEN, moment + WIDEN
    offset = (
        timedelta(0)
        if zone == "Z"
        else timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])) * (1 if zone[0] == "+" else -1)
    )
    try:
        moment = moment.replace(tzinfo=UTC) - offset
        # Fractions of a second are not parsed: the latest instant is the next whole second.
        return moment, moment + timedelta(seconds=1)
    except OverflowError:  # past the end of the calendar in UTC
        return None


def _walk(node: Any, path: str) -> Iterator[tuple[Any, str]]:
    """Every object and array under `node` with its FHIRPath, without entering nested
    resources (they are checked on their own)."""
    stack: list[tuple[Any, str]] = [(node, path)]
    first = True
    while stack:
        current, where = stack.pop()
        if isinstance(current, dict):
            if not first and isinstance(current.get("resourceType"), str):
                continue
            yield current, where
            for key, value in current.items():
                if isinstance(value, dict | list):
                    stack.append((value, f"{where}.{key}"))
        elif isinstance(current, list):
            for i, value in enumerate(current):
                if isinstance(value, dict | list):
                    stack.append((value, f"{where}[{i}]"))
        first = False


# The times the stream worker reads as care times (besides Period and Appointment start/end):
# it dead-letters a resource whose time it reads is outside the years of care or no instant.
CARE_TIMES = ("start", "end", "authoredOn", "occurrenceDateTime", "created", "deceasedDateTime")
# Every key `_suspect` looks at as a time: most objects hold none of them.
_TIME_KEYS = frozenset((*CARE_TIMES, "lastUpdated"))


# The types whose care times the stream worker reads. In them every `CARE_TIMES` element is a
# FHIR date, dateTime or instant, which JSON writes as a string; the R4B models take a number
# there (as seconds since 1970), and the worker then dead-letters the resource. In other types
# `start` and `end` may be integers (MolecularSequence.variant).
TIMED_TYPES = frozenset((*PATIENT_ELEMENTS, "Patient"))


def _not_text(value: Any) -> bool:
    """A date or time that JSON does not write as a string (a number, a boolean, an object)."""
    return value is not None and not isinstance(value, str)


def _no_instant(value: Any) -> bool:
    """A dateTime with a time that names no instant: second 60 (a leap second, which FHIR's
    pattern lets through but no clock of the worker can place)."""
    found = _DATETIME.match(value) if isinstance(value, str) else None
    return found is not None and found.group(6) == "60"


def period_issues(resource: dict[str, Any], root: str) -> list[Issue]:
    """per-1: every object with string `start` and `end` has start ≤ end; and neither, nor any
    other care time (`CARE_TIMES`, `meta.lastUpdated`), is outside the years
    FIRST_YEAR–LAST_YEAR or a leap second."""
    issues = []
    checks: list[tuple[Callable[[Any], bool], str]] = [
        (outside_care_years, f"is outside the years {FIRST_YEAR}–{LAST_YEAR}"),
        (_no_instant, "names no instant (a leap second: second 60)"),
    ]
    if resource.get("resourceType") in TIMED_TYPES:
        checks.append((_not_text, "is not a FHIR date or time: JSON writes them as strings"))
    for node, where in _walk(resource, root):
        keys = ("lastUpdated",) if where.endswith(".meta") else CARE_TIMES
        for check, problem in checks:
            issues += [
                Issue("value", f"{node[key]!r} {problem}", (f"{where}.{key}",))
                for key in keys
                if check(node.get(key))
            ]
        start, end = node.get("start"), node.get("end")
        if not (isinstance(start, str) and isinstance(end, str)):
            continue
        if outside_care_years(start) or outside_care_years(end):
            continue  # refused above
        dates = "T" not in start and "T" not in end
        lo, hi = _bounds(start, widen=not dates), _bounds(end, widen=not dates)
        if lo is None or hi is None:
            continue
        if lo[0] >= hi[1]:
            issues.append(
                Issue(
                    "invariant",
                    f"per-1: start {start!r} is after end {end!r}",
                    (f"{where}.start",),
                )
            )
    return issues


def _references(node: Any, path: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every `reference` string of one resource with its element path and the Reference that
    holds it; its contained resources are part of it, other nested resources (Bundle entries)
    are not."""
    stack: list[tuple[Any, str, bool]] = [(node, path, True)]
    while stack:
        current, where, top = stack.pop()
        if isinstance(current, dict):
            if not top and isinstance(current.get("resourceType"), str):
                continue
            ref = current.get("reference")
            if isinstance(ref, str):
                yield ref, f"{where}.reference", current
            for key, value in current.items():
                if key == "contained" and top and isinstance(value, list):
                    stack.extend((c, f"{where}.contained[{i}]", True) for i, c in enumerate(value))
                elif isinstance(value, dict | list):
                    stack.append((value, f"{where}.{key}", False))
        elif isinstance(current, list):
            for i, value in enumerate(current):
                if isinstance(value, dict | list):
                    stack.append((value, f"{where}[{i}]", False))


def _local_targets(node: Any) -> set[str]:
    """The ids that `#id` strings under `node` name ("" for `#`, the container itself).

    dom-3 counts a reference, and also a canonical, uri or url (`definitionCanonical: "#a1"`,
    `answerValueSet: "#vs1"`), so every string of that form counts, contained resources
    included: they may name each other.
    """
    found: set[str] = set()
    stack: list[Any] = [node]
    while stack:
        current = stack.pop()
        values = current.values() if isinstance(current, dict) else current
        for value in values:
            if isinstance(value, str):
                if value.startswith("#"):
                    found.add(value[1:])
            elif isinstance(value, dict | list):
                stack.append(value)
    return found


def _type_mismatch(ref: str, declared: Any) -> str | None:
    """The type `ref` names when `declared` (a Reference.type) names another resource type;
    None when they agree or either says no resource type (a logical model's URI, a local,
    `urn:uuid` or conditional reference)."""
    if not isinstance(declared, str) or "?" in ref:
        return None
    named = _TYPE_NAME.match(declared)
    target = _REFERENCED_TYPE.search(ref)
    if named is None or target is None or named.group(1) in (target.group(1), *ABSTRACT_TYPES):
        return None
    return target.group(1)


def reference_issues(resource: dict[str, Any], root: str) -> list[Issue]:
    """ref-1, dom-2, dom-3 and the id of literal references."""
    issues: list[Issue] = []
    contained = resource.get("contained")
    contained = contained if isinstance(contained, list) else []
    contained_ids = {
        c["id"] for c in contained if isinstance(c, dict) and isinstance(c.get("id"), str)
    }
    refs = list(_references(resource, root))
    local = _local_targets(resource)
    for ref, where, holder in refs:
        mismatch = _type_mismatch(ref, holder.get("type"))
        if mismatch:
            issues.append(
                Issue(
                    "invariant",
                    f"Reference.type {holder['type'][:120]!r} is not the type its reference "
                    f"names ({mismatch}): both must agree",
                    (f"{where.removesuffix('.reference')}.type",),
                )
            )
        if ref.startswith("#") and ref != "#" and ref[1:] not in contained_ids:
            issues.append(
                Issue(
                    "invariant",
                    f"ref-1: {ref!r} names no contained resource of this resource",
                    (where,),
                )
            )
            continue
        literal = _LITERAL_REF.match(ref)
        if literal and not ID_PATTERN.match(literal.group(2)):
            issues.append(
                Issue(
                    "value",
                    f"The reference's id {literal.group(2)[:80]!r} is not a FHIR id "
                    "(1-64 of A-Z a-z 0-9 - .)",
                    (where,),
                )
            )
    for i, child in enumerate(contained):
        if not isinstance(child, dict):
            continue
        where = f"{root}.contained[{i}]"
        if "contained" in child:
            issues.append(
                Issue("invariant", "dom-2: a contained resource contains nothing", (where,))
            )
        cid = child.get("id")
        refers_back = "" in _local_targets(child)
        if isinstance(cid, str) and cid not in local and not refers_back:
            issues.append(
                Issue(
                    "invariant",
                    f"dom-3: the contained resource {cid!r} is referenced from nowhere in "
                    "its container",
                    (where,),
                )
            )
    return issues


def nested_resources(
    resource: dict[str, Any], root: str
) -> Iterator[tuple[dict[str, Any], str, bool]]:
    """The resources inside `resource` (contained, Bundle.entry.resource, Parameters), at any
    depth, each with its FHIRPath and whether it is a contained resource."""
    stack: list[tuple[dict[str, Any], str]] = [(resource, root)]
    while stack:
        current, where = stack.pop()
        for i, child in enumerate(_as_list(current.get("contained"))):
            if isinstance(child, dict):
                path = f"{where}.contained[{i}]"
                yield child, path, True
                stack.append((child, path))
        for i, entry in enumerate(_as_list(current.get("entry"))):
            child = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(child, dict):
                path = f"{where}.entry[{i}].resource"
                yield child, path, False
                stack.append((child, path))
        for child, path in _parameter_resources(current, where):
            yield child, path, False
            stack.append((child, path))


def _parameter_resources(
    current: dict[str, Any], where: str
) -> Iterator[tuple[dict[str, Any], str]]:
    params = _as_list(current.get("parameter"))
    pending = [(p, f"{where}.parameter[{i}]") for i, p in enumerate(params)]
    while pending:
        param, path = pending.pop()
        if not isinstance(param, dict):
            continue
        child = param.get("resource")
        if isinstance(child, dict):
            yield child, f"{path}.resource"
        pending.extend((p, f"{path}.part[{i}]") for i, p in enumerate(_as_list(param.get("part"))))


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _suspect(resource: dict[str, Any]) -> bool:
    """A quick walk without paths: False when no invariant can fail in `resource`, so the
    walks that name elements run only for the few resources that need them."""
    if "contained" in resource:
        return True
    timed = resource.get("resourceType") in TIMED_TYPES
    stack: list[Any] = [resource]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str):
                if ref.startswith("#"):
                    return True
                literal = _LITERAL_REF.match(ref)
                if literal and not ID_PATTERN.match(literal.group(2)):
                    return True
                if "type" in node and _type_mismatch(ref, node["type"]):
                    return True
            start, end = node.get("start"), node.get("end")
            if not _TIME_KEYS.isdisjoint(node):
                for key in _TIME_KEYS.intersection(node):
                    value = node[key]
                    if outside_care_years(value) or _no_instant(value):
                        return True
                    if timed and _not_text(value):
                        return True
            if isinstance(start, str) and isinstance(end, str):
                dates = "T" not in start and "T" not in end
                lo, hi = _bounds(start, widen=not dates), _bounds(end, widen=not dates)
                if lo is not None and hi is not None and lo[0] >= hi[1]:
                    return True
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        else:
            stack.extend(v for v in node if isinstance(v, dict | list))
    return False


def invariant_issues(resource: dict[str, Any], root: str, contained: bool = False) -> list[Issue]:
    """Every invariant issue of `resource` itself (nested resources are not entered).

    The references of a `contained` resource were checked with its container's, in whose scope
    FHIR reads their `#id`: they are not checked again here.
    """
    if not _suspect(resource):
        return []
    if contained:
        return period_issues(resource, root)
    return period_issues(resource, root) + reference_issues(resource, root)
