"""The gateway's endpoints, at module level on one APIRouter. Each reaches the process's state
through the `gateway` dependency, and each write is authenticated by the `integrator`
dependency (bearer token, then rate), which also starts the request's timer."""

from __future__ import annotations

import asyncio
import json
import math
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

import parcours
from ingest.entries import Item, parse_ndjson, prepare_bundle, prepare_resource, set_if_match
from ingest.fhir_http import (
    ERROR_DOCS,
    JSON_TYPES,
    NDJSON_TYPES,
    FhirResponse,
    body_doc,
    media_type,
)
from ingest.gateway import Gateway
from ingest.limits import repeated_name_issue
from ingest.openapi import type_name_schema
from ingest.outcome import DatabaseUnavailable, Issue, Rejection, http_issue
from ingest.responses import capability_statement, location, message_response, response_bundle
from ingest.validate import is_resource_type, unknown_type_text

router = APIRouter()


def gateway(request: Request) -> Gateway:
    """The state of this gateway process (built by `ingest.app.create_app`)."""
    state: Gateway = request.app.state.gateway
    return state


GatewayDep = Annotated[Gateway, Depends(gateway)]


async def integrator(request: Request, gw: GatewayDep) -> str:
    """The integrator of the request's bearer token (401 without one, 429 above its rate)."""
    request.state.started = time.perf_counter()
    request.state.received_at = datetime.now(UTC)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    source = None
    if scheme.lower() == "bearer" and token.strip():
        if gw.database_resting():
            raise DatabaseUnavailable("the database failed a moment ago")
        source = await run_in_threadpool(gw.auth.source_for, token.strip())
    if source is None:
        raise Rejection(
            401,
            "unauthorized",
            [
                http_issue(
                    "Authorization",
                    "login",
                    "A valid bearer token is required (Authorization: Bearer <token>)"
                    if header
                    else "Missing Authorization header (Authorization: Bearer <token>)",
                )
            ],
            headers={"WWW-Authenticate": 'Bearer realm="parcours"'},
        )
    request.state.source = source
    wait = gw.limiter.retry_after(source)
    if wait > 0:
        settings = gw.settings
        raise Rejection(
            429,
            "rate-limited",
            [
                http_issue(
                    "Retry-After",
                    "throttled",
                    f"Too many requests from {source} (at most "
                    f"{settings.ingest_rate_per_s:g} per second on average, "
                    f"{settings.ingest_rate_burst} at once); retry later",
                )
            ],
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
            record=False,
        )
    return source


Source = Annotated[str, Depends(integrator)]


async def read_body(
    request: Request, gw: Gateway, accepted: frozenset[str], expected: str
) -> bytes:
    """The request's body: 415 for another media type, 413 above the body limit, 408 when it
    does not arrive in time."""
    limit = gw.settings.ingest_max_body_bytes
    body_timeout = gw.settings.ingest_body_timeout_s
    mt = media_type(request)
    if mt not in accepted:
        raise Rejection(
            415,
            "media-type",
            [
                http_issue(
                    "Content-Type",
                    "not-supported",
                    f"Content-Type {mt or '(none)'!r} is not accepted; use "
                    + " or ".join(sorted(accepted)),
                )
            ],
            resource_type=expected,
        )
    declared = request.headers.get("content-length")
    too_large = Rejection(
        413,
        "too-large",
        [
            http_issue(
                "Content-Length",
                "too-costly",
                f"The body is larger than the {limit} bytes this gateway accepts; "
                "split it (smaller Bundles, or NDJSON files via $import)",
            )
        ],
        resource_type=expected,
    )
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    loop = asyncio.get_running_loop()
    # A trickle of small parts may not hold a connection forever either.
    deadline = loop.time() + 6 * body_timeout
    stream = request.stream().__aiter__()
    while True:
        wait = min(body_timeout, deadline - loop.time())
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout=max(0.0, wait))
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise Rejection(
                408,
                "body-timeout",
                [
                    http_issue(
                        "Content-Length",
                        "timeout",
                        f"The body did not arrive in time ({size} bytes received; the "
                        f"gateway waits {body_timeout:g} s for each part); check "
                        "Content-Length",
                    )
                ],
                resource_type=expected,
                headers={"Connection": "close"},
                record=False,
            ) from None
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    request.state.body = body
    return body


