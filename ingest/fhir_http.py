"""HTTP pieces of the gateway that hold no state: the FHIR response class, media types, the
OpenAPI documentation of bodies and errors, metric labels, and the database fail-fast hook."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import Request, Response
from sqlalchemy import Engine, event

from ingest.openapi import body_schemas
from ingest.outcome import DatabaseUnavailable

FHIR_JSON = "application/fhir+json"
JSON_TYPES = frozenset({"application/fhir+json", "application/json"})
NDJSON_TYPES = frozenset({"application/fhir+ndjson", "application/x-ndjson", "application/ndjson"})
RETRY_AFTER_S = 5
# /healthz answers within this, whatever Kafka and the database do.
HEALTH_BUDGET_S = 0.8
# After the database failed, requests get 503 at once for this long instead of each waiting
# for its own timeout.
DB_BACKOFF_S = 1.0


class FhirResponse(Response):
    """A JSON response with the FHIR media type."""

    media_type = "application/fhir+json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return orjson.dumps(content)


OUTCOME_DOC: dict[str, Any] = {
    "content": {"application/fhir+json": {"schema": {"type": "object"}}},
}
ERROR_DOCS: dict[int | str, dict[str, Any]] = {
    code: {**OUTCOME_DOC, "description": f"OperationOutcome: {text}"}
    for code, text in {
        400: "not JSON, not a resource, wrong type or id",
        401: "missing, unknown, revoked or expired bearer token",
        403: "a patient, resource or identifier system of another integrator",
        404: "unknown resource type",
        409: "a meta.versionId already received for this resource with other content",
        408: "the body did not arrive in time",
        413: "body or resource too large",
        415: "unsupported Content-Type",
        422: "breaks the R4 definition or one of its invariants",
        429: "too many requests from this integrator; see Retry-After",
        503: "Kafka or the database unavailable, or the same version being published by "
        "another request; see Retry-After",
    }.items()
}


def body_doc(media_types: frozenset[str], description: str, kind: str) -> dict[str, Any]:
    """OpenAPI requestBody for an endpoint that reads the raw body itself; `kind` is
    `resource`, `bundle` or `ndjson` (see ingest/openapi.py)."""
    schema = body_schemas()[kind]
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {mt: {"schema": schema} for mt in sorted(media_types)},
        }
    }


def media_type(request: Request) -> str:
    """The request's media type without parameters, lower case."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def fail_fast(engine: Engine, retry_at: list[float], backoff_s: float = DB_BACKOFF_S) -> None:
    """After a failed connection attempt, let the next attempts of the next `backoff_s` fail
    at once: requests queued behind a database that never answers then get their 503
    without each waiting for its own connect timeout."""

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        if time.monotonic() < retry_at[0]:
            raise DatabaseUnavailable("the database failed a moment ago")
        try:
            return dialect.dbapi.connect(*cargs, **cparams)
        except Exception:
            retry_at[0] = time.monotonic() + backoff_s
            raise


def endpoint_of(request: Request) -> str:
    """A low-cardinality endpoint label for metrics."""
    path = request.url.path
    if path == "/fhir":
        return "bundle"
    if path.endswith("$import"):
        return "import"
    return "update" if request.method == "PUT" else "create"
