"""Pure: turn a request (Bundle, single resource, NDJSON) into validated items ready to publish.

Each item carries what publishing needs: the resource with real ids and `Type/id` references,
its Kafka key (the patient id, else `Type/id`), its idempotency version and the exact bytes to
publish. Invalid entries carry their issues instead.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from ingest.bundle import patient_key, resolve_entries
from ingest.limits import (
    depth_issue,
    may_hold_controls,
    repeated_name_issue,
    text_issues,
    too_deep,
)
from ingest.outcome import Issue, Rejection, clip, escape_controls
from ingest.validate import ID_PATTERN, is_resource_type, validate_resource
from parcours.fhir_refs import pathway_patient

BUNDLE_TYPES = ("transaction", "batch", "message", "collection")
# A transaction and a message are one unit: one bad entry rejects the whole Bundle.
ATOMIC_TYPES = ("transaction", "message")
ALLOWED_METHODS = ("POST", "PUT")
# Stable namespace for ids the gateway gives to resources that arrive without one, so that the
# same content pushed twice gets the same id (and is recognised as a duplicate).
ID_NAMESPACE = uuid.UUID("6f1c2d1e-93a4-4f8e-9b0e-7d1f0c1a5e11")
# Largest resource (compact JSON) the gateway publishes. The producer's max_request_size is set
# above it (publish.py), so a resource that passes is never refused by the producer.
MAX_RESOURCE_BYTES = 4 * 1024 * 1024 - 64 * 1024


@dataclass
class Item:
    """One resource of a request: valid (issues empty) or not."""

    index: int
    resource: dict[str, Any] | None
    raw: Any
    status: int = 0
    reason: str = ""
    issues: list[Issue] = field(default_factory=list)
    resource_type: str | None = None
    resource_id: str | None = None
    key: str = ""
    version: str = ""
    value: bytes = b""
    # What a `v:` version holds (`content_digest` of the resource as the integrator sent it);
    # empty for `h:` versions, whose name is already their content's hash.
    digest: str = ""
    # FHIRPath of the resource in its request (`Bundle.entry[2].resource`, `Encounter`).
    root: str = ""
    # The version an `If-Match` header or `request.ifMatch` names (`3` of `W/"3"`, or `*`): the
    # item is published only if it is the resource's current version (`*`: any version).
    if_match: str | None = None

    @property
    def valid(self) -> bool:
        """True when the item can be published."""
        return not self.issues

    @property
    def dedupe_key(self) -> tuple[str, str, str]:
        """(type, id, version): the idempotency key."""
        return (self.resource_type or "", self.resource_id or "", self.version)

    def reject(self, status: int, reason: str, issues: list[Issue]) -> None:
        """Mark the item invalid."""
        self.status, self.reason, self.issues = status, reason, issues


def canonical_bytes(resource: dict[str, Any]) -> bytes:
    """Compact JSON with sorted keys: equal content gives equal bytes (and hash)."""
    return orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)


# Elements that name or date a version rather than say what it holds.
_NOT_CONTENT = ("versionId", "lastUpdated")


def content_digest(resource: dict[str, Any]) -> str:
    """SHA-256 of what a resource version holds: the resource without its `id` and the
    `meta.versionId` and `meta.lastUpdated` that name and date the version (both are in its
    key or may be stamped again at each send). Two sends of one version with the same digest
    are one version; with different digests, two."""
    body = {k: v for k, v in resource.items() if k != "id"}
    meta = body.get("meta")
    if isinstance(meta, dict):
        rest = {k: v for k, v in meta.items() if k not in _NOT_CONTENT}
        if rest:
            body["meta"] = rest
        else:
            del body["meta"]
    return hashlib.sha256(canonical_bytes(body)).hexdigest()


def content_id(resource: dict[str, Any]) -> str:
    """A deterministic id for a resource that arrived without one."""
    return str(uuid.uuid5(ID_NAMESPACE, hashlib.sha256(canonical_bytes(resource)).hexdigest()))


def finalise(item: Item, resource: dict[str, Any]) -> None:
    """Fill key, version and bytes of a valid item.

    The version is `meta.versionId` when the feed gives one (`v:…`), else the content hash
    (`h:…`), so a re-sent identical resource is a duplicate and a changed one is new.
    """
    value = canonical_bytes(resource)
    meta = resource.get("meta")
    version_id = meta.get("versionId") if isinstance(meta, dict) else None
    item.resource = resource
    item.resource_type = str(resource["resourceType"])
    item.resource_id = str(resource["id"])
    item.key = patient_key(resource) or f"{item.resource_type}/{item.resource_id}"
    item.version = (
        f"v:{version_id}" if version_id else f"h:{hashlib.sha256(value).hexdigest()[:40]}"
    )
    item.value = value


def refuse_unusable_patient(item: Item) -> None:
    """Refuse (422 `patient-reference`) a valid item of a type the stream worker folds onto a
    patient's pathway when it names no patient the worker can read: the worker would
    dead-letter it after the 2xx. Run once references are final (`urn:uuid`, conditional and
    merged-patient references resolved). The rule is the worker's own
    (`parcours.fhir_refs.pathway_patient`)."""
    if not item.valid or item.resource is None:
        return
    found = pathway_patient(item.resource)
    if found is None or found.patient_id is not None:
        return
    root = item.root or str(item.resource_type)
    issue = Issue("value", clip(found.problem), (f"{root}.{found.element}",))
    item.reject(422, "patient-reference", [issue])


def as_sent(item: Item) -> None:
    """Remember what a valid `v:` item holds as the integrator sent it (`Item.digest`), before
    the gateway resolves its conditional references or moves it to a merged patient: a resend
    of the same version must match it whatever the gateway has learnt since."""
    if item.resource is not None and item.version.startswith("v:"):
        item.digest = content_digest(item.resource)


def describe(item: Item, body: Any, expected_type: str | None) -> None:
    """Set the type and id of a refused item from its body, when they are well formed (they
    end in SQL rows, dead-letter headers and metrics labels)."""
    rtype = body.get("resourceType") if isinstance(body, dict) else None
    if isinstance(rtype, str) and is_resource_type(rtype):
        item.resource_type = rtype
    elif expected_type is not None and is_resource_type(expected_type):
        item.resource_type = expected_type
    rid = body.get("id") if isinstance(body, dict) else None
    item.resource_id = rid if isinstance(rid, str) and ID_PATTERN.match(rid) else None


def size_issue(item: Item, limit: int, where: str) -> bool:
    """Refuse a valid item whose published form is larger than `limit` bytes (413)."""
    if len(item.value) <= limit:
        return False
    item.reject(
        413,
        "too-large",
        [
            Issue(
                "too-costly",
                f"The resource is {len(item.value)} bytes; the gateway publishes resources of "
                f"at most {limit} bytes (PARCOURS_INGEST_MAX_RESOURCE_BYTES, or what the "
                "broker's topic takes)",
                (where,),
            )
        ],
    )
    item.value = b""
    return True


def prepare_resource(
    body: Any,
    expected_type: str | None,
    url_id: str | None = None,
    index: int = 0,
    max_resource_bytes: int = MAX_RESOURCE_BYTES,
) -> Item:
    """One resource from `POST /fhir/{type}`, `PUT /fhir/{type}/{id}` or an NDJSON line."""
    item = Item(index=index, resource=None, raw=body)
    status, reason, issues = validate_resource(body, expected_type)
    if issues:
        item.reject(status, reason, issues)
        describe(item, body, expected_type)
        return item
    resource = dict(body)
    rtype = resource["resourceType"]
    if url_id is not None:
        if resource.get("id") != url_id:
            item.resource_type = rtype
            item.reject(
                400,
                "id-mismatch",
                [
                    Issue(
                        "invalid",
                        (
                            f"id {resource['id']!r} does not match the URL id "
                            if resource.get("id")
                            else "The resource has no id; a PUT needs the URL id "
                        )
                        + clip(escape_controls(repr(url_id)), 80),
                        (f"{rtype}.id",),
                    )
                ],
            )
            return item
    elif not resource.get("id"):
        resource["id"] = content_id(resource)
    finalise(item, resource)
    as_sent(item)
    item.root = rtype
    size_issue(item, max_resource_bytes, rtype)
    return item


def _entry_request_issues(entry: dict[str, Any], index: int, rtype: str | None) -> list[Issue]:
    """bdl-3: transaction and batch entries need a request; Parcours takes POST and PUT."""
    where = f"Bundle.entry[{index}].request"
    request = entry.get("request")
    if not isinstance(request, dict):
        return [Issue("required", "A transaction or batch entry needs a request", (where,))]
    method = request.get("method")
    if method not in ALLOWED_METHODS:
        return [
            Issue(
                "not-supported",
                f"Method {method!r} is not supported; the gateway accepts POST and PUT",
                (f"{where}.method",),
            )
        ]
    url = request.get("url")
    if not isinstance(url, str) or not url:
        return [Issue("required", "request.url is missing", (f"{where}.url",))]
    url_type = url.split("?", 1)[0].split("/", 1)[0]
    if rtype and url_type != rtype:
        return [Issue("invalid", f"request.url {url!r} does not name a {rtype}", (f"{where}.url",))]
    return []


def _put_id(entry: dict[str, Any]) -> str | None:
    request = entry.get("request")
    if isinstance(request, dict) and request.get("method") == "PUT":
        parts = str(request.get("url", "")).split("?", 1)[0].split("/")
        if len(parts) >= 2 and parts[1]:
            return parts[1]
    return None


@dataclass
class PreparedBundle:
    """A Bundle's items, with its type and (for messages) its MessageHeader."""

    bundle_type: str
    items: list[Item]
    message_header: dict[str, Any] | None = None

    @property
    def atomic(self) -> bool:
        """True when one bad entry rejects the whole Bundle."""
        return self.bundle_type in ATOMIC_TYPES

    def invalid(self) -> list[Item]:
        """The items with issues."""
        return [i for i in self.items if not i.valid]


