"""Conditional references, creates and updates, resolved as FHIR's transaction rules say.

Current Synthea, and many interface engines, send hospitals, locations and practitioners once (a
`batch` Bundle whose entries carry `request.ifNoneExist`), then one transaction Bundle per patient
whose resources point at them by search: `Location?identifier=https://…|<id>`. FHIR R4
(http.html, "Transaction Processing Rules" and "Conditional create/update") says:

- A conditional reference is resolved within the Bundle first, then against what the server
  already holds. Exactly one match: the reference becomes `Type/id`. None or several: a
  transaction fails (an error naming the entry and the reference); in a batch only that entry.
- `POST` with `ifNoneExist`: one match → nothing is created, the answer is `200` with the
  existing resource's location; none → created; several → `412 Precondition Failed`.
- `PUT Type?identifier=…`: one match → that resource is updated (the entry takes its id); none →
  created; several → `412`.

"What the server already holds" is the gateway's identifier index (`identifier_index`, SQL):
(type, identifier system, identifier value) → id of every resource accepted with an identifier.

Feeds that send patients before the hospital Bundle can opt in to deferral
(`PARCOURS_INGEST_DEFER_UNRESOLVED`): a reference with no match is accepted and pointed at a stable
alias id, derived from (type, system, value), recorded in `pending_references` by source and
element, and counted in `/metrics`. When the target is created through the gateway it takes that
id, so the references already published point at it. An ambiguous reference is never deferred.

A Reference that names its target by `identifier` only (Synthea's Location.managingOrganization)
is given `Type/id` when exactly one resource matches, and left as it is otherwise (valid FHIR).
A Patient whose `link` says `replaced-by` moves its records (those of the Bundle, those received
before, read back from the raw topic, and those sent later) to the Patient that replaced it.

Only the `identifier` search parameter is supported (what Synthea and FHIR's examples use); any
other criteria are refused with a message that says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast
from urllib.parse import unquote

import orjson
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import Engine, Table, and_, select, update

from ingest.dedupe import VersionBusy, locks_held
from ingest.entries import Item, PreparedBundle, finalise, prepare_resource
from ingest.metrics import IngestMetrics
from ingest.outcome import Issue, busy_rejection
from ingest.service import EntryResult, IngestResult, IngestService
from parcours.db import upsert
from parcours.db.ingest_models import IngestLogRow
from parcours.db.reference_models import IdentifierIndexRow, PendingReferenceRow
from parcours.fhir_refs import merge_loops, reference_to

log = logging.getLogger(__name__)

# Aliases of deferred references: the same (type, system, value) always gets the same id.
ALIAS_NAMESPACE = uuid.UUID("0b7f3f0e-5b0a-4f3e-8d55-2b1d6c3a9e21")
SUPPORTED_PARAMS = ("identifier",)
# Types that feeds point at by identifier and may send after the resources that point at them.
DIRECTORY_TYPES = frozenset(
    {"Organization", "Location", "Practitioner", "PractitionerRole", "HealthcareService"}
)
# The types whose identifiers are indexed: what feeds point at by identifier. Clinical resources
# (Observation, Claim…) are not, which keeps the index a fraction of what is received.
INDEXED_TYPES = DIRECTORY_TYPES | {"Patient", "Encounter", "EpisodeOfCare", "ServiceRequest"}
# Index rows that say a Patient was merged into another (`Patient.link` of type replaced-by):
# (Patient, MERGED_SYSTEM, replaced id) → the id that replaces it.
MERGED_SYSTEM = "urn:parcours:patient-replaced-by"
# Rows per SQL statement of the index (bounded statements).
CHUNK = 500


class CriteriaError(ValueError):
    """Search criteria the gateway cannot evaluate (a parameter other than `identifier`)."""


@dataclass(frozen=True)
class IdentifierKey:
    """(resource type, identifier system, identifier value); a None system matches any system."""

    resource_type: str
    system: str | None
    value: str

    def text(self) -> str:
        """The key as search criteria, e.g. `Location?identifier=https://…|123`."""
        ident = self.value if self.system is None else f"{self.system}|{self.value}"
        return f"{self.resource_type}?identifier={ident}"


@dataclass(frozen=True)
class Criteria:
    """Parsed search criteria: every key must match (the parameters are ANDed)."""

    resource_type: str
    keys: tuple[IdentifierKey, ...]


def alias_id(key: IdentifierKey) -> str:
    """The id a deferred reference to `key` is given (and its target takes when created)."""
    return str(uuid.uuid5(ALIAS_NAMESPACE, f"{key.resource_type}|{key.system or ''}|{key.value}"))


def parse_criteria(text: str, default_type: str | None = None) -> Criteria:
    """`Type?identifier=system|value[&identifier=…]`, or the bare query of `ifNoneExist`.

    Values may be URL-encoded. Raises CriteriaError for what cannot be evaluated here.
    """
    path, sep, query = text.partition("?")
    if not sep:
        # `ifNoneExist` is "just the query portion": `identifier=…` without a type.
        path, query = "", text
    rtype = path.strip("/") or default_type
    if not rtype or "/" in rtype:
        raise CriteriaError(f"{text!r} does not name a resource type")
    keys: list[IdentifierKey] = []
    for part in query.split("&"):
        if not part:
            continue
        name, eq, raw = part.partition("=")
        name = unquote(name)
        if name not in SUPPORTED_PARAMS or not eq:
            raise CriteriaError(
                f"search parameter {name!r} is not supported in {text!r}; "
                "the gateway resolves `identifier=system|value`"
            )
        value = unquote(raw)
        system, bar, ident = value.partition("|")
        if not bar:
            system, ident = "", value
        if not ident:
            raise CriteriaError(f"{text!r} has no identifier value")
        keys.append(IdentifierKey(rtype, system or None, ident))
    if not keys:
        raise CriteriaError(f"{text!r} has no search criteria")
    return Criteria(rtype, tuple(keys))


def is_conditional(reference: str) -> bool:
    """True for a search-style reference (`Type?params`), not an absolute URL or `urn:`."""
    head, sep, _ = reference.partition("?")
    return bool(sep) and bool(head) and "/" not in head.strip("/") and ":" not in head


def identifiers_of(resource: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(system, value) of each identifier with a value (system '' when absent)."""
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and isinstance(ident.get("value"), str) and ident["value"]:
            system = ident.get("system")
            yield (system if isinstance(system, str) else ""), ident["value"]


