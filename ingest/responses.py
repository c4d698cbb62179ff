"""Pure: the FHIR answers of the gateway (response Bundles, Location headers,
CapabilityStatement)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from ingest.entries import Item
from ingest.outcome import status_line
from ingest.service import EntryResult
from ingest.validate import MAPPED_TYPES, resource_types


def location(item: Item) -> str:
    """`Type/id/_history/versionId` when the feed versions its resources, else `Type/id`."""
    base = f"{item.resource_type}/{item.resource_id}"
    if item.version.startswith("v:"):
        return f"{base}/_history/{item.version[2:]}"
    return base


def entry_response(result: EntryResult) -> dict[str, Any]:
    """One Bundle.entry of a transaction- or batch-response."""
    response: dict[str, Any] = {"status": status_line(result.status)}
    item = result.item
    if result.status in (200, 201):
        response["location"] = location(item)
        if item.version.startswith("v:"):
            response["etag"] = f'W/"{item.version[2:]}"'
    if result.outcome is not None:
        response["outcome"] = result.outcome
    return {"response": response}


def response_bundle(bundle_type: str, results: list[EntryResult]) -> dict[str, Any]:
    """The answer to a transaction (`transaction-response`) or anything else (`batch-response`)."""
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "transaction-response" if bundle_type == "transaction" else "batch-response",
        "entry": [entry_response(r) for r in results],
    }


def message_response(
    header: dict[str, Any], results: list[EntryResult], now: datetime
) -> dict[str, Any]:
    """The answer to a message Bundle: a message whose MessageHeader.response says `ok`."""
    reply_header: dict[str, Any] = {
        "resourceType": "MessageHeader",
        "id": str(uuid.uuid4()),
        "eventCoding": header.get("eventCoding") or {"code": "unknown"},
        "source": {"name": "Parcours ingest gateway", "endpoint": "urn:parcours:ingest"},
        "response": {"identifier": str(header.get("id", "")), "code": "ok"},
    }
    if "eventUri" in header:
        reply_header.pop("eventCoding")
        reply_header["eventUri"] = header["eventUri"]
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "message",
        "timestamp": now.isoformat(),
        "entry": [
            {"fullUrl": f"urn:uuid:{reply_header['id']}", "resource": reply_header},
            *[
                {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r.outcome}
                for r in results
                if r.outcome is not None
            ],
        ],
    }


def capability_statement(
    version: str, max_body_bytes: int, max_resource_bytes: int | None = None
) -> dict[str, Any]:
    """What the gateway accepts: every R4 type (create, update), Bundles, `$import`."""
    from ingest.limits import MAX_DEPTH

    resource_limit = (
        f", resources up to {max_resource_bytes} bytes" if max_resource_bytes is not None else ""
    )
    mapped = set(MAPPED_TYPES)
    resources = []
    for name in sorted(resource_types()):
        resources.append(
            {
                "type": name,
                "interaction": [{"code": "create"}, {"code": "update"}],
                # If-Match on update is honoured (412 when it names another version).
                "versioning": "versioned-update",
                "updateCreate": True,
                "documentation": (
                    "Mapped to pathway events downstream."
                    if name in mapped
                    else "Validated and published raw."
                ),
            }
        )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-29",
        "publisher": "Parcours",
        "kind": "instance",
        "software": {"name": "Parcours ingest gateway", "version": version},
        "implementation": {"description": "Parcours FHIR R4 ingest gateway (write-only)"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Write-only gateway: resources are validated (R4), deduplicated on "
                    "(type, id, meta.versionId or content hash) and published to Kafka keyed "
                    "by patient; a meta.versionId already received with other content gets "
                    f"409. Request bodies up to {max_body_bytes} bytes{resource_limit}, "
                    f"JSON nested at most {MAX_DEPTH} levels; strings without control "
                    "characters; per-1, dom-2, dom-3 and ref-1 enforced."
                ),
                "security": {
                    "cors": False,
                    "description": (
                        "Bearer token per integrator (parcours ingest token create NAME "
                        "[--expires-in 90d]; revoke NAME takes effect at once). Each patient "
                        "belongs to the integrator that first wrote it; others get 403 unless "
                        "granted (parcours ingest grant)."
                    ),
                },
                "resource": resources,
                "interaction": [
                    {"code": "transaction", "documentation": "All or nothing."},
                    {
                        "code": "batch",
                        "documentation": "Per-entry status; collection Bundles too.",
                    },
                ],
                "operation": [
                    {
                        "name": "import",
                        "definition": "urn:parcours:OperationDefinition/import",
                        "documentation": (
                            "POST NDJSON (application/fhir+ndjson), one resource a line."
                        ),
                    }
                ],
            }
        ],
        "messaging": [
            {
                "documentation": "POST a message Bundle (first entry a MessageHeader) to /fhir.",
                "supportedMessage": [
                    {"mode": "receiver", "definition": "urn:parcours:MessageDefinition/any"}
                ],
            }
        ],
    }