def _envelope_checks(body: Any) -> None:
    """Raise Rejection unless `body` is a Bundle of an accepted type, shallow enough to walk."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        got = body.get("resourceType") if isinstance(body, dict) else type(body).__name__
        raise Rejection(
            400,
            "not-a-bundle",
            [
                Issue(
                    "invalid",
                    f"POST /fhir takes a Bundle; got {clip(escape_controls(repr(got)), 80)}. "
                    "Post single resources to /fhir/{type}",
                    ("Bundle.resourceType",),
                )
            ],
        )
    if too_deep(body):
        raise Rejection(400, "too-deep", [depth_issue("Bundle")], resource_type="Bundle")
    btype = body.get("type")
    if not isinstance(btype, str) or btype not in BUNDLE_TYPES:
        raise Rejection(
            422,
            "bundle-type",
            [
                Issue(
                    "not-supported",
                    f"Bundle.type {clip(escape_controls(repr(btype)), 80)} is not accepted; "
                    f"use one of {', '.join(BUNDLE_TYPES)}",
                    ("Bundle.type",),
                )
            ],
            resource_type="Bundle",
        )


def etag_value(text: str) -> str | None:
    """The version an ETag names (`W/"3"`, `"3"` or `3` → `3`; `*` → `*`); None when `text`
    is not an ETag."""
    tag = text.strip()
    if tag == "*":
        return tag
    tag = tag.removeprefix("W/")
    if len(tag) >= 2 and tag[0] == tag[-1] == '"':
        tag = tag[1:-1]
    if not tag or any(c.isspace() or c in '",*' for c in tag):
        return None
    return tag


def if_match_issue(item: Item, code: str, text: str) -> Issue:
    """An issue about the item's If-Match, naming where it was given: its entry's
    `request.ifMatch`, or the HTTP header (`location` `http.If-Match`, as FHIR names headers)."""
    if item.root.startswith("Bundle.entry["):
        return Issue(code, text, (f"{item.root.removesuffix('.resource')}.request.ifMatch",))
    return Issue(code, text, location=("http.If-Match",))


def set_if_match(item: Item, text: str) -> None:
    """Give `item` the version `text` (an If-Match ETag) names, or refuse it 400 when `text`
    is not an ETag."""
    tag = etag_value(text)
    if tag is not None:
        item.if_match = tag
        return
    message = (
        f"If-Match {clip(escape_controls(repr(text)), 80)} is not an ETag: give the version as "
        'W/"3" (or * for any version)'
    )
    item.reject(400, "invalid-request", [if_match_issue(item, "value", message)])


_PLAIN_REQUEST_KEYS = frozenset({"method", "url", "ifNoneExist", "ifMatch", "ifNoneMatch"})


def _plain_entry(shell: dict[str, Any]) -> bool:
    """True for the usual entry (a string fullUrl, a request of strings), which the R4 entry
    model would accept: validating it with the model costs a third of a resource's time."""
    if not set(shell) <= {"fullUrl", "request"}:
        return False
    if "fullUrl" in shell and not isinstance(shell["fullUrl"], str):
        return False
    request = shell.get("request")
    if request is None:
        return True
    return (
        isinstance(request, dict)
        and set(request) <= _PLAIN_REQUEST_KEYS
        and all(isinstance(v, str) and v for v in request.values())
    )