def _walk(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(FHIRPath-like expression with indices, Reference) for every Reference inside `node`."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield path, node
        for name, value in node.items():
            if name != "reference":
                yield from _walk(value, f"{path}.{name}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


# The target type of a Reference given by identifier only, by element name ("logical reference").
ELEMENT_TARGETS = {
    "managingOrganization": "Organization",
    "serviceProvider": "Organization",
    "organization": "Organization",
    "practitioner": "Practitioner",
    "individual": "Practitioner",
}


def _walk_logical(
    node: Any, path: str, resource_type: str, name: str = ""
) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(expression, Reference, target type) of each Reference that names its target by
    `identifier` only, when the target type is known (`Reference.type`, or the element)."""
    if isinstance(node, dict):
        ident = node.get("identifier")
        if isinstance(ident, dict) and "reference" not in node and ident.get("value"):
            target = node.get("type")
            if not isinstance(target, str):
                target = ELEMENT_TARGETS.get(name)
                if name == "partOf":
                    target = resource_type
                elif name == "location" and resource_type == "Encounter":
                    target = "Location"
            if target:
                yield path, node, target
        for key, value in node.items():
            yield from _walk_logical(value, f"{path}.{key}", resource_type, key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk_logical(value, f"{path}[{i}]", resource_type, name)


def _element(expression: str) -> str:
    """`Encounter.location[0].location` → `Encounter.location.location` (a metrics label)."""
    out = []
    depth = 0
    for ch in expression:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class Deferred:
    """A conditional reference accepted before its target."""

    key: IdentifierKey
    element: str
    alias: str
    item_index: int


@dataclass
class Resolution:
    """What resolving a Bundle decided, beside the rewritten items."""

    # Conditional creates that matched: entry index → the existing id (answered 200, not sent).
    existing: dict[int, str] = field(default_factory=dict)
    deferred: list[Deferred] = field(default_factory=list)
    resolved: int = 0


Lookup = Callable[[set[IdentifierKey]], dict[IdentifierKey, set[str]]]
AliasLookup = Callable[[set[IdentifierKey]], dict[IdentifierKey, str]]


def _matches(found: Mapping[IdentifierKey, set[str]], criteria: Criteria) -> set[str]:
    sets = [found.get(k, set()) for k in criteria.keys]
    return set.intersection(*sets) if sets else set()


def _request_criteria(item: Item, request: Any) -> tuple[str, Criteria] | None:
    """('create' | 'update', criteria) of a conditional create or update entry, else None."""
    if not isinstance(request, dict):
        return None
    method, url = request.get("method"), request.get("url")
    if method == "POST" and isinstance(request.get("ifNoneExist"), str):
        return "create", parse_criteria(request["ifNoneExist"], item.resource_type)
    if method == "PUT" and isinstance(url, str) and "?" in url:
        return "update", parse_criteria(url, item.resource_type)
    return None


def _request_of(requests: Mapping[int, Any] | Sequence[Any] | None, index: int) -> Any:
    if requests is None:
        return None
    if isinstance(requests, Mapping):
        return requests.get(index)  # nosec B113: a Mapping of entries, not the HTTP library
    return requests[index] if 0 <= index < len(requests) else None


def _labels(context: str, it: Item) -> tuple[str, str]:
    """(how an entry is named in messages, the FHIRPath root of its resource)."""
    if context == "ndjson":
        return f"line {it.index}", f"line[{it.index}]"
    if context == "resource":
        return str(it.resource_type), str(it.resource_type)
    return f"Bundle.entry[{it.index}]", f"Bundle.entry[{it.index}].resource"


def resolve_bundle(
    items: Sequence[Item],
    requests: Mapping[int, Any] | Sequence[Any] | None,
    lookup: Lookup,
    aliases: AliasLookup,
    defer: bool,
    context: str = "bundle",
) -> Resolution:
    """Resolve a Bundle's conditional creates, updates and references in place (pure: the
    index is reached through `lookup` and `aliases`, each called once).

    `requests[i]` is the request of the item whose `index` is i (`Bundle.entry[i].request`), None
    or missing when there is none. Items that cannot be resolved
    are rejected with an issue naming the entry and the reference; the caller's atomicity rule
    decides what that does to the rest of the Bundle. Changed items are finalised again.
    `context` (bundle, resource, ndjson) says how entries are named in the issues.
    """
    resolution = Resolution()
    live = [it for it in items if it.valid and it.resource is not None]
    conditional: dict[int, tuple[str, Criteria]] = {}
    references: list[tuple[Item, str, dict[str, Any], Criteria | None]] = []
    logical: list[tuple[Item, dict[str, Any], IdentifierKey]] = []
    wanted: set[IdentifierKey] = set()
    for it in live:
        request = _request_of(requests, it.index)
        try:
            asked = _request_criteria(it, request)
        except CriteriaError as exc:
            it.reject(
                400,
                "conditional-criteria",
                [Issue("not-supported", str(exc), (f"{_labels(context, it)[0]}.request",))],
            )
            continue
        if asked is not None:
            conditional[it.index] = asked
            wanted.update(asked[1].keys)
    for it in live:
        if not it.valid:
            continue
        assert it.resource is not None
        for expr, ref in _walk(it.resource, ""):
            text = ref["reference"]
            if not is_conditional(text):
                continue
            try:
                criteria: Criteria | None = parse_criteria(text)
            except CriteriaError:
                criteria = None
            if criteria is not None:
                wanted.update(criteria.keys)
            references.append((it, expr, ref, criteria))
        for _, ref, target_type in _walk_logical(it.resource, "", str(it.resource_type)):
            ident = ref["identifier"]
            system = ident.get("system") if isinstance(ident.get("system"), str) else None
            key = IdentifierKey(target_type, system or None, str(ident["value"]))
            logical.append((it, ref, key))
            wanted.add(key)
    if not conditional and not references and not logical:
        return resolution
    # A created directory resource may be the target that deferred references wait for.
    for it in live:
        if it.valid and it.resource is not None and it.resource_type in DIRECTORY_TYPES:
            for system, value in identifiers_of(it.resource):
                wanted.add(IdentifierKey(str(it.resource_type), system or None, value))
    found = lookup(wanted) if wanted else {}
    pending = aliases(wanted) if wanted else {}

    # 1. Conditional creates and updates decide each entry's id.
    renames: dict[str, str] = {}
    changed: set[int] = set()
    for it in live:
        if it.index not in conditional or not it.valid:
            continue
        kind, criteria = conditional[it.index]
        assert it.resource is not None
        matches = _matches(found, criteria)
        label = _labels(context, it)[0]
        where = (f"{label}.request",)
        if len(matches) > 1:
            it.reject(
                412,
                "multiple-matches",
                [
                    Issue(
                        "multiple-matches",
                        f"{label}: {' & '.join(k.text() for k in criteria.keys)}"
                        f" matches {len(matches)} resources{_shown(it.resource_type, matches)}; "
                        "a conditional "
                        + ("create" if kind == "create" else "update")
                        + " needs at most one",
                        where,
                    )
                ],
            )
            continue
        old = str(it.resource["id"])
        if matches:
            new = next(iter(matches))
            if kind == "create":
                resolution.existing[it.index] = new
        else:
            new = next((pending[k] for k in criteria.keys if k in pending), None) or old
        if new != old:
            renames[f"{it.resource_type}/{old}"] = f"{it.resource_type}/{new}"
            it.resource["id"] = new
            changed.add(it.index)
    # A created resource that deferred references wait for takes their alias.
    for it in live:
        if not it.valid or it.index in conditional:
            continue
        request = _request_of(requests, it.index)
        if it.resource_type not in DIRECTORY_TYPES or not (
            isinstance(request, dict) and request.get("method") == "POST"
        ):
            continue
        assert it.resource is not None
        keys = [
            IdentifierKey(str(it.resource_type), s or None, v)
            for s, v in identifiers_of(it.resource)
        ]
        alias = next((pending[k] for k in keys if k in pending), None)
        if alias and alias != it.resource["id"] and not any(found.get(k) for k in keys):
            renames[f"{it.resource_type}/{it.resource['id']}"] = f"{it.resource_type}/{alias}"
            it.resource["id"] = alias
            changed.add(it.index)

    # 2. What the Bundle itself holds, by identifier (entries that will exist after it).
    local: dict[IdentifierKey, set[str]] = defaultdict(set)
    for it in live:
        if not it.valid or it.resource is None:
            continue
        for system, value in identifiers_of(it.resource):
            rtype = str(it.resource_type)
            local[IdentifierKey(rtype, system or None, value)].add(str(it.resource["id"]))
            local[IdentifierKey(rtype, None, value)].add(str(it.resource["id"]))

    # 3. References: renamed targets, then conditional ones.
    if renames:
        for it in live:
            if not it.valid or it.resource is None:
                continue
            for _, ref in _walk(it.resource, ""):
                target = renames.get(ref["reference"])
                if target is not None:
                    ref["reference"] = target
                    changed.add(it.index)
    problems: dict[int, list[Issue]] = defaultdict(list)
    for it, path, ref, criteria in references:
        if not it.valid:
            continue
        text = ref["reference"]
        label, root = _labels(context, it)
        expr = f"{root}{path}"
        if criteria is None:
            problems[it.index].append(
                Issue(
                    "not-supported",
                    f"{label}: conditional reference {text!r} uses search "
                    "parameters the gateway cannot resolve (only identifier=system|value)",
                    (f"{expr}.reference",),
                )
            )
            continue
        matches = _matches(local, criteria) or _matches(found, criteria)
        if len(matches) == 1:
            ref["reference"] = f"{criteria.resource_type}/{next(iter(matches))}"
            resolution.resolved += 1
            changed.add(it.index)
            continue
        if len(matches) > 1:
            problems[it.index].append(
                Issue(
                    "multiple-matches",
                    f"{label}: conditional reference {text!r} matches "
                    f"{len(matches)} resources{_shown(criteria.resource_type, matches)}; "
                    "it must match one",
                    (f"{expr}.reference",),
                )
            )
            continue
        if defer:
            key = criteria.keys[0]
            alias = pending.get(key) or alias_id(key)
            ref["reference"] = f"{criteria.resource_type}/{alias}"
            element = f"{it.resource_type}{_element(path)}"
            resolution.deferred.append(Deferred(key, element, alias, it.index))
            changed.add(it.index)
            continue
        problems[it.index].append(
            Issue(
                "not-found",
                f"{label}: conditional reference {text!r} matches no resource "
                "in this Bundle or already received; send its target first (hospital and "
                "practitioner Bundles before patients), or set "
                "PARCOURS_INGEST_DEFER_UNRESOLVED=true to accept it until the target arrives",
                (f"{expr}.reference",),
            )
        )
    # References by identifier only are valid FHIR: given a `reference` when exactly one
    # resource matches, left as they are otherwise.
    for it, ref, key in logical:
        ids = local.get(key) or found.get(key) or set()
        if it.valid and len(ids) == 1:
            ref["reference"] = f"{key.resource_type}/{next(iter(ids))}"
            resolution.resolved += 1
            changed.add(it.index)
    for index, issues in problems.items():
        item = next(i for i in items if i.index == index)
        reason = (
            "ambiguous-reference"
            if any(i.code == "multiple-matches" for i in issues)
            else "unresolved-reference"
        )
        item.reject(422, reason, issues)
    for it in live:
        if it.valid and it.index in changed and it.resource is not None:
            finalise(it, it.resource)
    resolution.deferred = [d for d in resolution.deferred if _valid(items, d.item_index)]
    return resolution


def _valid(items: Sequence[Item], index: int) -> bool:
    return any(i.index == index and i.valid for i in items)


def replaced_by(resource: Mapping[str, Any]) -> str | None:
    """The id of the Patient that replaces this one (`link` of type replaced-by), if any."""
    found = replacing_link(resource)
    return found[1] if found else None


def replacing_link(resource: Mapping[str, Any]) -> tuple[int, str] | None:
    """(position in `link`, Patient id) of the link that says which Patient replaces this one."""
    for i, link in enumerate(resource.get("link") or []):
        if isinstance(link, dict) and link.get("type") == "replaced-by":
            other = reference_to(link.get("other"), "Patient")
            if other:
                return i, other
    return None


def _shown(resource_type: str | None, ids: Iterable[str]) -> str:
    """The ids of the matches, for a message: only of directory resources (wards, hospitals,
    practitioners), never of patients or their records, which may be another integrator's."""
    if resource_type not in DIRECTORY_TYPES:
        return ""
    return f" ({', '.join(sorted(ids))})"


def merged_into(lookup: Lookup, patient_id: str) -> str | None:
    """The Patient a recorded merge says replaced `patient_id` (None when none, or several)."""
    found = lookup({IdentifierKey("Patient", MERGED_SYSTEM, patient_id)})
    ids = next(iter(found.values()), set())
    return next(iter(ids)) if len(ids) == 1 else None


def apply_merges(items: Sequence[Item], lookup: Lookup) -> dict[str, str]:
    """Point the Bundle's references to a merged Patient at the Patient that replaced it, so the
    merged records make one pathway. Merges come from the Bundle (a Patient whose `link` says
    replaced-by) and from earlier ones (the index). Returns the Bundle's own merges (replaced id →
    replacing id), which the caller records once accepted."""
    own: dict[str, str] = {}
    for it in items:
        if it.valid and it.resource is not None and it.resource_type == "Patient":
            target = replaced_by(it.resource)
            if target and target != it.resource_id:
                own[str(it.resource_id)] = target

    def replacement(pid: str) -> str | None:
        return own.get(pid) or merged_into(lookup, pid)

    for it in items:
        pid = str(it.resource_id)
        if it.resource_type == "Patient" and pid in own and merge_loops(pid, own[pid], replacement):
            # A loop of merges would leave each patient replaced by another, and no pathway.
            link, _ = replacing_link(it.resource or {}) or (0, "")
            it.reject(
                422,
                "merge-loop",
                [
                    Issue(
                        "business-rule",
                        f"Patient/{own[pid]} is already merged into Patient/{pid} (directly or "
                        "through others): merging it back would make a loop",
                        (f"{it.root or 'Patient'}.link[{link}].other",),
                    )
                ],
            )
            del own[pid]
    others = {
        it.key
        for it in items
        if it.valid and it.resource_type != "Patient" and it.key and "/" not in it.key
    } - set(own)
    merges = dict(own)
    if others:
        found = lookup({IdentifierKey("Patient", MERGED_SYSTEM, pid) for pid in others})
        for key, ids in found.items():
            if len(ids) == 1:
                merges[key.value] = next(iter(ids))
    if not merges:
        return own
    for it in items:
        if not it.valid or it.resource is None or it.resource_type == "Patient":
            continue
        changed = False
        for _, ref in _walk(it.resource, ""):
            text = ref["reference"]
            if text.startswith("Patient/") and text.removeprefix("Patient/") in merges:
                ref["reference"] = f"Patient/{merges[text.removeprefix('Patient/')]}"
                changed = True
        if changed:
            finalise(it, it.resource)
    return own


# --- SQL ------------------------------------------------------------------------------------------


class IdentifierIndex:
    """The gateway's identifier index and pending references, in SQL."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.index = cast(Table, IdentifierIndexRow.__table__)
        self.pending = cast(Table, PendingReferenceRow.__table__)

    def _by_type(self, keys: Iterable[IdentifierKey]) -> dict[str, list[str]]:
        values: dict[str, set[str]] = defaultdict(set)
        for k in keys:
            values[k.resource_type].add(k.value)
        return {t: sorted(v) for t, v in values.items()}

    def lookup(self, keys: set[IdentifierKey]) -> dict[IdentifierKey, set[str]]:
        """Ids of the accepted resources that each key matches."""
        out: dict[IdentifierKey, set[str]] = defaultdict(set)
        t = self.index
        with self.engine.connect() as conn:
            for rtype, values in self._by_type(keys).items():
                for start in range(0, len(values), CHUNK):
                    chunk = values[start : start + CHUNK]
                    for row in conn.execute(
                        select(t.c.system, t.c.value, t.c.resource_id).where(
                            and_(t.c.resource_type == rtype, t.c.value.in_(chunk))
                        )
                    ):
                        out[IdentifierKey(rtype, row.system or None, row.value)].add(
                            row.resource_id
                        )
                        if row.system != MERGED_SYSTEM:
                            out[IdentifierKey(rtype, None, row.value)].add(row.resource_id)
        return {k: out[k] for k in keys if out.get(k)}

    def aliases(self, keys: set[IdentifierKey]) -> dict[IdentifierKey, str]:
        """The alias given to each key by references still waiting for it."""
        out: dict[IdentifierKey, str] = {}
        p = self.pending
        with self.engine.connect() as conn:
            for rtype, values in self._by_type(keys).items():
                for start in range(0, len(values), CHUNK):
                    chunk = values[start : start + CHUNK]
                    for row in conn.execute(
                        select(p.c.system, p.c.value, p.c.alias_id).where(
                            and_(p.c.resource_type == rtype, p.c.value.in_(chunk))
                        )
                    ):
                        out[IdentifierKey(rtype, row.system or None, row.value)] = row.alias_id
                        out.setdefault(IdentifierKey(rtype, None, row.value), row.alias_id)
        return {k: out[k] for k in keys if k in out}

    def record(
        self,
        source: str,
        at: datetime,
        items: Sequence[Item],
        deferred: Sequence[Deferred],
        merges: Mapping[str, str] | None = None,
    ) -> None:
        """Index the identifiers of `items` (accepted), record `deferred` references and Patient
        `merges`, and mark the pending references that `items` answer as resolved."""
        rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        for replaced, by in (merges or {}).items():
            rows[("Patient", MERGED_SYSTEM, replaced, by)] = {
                "resource_type": "Patient",
                "system": MERGED_SYSTEM,
                "value": replaced,
                "resource_id": by,
                "source": source,
                "recorded_at": at,
            }
        for it in items:
            if it.resource is None or not it.resource_id or it.resource_type not in INDEXED_TYPES:
                continue
            for system, value in identifiers_of(it.resource):
                key = (it.resource_type, system, value[:256], it.resource_id)
                rows[key] = {
                    "resource_type": it.resource_type,
                    "system": system[:256],
                    "value": value[:256],
                    "resource_id": it.resource_id,
                    "source": source,
                    "recorded_at": at,
                }
        if not rows and not deferred:
            return
        p = self.pending
        with self.engine.begin() as conn:
            ordered = [rows[k] for k in sorted(rows)]
            for start in range(0, len(ordered), CHUNK):
                upsert(
                    conn,
                    self.index,
                    ordered[start : start + CHUNK],
                    key=["resource_type", "system", "value", "resource_id"],
                    update=[],
                )
            counts: dict[tuple[str, str, str, str], tuple[Deferred, int]] = {}
            for d in deferred:
                k = (d.key.resource_type, d.key.system or "", d.key.value, d.element)
                counts[k] = (d, counts[k][1] + 1 if k in counts else 1)
            for (rtype, system, value, element), (d, n) in sorted(counts.items()):
                where = and_(
                    p.c.resource_type == rtype,
                    p.c.system == system,
                    p.c.value == value,
                    p.c.source == source,
                    p.c.element == element,
                )
                old = conn.execute(select(p.c.occurrences).where(where)).scalar()
                if old is None:
                    conn.execute(
                        p.insert().values(
                            resource_type=rtype,
                            system=system,
                            value=value,
                            source=source,
                            element=element,
                            alias_id=d.alias,
                            occurrences=n,
                            first_seen_at=at,
                            last_seen_at=at,
                        )
                    )
                else:
                    conn.execute(
                        update(p)
                        .where(where)
                        .values(occurrences=old + n, last_seen_at=at, resolved_at=None)
                    )
            if rows:
                # The pending references that these resources answer.
                by_type: dict[str, set[str]] = defaultdict(set)
                for r in rows.values():
                    by_type[r["resource_type"]].add(r["value"])
                for rtype, values in by_type.items():
                    vals = sorted(values)
                    for start in range(0, len(vals), CHUNK):
                        open_rows = conn.execute(
                            select(p.c.system, p.c.value, p.c.alias_id).where(
                                and_(
                                    p.c.resource_type == rtype,
                                    p.c.value.in_(vals[start : start + CHUNK]),
                                    p.c.resolved_at.is_(None),
                                )
                            )
                        ).all()
                        for row in open_rows:
                            target = next(
                                (
                                    r["resource_id"]
                                    for r in rows.values()
                                    if r["resource_type"] == rtype
                                    and r["value"] == row.value
                                    and (not row.system or r["system"] == row.system)
                                ),
                                None,
                            )
                            if target is None:
                                continue
                            conn.execute(
                                update(p)
                                .where(
                                    and_(
                                        p.c.resource_type == rtype,
                                        p.c.system == row.system,
                                        p.c.value == row.value,
                                        p.c.resolved_at.is_(None),
                                    )
                                )
                                .values(resolved_at=at, resolved_id=target)
                            )

    def open_pending(self) -> list[dict[str, Any]]:
        """Pending references not yet resolved (for Feed health)."""
        p = self.pending
        with self.engine.connect() as conn:
            return [
                dict(r._mapping)
                for r in conn.execute(
                    select(p).where(p.c.resolved_at.is_(None)).order_by(p.c.source, p.c.element)
                )
            ]


# The advisory lock every gateway process takes around a merge of Patients (PostgreSQL), and this
# process's own lock elsewhere.
MERGE_LOCK_ID = int.from_bytes(
    hashlib.sha256(b"parcours-ingest-merges").digest()[:8], "big", signed=True
)
MERGE_RETRY_AFTER_S = 1


@contextlib.contextmanager
def merges_locked(engine: Engine) -> Iterator[None]:
    """Hold the lock of Patient merges for the block (`locks_held`): at most one request
    merges at a time. Merges are rare; a request that waits longer than the lock timeout is
    answered 503 with Retry-After, having published nothing."""
    try:
        with locks_held(engine, [MERGE_LOCK_ID]):
            yield
    except VersionBusy as exc:
        raise busy_rejection(
            "merge-busy",
            "Une autre requête fusionne des patients en ce moment ; rien n'a été publié, "
            "renvoyez la requête. / Another request is merging patients; nothing was "
            "published, retry.",
            MERGE_RETRY_AFTER_S,
        ) from exc


class ReferenceResolver:
    """Resolves a Bundle against the identifier index, publishes through the ingest service,
    then records what it learnt (identifiers accepted, references deferred)."""

    def __init__(self, engine: Engine, metrics: IngestMetrics, defer: bool) -> None:
        self.index = IdentifierIndex(engine)
        self.metrics = metrics
        self.defer = defer

    def ingest_bundle(
        self,
        service: IngestService,
        source: str,
        received_at: datetime,
        prepared: PreparedBundle,
        body: Any,
    ) -> IngestResult:
        """`service.ingest` for a prepared Bundle whose conditional references, creates and
        updates are resolved first. Conditional creates that match are answered 200 and not
        published."""
        entries = body.get("entry") if isinstance(body, dict) else None
        requests = [
            e.get("request") if isinstance(e, dict) else None
            for e in (entries if isinstance(entries, list) else [])
        ]
        return self.ingest_items(
            service, source, received_at, prepared.items, prepared.atomic, dict(enumerate(requests))
        )

    def ingest_items(
        self,
        service: IngestService,
        source: str,
        received_at: datetime,
        items: Sequence[Item],
        atomic: bool,
        requests: Mapping[int, Any] | None = None,
        context: str = "bundle",
    ) -> IngestResult:
        """`service.ingest` for items (a Bundle's, one resource, NDJSON lines) whose conditional
        references, creates (`requests[i].ifNoneExist`) and updates are resolved first.

        Items that merge Patients hold the merge lock from the check for a loop to the record
        of the merge: two opposite merges sent at once cannot both pass (the second sees the
        first's record and is refused `merge-loop`)."""
        merging = any(
            it.resource_type == "Patient"
            and it.resource is not None
            and replacing_link(it.resource)
            for it in items
        )
        with merges_locked(self.index.engine) if merging else contextlib.nullcontext():
            return self._ingest_items(
                service, source, received_at, items, atomic, requests, context
            )

    def _ingest_items(
        self,
        service: IngestService,
        source: str,
        received_at: datetime,
        items: Sequence[Item],
        atomic: bool,
        requests: Mapping[int, Any] | None,
        context: str,
    ) -> IngestResult:
        merges = apply_merges(items, self.index.lookup)
        resolution = resolve_bundle(
            items,
            requests,
            self.index.lookup,
            self.index.aliases,
            self.defer,
            context,
        )
        sent = [i for i in items if i.index not in resolution.existing]
        result = service.ingest(source, received_at, sent, atomic)
        by_item = {id(r.item): r for r in result.entries}
        merged = [by_item.get(id(i)) or EntryResult(i, 200) for i in items]
        accepted = [r.item for r in merged if r.status in (200, 201) and r.item.valid]
        deferred = [
            d
            for d in resolution.deferred
            if by_item.get(id(items_at(items, d.item_index)))
            and by_item[id(items_at(items, d.item_index))].status in (200, 201)
        ]
        try:
            accepted_ids = {i.resource_id for i in accepted if i.resource_type == "Patient"}
            kept = {k: v for k, v in merges.items() if k in accepted_ids}
            self.index.record(source, received_at, accepted, deferred, kept)
            if kept:
                self.republish_merged(service, source, received_at, kept)
        except Exception:
            # The resources are in Kafka already; a lost index row makes a later conditional
            # reference fail loudly (an OperationOutcome), never silently.
            log.exception("could not record identifiers of accepted resources")
        for d in deferred:
            self.metrics.unresolved_references.labels(source, d.element).inc()
        return IngestResult(merged)

    def republish_merged(
        self, service: IngestService, source: str, received_at: datetime, merges: Mapping[str, str]
    ) -> int:
        """Send again, to the Patient that replaced it, what each merged Patient received before
        the merge (read back from the raw topic), so its records join that Patient's pathway.
        The stream worker drops them from the replaced Patient's own pathway. Returns how many
        records were sent (those already re-sent for this merge are answered as duplicates)."""
        log_t = cast(Table, IngestLogRow.__table__)
        sent = 0
        for old, new in sorted(merges.items()):
            with self.index.engine.connect() as conn:
                found = conn.execute(
                    select(log_t.c.partition, log_t.c.offset)
                    .where(and_(log_t.c.kafka_key == old, log_t.c.resource_type != "Patient"))
                    .order_by(log_t.c.partition, log_t.c.offset)
                    .limit(MAX_REPUBLISHED)
                ).all()
            if not found:
                continue
            values = read_records(
                service.publisher.settings.bootstrap,
                service.publisher.topics.raw,
                [(r.partition, r.offset) for r in found],
            )
            items: list[Item] = []
            for value in values:
                resource = orjson.loads(value)
                for _, ref in _walk(resource, ""):
                    if ref["reference"] == f"Patient/{old}":
                        ref["reference"] = f"Patient/{new}"
                item = prepare_resource(resource, None, index=len(items))
                # The gateway's own resend of a version it published, under the replacing
                # Patient: its references changed, not what the integrator said. It is known by
                # its content, as a record without versionId is (its versionId stays in `meta`
                # for the worker): under its own key it would be answered as a duplicate, and
                # the record would leave the merged Patient's pathway without joining the other.
                item.version = f"h:{hashlib.sha256(item.value).hexdigest()[:40]}"
                item.digest = ""
                if item.valid and item.key == new:
                    items.append(item)
            if items:
                result = service.ingest(source, received_at, items, atomic=False)
                sent += result.count(201)
        return sent


# A patient's history re-sent at a merge, at most (bounded statement and read).
MAX_REPUBLISHED = 20000


def read_records(bootstrap: str, topic: str, where: Sequence[tuple[int, int]]) -> list[bytes]:
    """The values of the records at (partition, offset) of `topic`, in that order."""
    wanted: dict[int, set[int]] = defaultdict(set)
    for partition, offset in where:
        wanted[partition].add(offset)
    found: dict[tuple[int, int], bytes] = {}
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, client_id="parcours-ingest-merge"
    )
    try:
        for partition, offsets in sorted(wanted.items()):
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, min(offsets))
            last = max(offsets)
            deadline = time.monotonic() + READ_TIMEOUT_S
            while consumer.position(tp) <= last and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500).values():
                    for record in records:
                        if record.offset in offsets and record.value is not None:
                            found[(partition, record.offset)] = record.value
    finally:
        consumer.close()
    return [found[k] for k in where if k in found]


READ_TIMEOUT_S = 30.0


def items_at(items: Sequence[Item], index: int) -> Item:
    """The item of entry `index`."""
    return next(i for i in items if i.index == index)