def parse_json(body: bytes, expected: str) -> Any:
    """The body as JSON, or 400 saying where it breaks (or which name it gives twice)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        where = (
            f" at line {exc.lineno} column {exc.colno}"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        raise Rejection(
            400,
            "invalid-json",
            [Issue("structure", f"The body is not valid JSON{where}: {exc}", (expected,))],
            resource_type=expected,
        ) from exc
    repeated = repeated_name_issue(body, expected)
    if repeated is not None:
        raise Rejection(400, "invalid-json", [repeated], resource_type=expected)
    return doc


def check_type(type_name: str) -> None:
    """404 unless `type_name` is an R4 resource type."""
    if not is_resource_type(type_name):
        raise Rejection(
            404,
            "unknown-type",
            [
                Issue(
                    "not-supported",
                    unknown_type_text(type_name),
                    ("resourceType",),
                    location=("http.url",),
                )
            ],
            resource_type=type_name[:64],
        )


def single(
    gw: Gateway,
    source: str,
    received_at: datetime,
    item: Item,
    conditional: dict[str, Any] | None = None,
) -> Response:
    """Ingest one resource and answer with it as published."""
    requests = {item.index: conditional} if conditional else None
    result = gw.resolver.ingest_items(
        gw.service, source, received_at, [item], True, requests, "resource"
    ).entries[0]
    headers = {"Location": f"/fhir/{location(item)}"}
    if item.version.startswith("v:"):
        headers["ETag"] = f'W/"{item.version[2:]}"'
    return FhirResponse(item.value, status_code=result.status, headers=headers)


def answered(
    request: Request, gw: Gateway, source: str, endpoint: str, response: Response
) -> Response:
    """Count the answer and the request's time (from its authentication) in /metrics."""
    gw.metrics.requests.labels(source, endpoint, str(response.status_code)).inc()
    gw.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - request.state.started)
    return response


@router.get("/fhir/metadata", tags=["FHIR"], summary="CapabilityStatement")
async def metadata(gw: GatewayDep) -> Response:
    """What the gateway accepts (no token needed, as FHIR asks)."""
    return FhirResponse(
        capability_statement(
            parcours.__version__,
            gw.settings.ingest_max_body_bytes,
            gw.publisher.max_resource_bytes(),
        )
    )


@router.post(
    "/fhir",
    tags=["FHIR"],
    summary="Bundle: transaction, batch, message or collection",
    openapi_extra=body_doc(JSON_TYPES, "A FHIR R4 Bundle", "bundle"),
    responses=ERROR_DOCS,
)
async def post_bundle(request: Request, gw: GatewayDep, source: Source) -> Response:
    """A transaction or message is all or nothing; a batch or collection gets a status per
    entry in a batch-response Bundle."""
    body = await read_body(request, gw, JSON_TYPES, "Bundle")
    received_at: datetime = request.state.received_at

    def work() -> Response:
        parsed = parse_json(body, "Bundle")
        prepared = prepare_bundle(parsed, gw.publisher.max_resource_bytes())
        result = gw.resolver.ingest_bundle(gw.service, source, received_at, prepared, parsed)
        if prepared.bundle_type == "message" and prepared.message_header is not None:
            answer = message_response(prepared.message_header, result.entries, received_at)
        else:
            answer = response_bundle(prepared.bundle_type, result.entries)
        return FhirResponse(answer, status_code=200)

    return answered(request, gw, source, "bundle", await run_in_threadpool(work))


