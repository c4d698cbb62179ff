"""`parcours ingest push`: send Bundle JSON and NDJSON files to the gateway (or straight to Kafka).

Files become requests: a Bundle file is posted as it is (a transaction stays a transaction), unless
it is over the gateway's size limit (`split_bundle`); a single-resource file goes to
`/fhir/{type}`, and NDJSON is cut into `$import` requests below the gateway's size limit. The
summary counts resources: accepted, duplicates, rejected by reason.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from ingest.bundle import resolve_entries
from ingest.entries import (
    MAX_RESOURCE_BYTES,
    Item,
    parse_ndjson,
    prepare_bundle,
    prepare_resource,
)
from ingest.limits import repeated_name_issue
from ingest.outcome import BrokerUnavailable, Issue, Rejection, outcome_reason
from ingest.service import IngestService

if TYPE_CHECKING:
    from ingest.references import ReferenceResolver

NDJSON_SUFFIXES = (".ndjson", ".jsonl")
# Bundle types that `push` may send in parts when one is over the gateway's body limit.
SPLITTABLE = ("transaction", "batch")
MAX_RETRIES = 5
# Answers that say "later": Kafka or the database unavailable, or this integrator's rate.
RETRIED = (429, 503)


@dataclass
class PushRequest:
    """One HTTP request to make: what, where, and how many resources it holds."""

    path: Path
    kind: str  # bundle | resource | ndjson
    body: bytes
    count: int
    type_name: str | None = None
    # One of the parts of a Bundle over the gateway's body limit (`split_bundle`).
    parts: bool = False


@dataclass
class Summary:
    """Resource counts of a push."""

    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def rejected_total(self) -> int:
        """All rejected resources, whatever the reason."""
        return sum(self.rejected.values())

    def add_status(self, status: int, reason: str | None, n: int = 1) -> None:
        """Count `n` resources that ended with HTTP `status`."""
        if status == 201:
            self.accepted += n
        elif status == 200:
            self.duplicates += n
        else:
            self.rejected[reason or f"http-{status}"] += n

    def lines(self) -> list[str]:
        """The human summary."""
        out = [f"accepted: {self.accepted}", f"duplicates: {self.duplicates}"]
        out.append(f"rejected: {self.rejected_total}")
        out += [f"  {reason}: {n}" for reason, n in self.rejected.most_common()]
        return out


def plan_file(path: Path, max_body_bytes: int) -> Iterator[PushRequest]:
    """The requests that push `path`."""
    data = path.read_bytes()
    if path.suffix.lower() in NDJSON_SUFFIXES:
        chunk: list[bytes] = []
        size = 0
        for line in data.splitlines():
            if not line.strip():
                continue
            if chunk and (size + len(line) + 1 > max_body_bytes or len(chunk) >= 1000):
                yield PushRequest(path, "ndjson", b"\n".join(chunk) + b"\n", len(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line) + 1
        if chunk:
            yield PushRequest(path, "ndjson", b"\n".join(chunk) + b"\n", len(chunk))
        return
    try:
        # orjson refuses absurd nesting with a ValueError, where json would overflow the stack.
        doc = orjson.loads(data)
    except ValueError:
        yield PushRequest(path, "resource", data, 1, "Resource")
        return
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        if len(data) <= max_body_bytes or doc.get("type") not in SPLITTABLE:
            yield PushRequest(path, "bundle", data, max(1, len(doc.get("entry") or [])))
            return
        for part, count in split_bundle(doc, max_body_bytes):
            yield PushRequest(path, "bundle", part, count, parts=True)
    else:
        rtype = doc.get("resourceType") if isinstance(doc, dict) else None
        yield PushRequest(path, "resource", data, 1, str(rtype or "Resource"))


# A body must leave room for what the gateway reads around its resources.
PART_MARGIN = 4096


def split_bundle(doc: dict[str, Any], max_body_bytes: int) -> Iterator[tuple[bytes, int]]:
    """A transaction or batch Bundle over the gateway's body limit, as several Bundles of the same
    type, each under it, with its entries in their order (a patient's Bundle begins with its
    Patient). `urn:uuid` references between entries become `Type/id` first, as the gateway would
    make them, so that each part stands alone; each part of a transaction is all-or-nothing on
    its own. An entry larger than the limit goes alone (the gateway answers 413 for it). Each
    part comes with its number of entries."""
    entries = doc.get("entry") or []
    resources = resolve_entries(doc)
    limit = max_body_bytes - PART_MARGIN
    part: list[bytes] = []
    size = 0
    head = orjson.dumps({"resourceType": "Bundle", "type": doc["type"], "entry": []})[:-3]

    def body() -> tuple[bytes, int]:
        return head + b"[" + b",".join(part) + b"]}", len(part)

    for entry, resource in zip(entries, resources, strict=True):
        one = orjson.dumps({**entry, "resource": resource})
        if part and size + len(one) + 1 > limit:
            yield body()
            part, size = [], 0
        part.append(one)
        size += len(one) + 1
    if part:
        yield body()


def count_response(req: PushRequest, status: int, body: Any, summary: Summary) -> None:
    """Add the outcome of one answered request to `summary`."""
    if status >= 400 or not isinstance(body, dict):
        summary.add_status(
            status, outcome_reason(body) if isinstance(body, dict) else None, req.count
        )
        return
    if body.get("resourceType") == "Bundle" and body.get("type") in (
        "batch-response",
        "transaction-response",
    ):
        for entry in body.get("entry") or []:
            response = entry.get("response") or {}
            code = int(str(response.get("status", "0")).split(" ", 1)[0] or 0)
            summary.add_status(code, outcome_reason(response.get("outcome")))
        return
    if body.get("resourceType") == "Bundle" and body.get("type") == "message":
        summary.add_status(201, None, req.count)
        return
    summary.add_status(status, None, req.count)


def push_http(
    requests: list[PushRequest],
    base_url: str,
    token: str,
    progress: Callable[[int], None],
    timeout_s: float = 120.0,
) -> Summary:
    """Send `requests` in order; 429 and 503 answers are retried after their Retry-After."""
    summary = Summary()
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    with httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s) as client:
        for req in requests:
            if req.kind == "bundle":
                url, ctype = "/fhir", "application/fhir+json"
            elif req.kind == "ndjson":
                url, ctype = "/fhir/$import", "application/fhir+ndjson"
            else:
                url, ctype = f"/fhir/{req.type_name}", "application/fhir+json"
            for attempt in range(MAX_RETRIES + 1):
                resp = client.post(url, content=req.body, headers={"Content-Type": ctype})
                if resp.status_code not in RETRIED or attempt == MAX_RETRIES:
                    break
                time.sleep(float(resp.headers.get("Retry-After", "2")))
            try:
                body = resp.json()
            except ValueError:
                body = None
            count_response(req, resp.status_code, body, summary)
            progress(req.count)
    return summary


def loads_body(req: PushRequest) -> Any:
    """A Bundle's or a resource's JSON; Rejection (400) when an object gives a name twice."""
    body = orjson.loads(req.body)
    root = body.get("resourceType") if isinstance(body, dict) else None
    repeated = repeated_name_issue(req.body, root if isinstance(root, str) else "Resource")
    if repeated is not None:
        raise Rejection(400, "invalid-json", [repeated])
    return body


def items_of(
    req: PushRequest, max_resource_bytes: int = MAX_RESOURCE_BYTES
) -> tuple[list[Item], bool]:
    """Validated items of a request, and whether it is all-or-nothing (for --direct)."""
    if req.kind == "ndjson":
        return parse_ndjson(req.body, max_resource_bytes), False
    body = loads_body(req)
    if req.kind == "bundle":
        prepared = prepare_bundle(body, max_resource_bytes)
        return prepared.items, prepared.atomic
    return [prepare_resource(body, req.type_name, max_resource_bytes=max_resource_bytes)], True


def push_direct(
    requests: list[PushRequest],
    service: IngestService,
    source: str,
    progress: Callable[[int], None],
    resolver: ReferenceResolver | None = None,
    max_resource_bytes: int = MAX_RESOURCE_BYTES,
) -> Summary:
    """Validate and publish in this process (no HTTP), with the gateway's own service: same
    validation, keys, headers, dedupe memory and rejection records (and, given `resolver`, the
    same resolution of conditional references)."""
    summary = Summary()
    for req in requests:
        received_at = datetime.now(UTC)
        try:
            if req.kind == "bundle" and resolver is not None:
                body = loads_body(req)
                prepared = prepare_bundle(body, max_resource_bytes)
                result = resolver.ingest_bundle(service, source, received_at, prepared, body)
            else:
                items, atomic = items_of(req, max_resource_bytes)
                result = service.ingest(source, received_at, items, atomic)
            for entry in result.entries:
                summary.add_status(entry.status, outcome_reason(entry.outcome))
        except ValueError as exc:
            rej = Rejection(400, "invalid-json", [Issue("structure", str(exc), ("Resource",))])
            service.reject(source, received_at, rej, req.body)
            summary.add_status(400, "invalid-json", req.count)
        except Rejection as rej:
            service.reject(source, received_at, rej, req.body)
            summary.add_status(rej.status, rej.reason, req.count)
        except BrokerUnavailable:
            summary.add_status(503, "broker-unavailable", req.count)
        progress(req.count)
    return summary


# Synthea writes the Organizations and Locations, then the Practitioners, that every patient
# Bundle points at by conditional reference: they must be sent first.
FIRST_PREFIXES = ("hospitalinformation", "practitionerinformation")


def push_order(paths: list[Path]) -> list[Path]:
    """The files to push, folders expanded to their JSON/NDJSON files: Synthea's
    `hospitalInformation*` then `practitionerInformation*` first, then the rest by name. Files
    named one by one keep their place after those."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.is_file() and p.suffix.lower() in (".json", *NDJSON_SUFFIXES)
                )
            )
        else:
            files.append(path)

    def rank(path: Path) -> int:
        name = path.name.lower().lstrip("_")
        for i, prefix in enumerate(FIRST_PREFIXES):
            if name.startswith(prefix):
                return i
        return len(FIRST_PREFIXES)

    return sorted(files, key=rank)