def _entry_issues(entry: dict[str, Any], index: int) -> list[Issue]:
    """The entry's own elements (fullUrl, request, search, response), without its resource:
    R4 structure, characters, and a fullUrl that is a URI (a `urn:uuid:` holds a UUID)."""
    from fhir.resources.R4B.bundle import BundleEntry
    from pydantic import ValidationError

    from ingest.validate import issues_from_validation_error

    where = f"Bundle.entry[{index}]"
    shell = {k: v for k, v in entry.items() if k != "resource"}
    if may_hold_controls(orjson.dumps(shell)):
        issues = text_issues(shell, where)
        if issues:
            return issues
    try:
        if not _plain_entry(shell):
            BundleEntry.model_validate(shell)
    except ValidationError as exc:
        return issues_from_validation_error(exc, where)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        return [Issue("invalid", f"Not a valid Bundle entry ({type(exc).__name__})", (where,))]
    full_url = entry.get("fullUrl")
    if isinstance(full_url, str):
        problem = None
        if not full_url or any(c.isspace() for c in full_url):
            problem = "fullUrl must be a URI (no spaces)"
        elif full_url.startswith("urn:uuid:") and not ID_PATTERN.match(
            full_url.removeprefix("urn:uuid:")
        ):
            # The uuid becomes the id of a resource that has none.
            problem = "a urn:uuid: fullUrl must hold a UUID (1-64 of A-Z a-z 0-9 - .)"
        if problem:
            return [Issue("value", problem, (f"{where}.fullUrl",))]
    return []