@router.post(
    "/fhir/$import",
    tags=["FHIR"],
    summary="NDJSON, one resource a line",
    openapi_extra=body_doc(NDJSON_TYPES, "One FHIR R4 resource per line", "ndjson"),
    responses=ERROR_DOCS,
)
async def post_import(request: Request, gw: GatewayDep, source: Source) -> Response:
    """Each line is processed on its own; the answer is a batch-response Bundle with one
    entry per non-blank line, in order."""
    body = await read_body(request, gw, NDJSON_TYPES, "Resource")
    received_at: datetime = request.state.received_at

    def work() -> Response:
        items = parse_ndjson(body, gw.publisher.max_resource_bytes())
        result = gw.resolver.ingest_items(
            gw.service, source, received_at, items, False, None, "ndjson"
        )
        return FhirResponse(response_bundle("batch", result.entries), status_code=200)

    return answered(request, gw, source, "import", await run_in_threadpool(work))


@router.post(
    "/fhir/{type_name}",
    tags=["FHIR"],
    summary="Create a resource",
    status_code=201,
    openapi_extra=body_doc(JSON_TYPES, "A FHIR R4 resource of this type", "resource"),
    responses=ERROR_DOCS,
)
async def post_resource(
    type_name: type_name_schema, request: Request, gw: GatewayDep, source: Source
) -> Response:
    """201 with the resource as published (real id, `Type/id` references), or 200 if this
    version was already received."""
    check_type(type_name)
    body = await read_body(request, gw, JSON_TYPES, type_name)
    received_at: datetime = request.state.received_at

    # FHIR's conditional create: the If-None-Exist header holds the search criteria.
    if_none_exist = request.headers.get("if-none-exist")
    conditional = (
        {"method": "POST", "url": type_name, "ifNoneExist": if_none_exist}
        if if_none_exist
        else None
    )

    def work() -> Response:
        item = prepare_resource(
            parse_json(body, type_name),
            type_name,
            max_resource_bytes=gw.publisher.max_resource_bytes(),
        )
        return single(gw, source, received_at, item, conditional)

    return answered(request, gw, source, "create", await run_in_threadpool(work))


@router.put(
    "/fhir/{type_name}/{resource_id}",
    tags=["FHIR"],
    summary="Create or update",
    status_code=201,
    openapi_extra=body_doc(JSON_TYPES, "A FHIR R4 resource whose id is the URL's", "resource"),
    responses=ERROR_DOCS,
)
async def put_resource(
    type_name: type_name_schema,
    resource_id: str,
    request: Request,
    gw: GatewayDep,
    source: Source,
) -> Response:
    """The body's id must equal the URL id. With `If-Match: W/"n"`, published only if `n` is
    the resource's current version (else 412)."""
    check_type(type_name)
    body = await read_body(request, gw, JSON_TYPES, type_name)
    received_at: datetime = request.state.received_at
    if_match = request.headers.get("if-match")

    def work() -> Response:
        item = prepare_resource(
            parse_json(body, type_name),
            type_name,
            url_id=resource_id,
            max_resource_bytes=gw.publisher.max_resource_bytes(),
        )
        if item.valid and if_match is not None:
            set_if_match(item, if_match)
        return single(gw, source, received_at, item)

    return answered(request, gw, source, "update", await run_in_threadpool(work))


@router.get("/healthz", tags=["ops"], summary="Liveness and dependencies")
async def healthz(gw: GatewayDep) -> Response:
    """200 when Kafka and SQL answer, else 503; the body says which one failed. Answers
    within a second whatever they do."""
    kafka, database = await asyncio.gather(
        gw.probe("kafka", gw.kafka_check), gw.probe("database", gw.database_check)
    )
    checks = {"kafka": kafka, "database": database}
    ok = all(v == "ok" for v in checks.values())
    return Response(
        json.dumps({"status": "ok" if ok else "degraded", **checks}),
        status_code=200 if ok else 503,
        media_type="application/json",
    )


@router.get("/metrics", tags=["ops"], summary="Prometheus metrics")
def prometheus(gw: GatewayDep) -> Response:
    """Counters per source: requests, resources by outcome, rejections by reason."""
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)