def _conflict_issues(items: list[Item], entries: list[dict[str, Any]]) -> None:
    """bdl-7 and one content per resource version: a later entry that repeats an earlier
    fullUrl, or gives other content for the same (type, id, version), is refused."""
    full_urls: dict[tuple[str, str], int] = {}
    contents: dict[tuple[str, str, str], tuple[int, str | bytes]] = {}
    for item in items:
        if not item.valid:
            continue
        full_url = entries[item.index].get("fullUrl")
        where = f"Bundle.entry[{item.index}]"
        if isinstance(full_url, str):
            # bdl-7 allows one fullUrl for several versions of the resource.
            key = (full_url, item.version if item.version.startswith("v:") else "")
            if key in full_urls:
                item.reject(
                    400,
                    "duplicate-fullurl",
                    [
                        Issue(
                            "invariant",
                            f"bdl-7: fullUrl {clip(full_url, 200)!r} is already used by "
                            f"entry[{full_urls[key]}]",
                            (f"{where}.fullUrl",),
                        )
                    ],
                )
                continue
            full_urls[key] = item.index
        seen = contents.get(item.dedupe_key)
        if seen is not None and seen[1] != (item.digest or item.value):
            item.reject(
                400,
                "conflicting-entries",
                [
                    Issue(
                        "conflict",
                        f"entry[{seen[0]}] gives other content for "
                        f"{item.resource_type}/{item.resource_id} in the same version",
                        (f"{where}.resource",),
                    )
                ],
            )
            continue
        contents.setdefault(item.dedupe_key, (item.index, item.digest or item.value))


def prepare_bundle(body: Any, max_resource_bytes: int = MAX_RESOURCE_BYTES) -> PreparedBundle:
    """Validate a Bundle's envelope and each entry; resolve `urn:uuid` references.

    Raises Rejection for an envelope that cannot be processed at all. Invalid entries are
    returned as items with issues: the caller decides (atomic Bundle → reject all).
    """
    _envelope_checks(body)
    btype = str(body["type"])
    entries = body.get("entry")
    entries = [] if entries is None else entries
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise Rejection(
            400,
            "invalid-resource",
            [Issue("structure", "Bundle.entry must be an array of objects", ("Bundle.entry",))],
            resource_type="Bundle",
        )
    envelope = {k: v for k, v in body.items() if k != "entry"}
    status, reason, issues = validate_resource(envelope, "Bundle", "Bundle")
    if issues:
        raise Rejection(status, reason, issues, resource_type="Bundle")
    header: dict[str, Any] | None = None
    if btype == "message":
        first = entries[0].get("resource") if entries else None
        if not isinstance(first, dict) or first.get("resourceType") != "MessageHeader":
            raise Rejection(
                422,
                "message-header",
                [
                    Issue(
                        "required",
                        "The first entry of a message Bundle must be a MessageHeader",
                        ("Bundle.entry[0].resource",),
                    )
                ],
                resource_type="Bundle",
            )
        header = first

    # Ids must exist before references are resolved; an entry with neither id nor urn:uuid
    # fullUrl gets a content-derived id, so a re-sent Bundle is recognised as a duplicate.
    with_ids = dict(body)
    with_ids["entry"] = []
    for entry in entries:
        resource = entry.get("resource")
        full_url = entry.get("fullUrl")
        if (
            isinstance(resource, dict)
            and not resource.get("id")
            and not (isinstance(full_url, str) and full_url.startswith("urn:uuid:"))
        ):
            entry = {**entry, "resource": {**resource, "id": content_id(resource)}}
        elif resource is not None and not isinstance(resource, dict):
            entry = {**entry, "resource": None}
        with_ids["entry"].append(entry)
    resolved = resolve_entries(with_ids, in_place=True)

    items: list[Item] = []
    for index, entry in enumerate(with_ids["entry"]):
        root = f"Bundle.entry[{index}].resource"
        item = Item(index=index, resource=None, raw=entry.get("resource"), root=root)
        raw = entry.get("resource")
        if isinstance(raw, dict):
            describe(item, raw, None)
        if raw is None:
            missing = entries[index].get("resource") is None
            item.raw = entries[index].get("resource")
            item.reject(
                400,
                "invalid-resource",
                [
                    Issue(
                        "required" if missing else "structure",
                        "Entry has no resource" if missing else "Entry resource must be an object",
                        (f"Bundle.entry[{index}].resource",),
                    )
                ],
            )
            items.append(item)
            continue
        status, reason, issues = validate_resource(resolved[index], None, root)
        if not issues and btype in ("transaction", "batch"):
            issues = _entry_request_issues(entry, index, item.resource_type)
            status, reason = (400, "invalid-request") if issues else (0, "")
        put_id = _put_id(entry)
        if not issues and put_id is not None and put_id != resolved[index].get("id"):
            status, reason = 400, "id-mismatch"
            issues = [
                Issue(
                    "invalid",
                    f"PUT url id {clip(escape_controls(repr(put_id)), 80)} differs from the "
                    "resource id",
                    (f"{root}.id",),
                )
            ]
        if not issues:
            issues = _entry_issues(entries[index], index)
            status, reason = (400, "invalid-entry") if issues else (0, "")
        if issues:
            item.reject(status, reason, issues)
            describe(item, raw, None)
        else:
            finalise(item, resolved[index])
            as_sent(item)
            size_issue(item, max_resource_bytes, root)
            request = entry.get("request") if btype in ("transaction", "batch") else None
            if_match = request.get("ifMatch") if isinstance(request, dict) else None
            if item.valid and isinstance(if_match, str):
                set_if_match(item, if_match)
        items.append(item)
    _conflict_issues(items, entries)
    return PreparedBundle(btype, items, header)


def parse_ndjson(data: bytes, max_resource_bytes: int = MAX_RESOURCE_BYTES) -> list[Item]:
    """One item per non-blank NDJSON line; `index` is the 1-based line number."""
    items: list[Item] = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            body = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            item = Item(index=number, resource=None, raw=line.decode("utf-8", "replace"))
            item.reject(
                400,
                "invalid-json",
                [Issue("structure", clip(f"line {number}: {exc}"), (f"line[{number}]",))],
            )
            items.append(item)
            continue
        kind = body.get("resourceType") if isinstance(body, dict) else None
        repeated = repeated_name_issue(line, kind if isinstance(kind, str) else f"line[{number}]")
        if repeated is not None:
            item = Item(index=number, resource=None, raw=line.decode("utf-8", "replace"))
            item.reject(400, "invalid-json", [repeated])
        else:
            item = prepare_resource(body, None, index=number, max_resource_bytes=max_resource_bytes)
        if item.issues:
            item.issues = [
                Issue(i.code, f"line {number}: {i.diagnostics}", i.expression, i.severity)
                for i in item.issues
            ]
        items.append(item)
    _line_conflicts(items)
    return items


def _line_conflicts(items: list[Item]) -> None:
    """One content per resource version in an NDJSON file too: a later line that gives other
    content for the same (type, id, versionId) is refused, as in a Bundle."""
    first: dict[tuple[str, str, str], tuple[int, str]] = {}
    for item in items:
        if not item.valid or not item.digest:
            continue
        seen = first.setdefault(item.dedupe_key, (item.index, item.digest))
        if seen[1] != item.digest:
            item.reject(
                400,
                "conflicting-entries",
                [
                    Issue(
                        "conflict",
                        f"line {item.index}: line {seen[0]} gives other content for "
                        f"{item.resource_type}/{item.resource_id} in the same version",
                        (f"{item.root}.meta.versionId",),
                    )
                ],
            )
