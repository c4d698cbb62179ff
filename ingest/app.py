"""The FHIR R4 ingest gateway over HTTP (FastAPI). `create_app(settings)` connects nothing at
import.

Order of checks for a write: bearer token (401) → rate (429) → resource type (404) → media type
(415) → size (413) and body timeout (408) → JSON (400) → depth, characters, FHIR validation and
invariants (400/413/422) → broker probe and topic check (503) → dedupe → ownership (403) →
publish with acks=all (503 if Kafka does not acknowledge) → 201/200. Every error body is an
OperationOutcome.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

import parcours
from ingest.auth import Authenticator, RateLimiter
from ingest.db_waits import bound_database_waits
from ingest.entries import Item, parse_ndjson, prepare_bundle, prepare_resource
from ingest.http import (
    DB_BACKOFF_S,
    ERROR_DOCS,
    HEALTH_BUDGET_S,
    JSON_TYPES,
    NDJSON_TYPES,
    RETRY_AFTER_S,
    FhirResponse,
    body_doc,
    endpoint_of,
    fail_fast,
    media_type,
)
from ingest.limits import depth_issue
from ingest.metrics import IngestMetrics
from ingest.openapi import type_name_schema
from ingest.outcome import (
    BrokerUnavailable,
    DatabaseUnavailable,
    Issue,
    Rejection,
    http_issue,
    operation_outcome,
)
from ingest.publish import Publisher
from ingest.references import ReferenceResolver
from ingest.responses import capability_statement, location, message_response, response_bundle
from ingest.service import IngestService
from ingest.validate import is_resource_type, warm_up
from parcours.db import make_engine
from parcours.identity import TopicGuard
from parcours.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """Build the gateway. Kafka and SQL are reached lazily, so it starts with the broker down."""
    bound_database_waits()
    engine = make_engine(settings.db_url, timeout_s=settings.ingest_db_timeout_s)
    metrics = IngestMetrics()
    publisher = Publisher(settings)
    service = IngestService(
        engine,
        publisher,
        metrics,
        ownership=settings.ingest_ownership,
        guard=TopicGuard(settings, engine),
    )
    resolver = ReferenceResolver(engine, metrics, settings.ingest_defer_unresolved)
    auth = Authenticator(engine)
    limiter = RateLimiter(settings.ingest_rate_per_s, settings.ingest_rate_burst)
    limit = settings.ingest_max_body_bytes
    body_timeout = settings.ingest_body_timeout_s
    # Health probes run on their own threads, one at a time per dependency, so that neither
    # a hung database nor a saturated request pool can delay /healthz.
    probes = ThreadPoolExecutor(max_workers=2, thread_name_prefix="healthz")
    in_flight: dict[str, Future[str]] = {}
    db_retry_at = [0.0]
    fail_fast(engine, db_retry_at)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(warm_up)
        # Validation allocates many short-lived objects; moving everything loaded at startup
        # (modules, model classes) out of the collector's reach makes each full collection
        # cheaper.
        gc.collect()
        gc.freeze()
        # A broker that is down at startup gives 503s, not a crash.
        try:
            await run_in_threadpool(publisher.producer)
        except BrokerUnavailable as exc:
            log.warning("starting without Kafka: %s", exc)
        yield
        await run_in_threadpool(publisher.close)
        probes.shutdown(wait=False, cancel_futures=True)
        engine.dispose()

    app = FastAPI(
        title="Parcours FHIR R4 ingest gateway",
        version=parcours.__version__,
        description=(
            "Push FHIR R4 JSON (resources, Bundles, NDJSON). Errors are OperationOutcomes. "
            "A 2xx means Kafka acknowledged every record of the request."
        ),
        lifespan=lifespan,
    )
    app.state.service = service

    # ---- errors -------------------------------------------------------------------------

    @app.exception_handler(Rejection)
    async def on_rejection(request: Request, exc: Rejection) -> Response:
        source = getattr(request.state, "source", None)
        received_at = getattr(request.state, "received_at", datetime.now(UTC))
        payload = getattr(request.state, "body", b"")
        if exc.record:
            await run_in_threadpool(service.reject, source, received_at, exc, payload)
        else:
            metrics.rejections.labels(source or "unknown", exc.reason).inc()
        metrics.requests.labels(source or "unknown", endpoint_of(request), str(exc.status)).inc()
        return FhirResponse(exc.outcome(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(BrokerUnavailable)
    async def on_broker(request: Request, exc: BrokerUnavailable) -> Response:
        source = getattr(request.state, "source", None)
        metrics.requests.labels(source or "unknown", endpoint_of(request), "503").inc()
        issue = Issue(
            "transient",
            f"{exc}. Nothing of this request was accepted; retry later.",
            ("http.Retry-After",),
        )
        return FhirResponse(
            operation_outcome([issue], "broker-unavailable"),
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        issue = Issue(
            "not-found" if exc.status_code == 404 else "not-supported",
            f"{request.method} {request.url.path}: {exc.detail}",
            ("http.url",),
        )
        return FhirResponse(
            operation_outcome([issue]),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def on_database(request: Request, exc: Exception) -> Response:
        # The database is unreachable, hung or saturated: as retryable as a Kafka outage, and
        # nothing was published (every SQL read happens before the first record is sent).
        source = getattr(request.state, "source", None)
        if not isinstance(exc, DatabaseUnavailable):
            db_retry_at[0] = time.monotonic() + DB_BACKOFF_S
            log.warning("database unavailable: %s", str(exc).splitlines()[0][:200])
        metrics.requests.labels(source or "unknown", endpoint_of(request), "503").inc()
        issue = Issue("transient", "The gateway's database is unavailable; retry later", ())
        return FhirResponse(
            operation_outcome([issue], "database-unavailable"),
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    db_errors = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)
    for db_error in (*db_errors, DatabaseUnavailable):
        app.add_exception_handler(db_error, on_database)

    @app.exception_handler(RecursionError)
    async def on_too_deep(request: Request, _exc: RecursionError) -> Response:
        # The depth limit stops this first; a structure that still overflows the stack is
        # refused the same way, with one log line.
        source = getattr(request.state, "source", None)
        log.warning("%s %s: structure too deep to process", request.method, request.url.path)
        metrics.requests.labels(source or "unknown", endpoint_of(request), "400").inc()
        return FhirResponse(
            operation_outcome([depth_issue("Resource")], "too-deep"), status_code=400
        )

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> Response:
        # A bug: still an OperationOutcome. Nothing was acknowledged, so
        # the client's retry is safe (at worst a record published twice, never one lost).
        source = getattr(request.state, "source", None)
        log.exception("%s %s failed", request.method, request.url.path)
        metrics.requests.labels(source or "unknown", endpoint_of(request), "500").inc()
        issue = Issue("exception", f"Internal error ({type(exc).__name__}); retry later", ())
        return FhirResponse(operation_outcome([issue], "internal-error"), status_code=500)

    @app.exception_handler(ClientDisconnect)
    async def on_disconnect(request: Request, _exc: ClientDisconnect) -> Response:
        # Nobody is left to answer; one line, not a traceback.
        log.info("client disconnected during %s %s", request.method, request.url.path)
        source = getattr(request.state, "source", None)
        metrics.requests.labels(source or "unknown", endpoint_of(request), "499").inc()
        return Response(status_code=400)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_request: Request, exc: RequestValidationError) -> Response:
        issues = [
            Issue("invalid", str(e.get("msg")), (".".join(str(p) for p in e.get("loc", ())),))
            for e in exc.errors()
        ]
        return FhirResponse(operation_outcome(issues), status_code=400)

    # ---- request helpers ----------------------------------------------------------------

    async def authenticate(request: Request) -> str:
        request.state.received_at = datetime.now(UTC)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        source = None
        if scheme.lower() == "bearer" and token.strip():
            if time.monotonic() < db_retry_at[0]:
                raise DatabaseUnavailable("the database failed a moment ago")
            source = await run_in_threadpool(auth.source_for, token.strip())
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
        wait = limiter.retry_after(source)
        if wait > 0:
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

    async def read_body(request: Request, accepted: frozenset[str], expected: str) -> bytes:
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
        try:
            return orjson.loads(body)
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

    def check_type(type_name: str) -> None:
        if not is_resource_type(type_name):
            raise Rejection(
                404,
                "unknown-type",
                [
                    Issue(
                        "not-supported",
                        f"{type_name!r} is not an R4 resource type",
                        ("resourceType",),
                        location=("http.url",),
                    )
                ],
                resource_type=type_name[:64],
            )

    def single(
        source: str, received_at: datetime, item: Item, conditional: dict[str, Any] | None = None
    ) -> Response:
        requests = {item.index: conditional} if conditional else None
        result = resolver.ingest_items(
            service, source, received_at, [item], True, requests, "resource"
        ).entries[0]
        headers = {"Location": f"/fhir/{location(item)}"}
        if item.version.startswith("v:"):
            headers["ETag"] = f'W/"{item.version[2:]}"'
        return FhirResponse(item.value, status_code=result.status, headers=headers)

    def timed(endpoint: str) -> Callable[[], None]:
        started = time.perf_counter()

        def done() -> None:
            metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)

        return done

    # ---- endpoints ----------------------------------------------------------------------

    @app.get("/fhir/metadata", tags=["FHIR"], summary="CapabilityStatement")
    async def metadata() -> Response:
        """What the gateway accepts (no token needed, as FHIR asks)."""
        return FhirResponse(
            capability_statement(parcours.__version__, limit, publisher.max_resource_bytes())
        )

    @app.post(
        "/fhir",
        tags=["FHIR"],
        summary="Bundle: transaction, batch, message or collection",
        openapi_extra=body_doc(JSON_TYPES, "A FHIR R4 Bundle", "bundle"),
        responses=ERROR_DOCS,
    )
    async def post_bundle(request: Request) -> Response:
        """A transaction or message is all or nothing; a batch or collection gets a status per
        entry in a batch-response Bundle."""
        done = timed("bundle")
        source = await authenticate(request)
        body = await read_body(request, JSON_TYPES, "Bundle")
        received_at: datetime = request.state.received_at

        def work() -> Response:
            parsed = parse_json(body, "Bundle")
            prepared = prepare_bundle(parsed, publisher.max_resource_bytes())
            result = resolver.ingest_bundle(service, source, received_at, prepared, parsed)
            if prepared.bundle_type == "message" and prepared.message_header is not None:
                answer = message_response(prepared.message_header, result.entries, received_at)
            else:
                answer = response_bundle(prepared.bundle_type, result.entries)
            return FhirResponse(answer, status_code=200)

        response = await run_in_threadpool(work)
        metrics.requests.labels(source, "bundle", str(response.status_code)).inc()
        done()
        return response

    @app.post(
        "/fhir/$import",
        tags=["FHIR"],
        summary="NDJSON, one resource a line",
        openapi_extra=body_doc(NDJSON_TYPES, "One FHIR R4 resource per line", "ndjson"),
        responses=ERROR_DOCS,
    )
    async def post_import(request: Request) -> Response:
        """Each line is processed on its own; the answer is a batch-response Bundle with one
        entry per non-blank line, in order."""
        done = timed("import")
        source = await authenticate(request)
        body = await read_body(request, NDJSON_TYPES, "Resource")
        received_at: datetime = request.state.received_at

        def work() -> Response:
            items = parse_ndjson(body, publisher.max_resource_bytes())
            result = resolver.ingest_items(
                service, source, received_at, items, False, None, "ndjson"
            )
            return FhirResponse(response_bundle("batch", result.entries), status_code=200)

        response = await run_in_threadpool(work)
        metrics.requests.labels(source, "import", str(response.status_code)).inc()
        done()
        return response

    @app.post(
        "/fhir/{type_name}",
        tags=["FHIR"],
        summary="Create a resource",
        status_code=201,
        openapi_extra=body_doc(JSON_TYPES, "A FHIR R4 resource of this type", "resource"),
        responses=ERROR_DOCS,
    )
    async def post_resource(type_name: type_name_schema, request: Request) -> Response:
        """201 with the resource as published (real id, `Type/id` references), or 200 if this
        version was already received."""
        done = timed("create")
        source = await authenticate(request)
        check_type(type_name)
        body = await read_body(request, JSON_TYPES, type_name)
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
                max_resource_bytes=publisher.max_resource_bytes(),
            )
            return single(source, received_at, item, conditional)

        response = await run_in_threadpool(work)
        metrics.requests.labels(source, "create", str(response.status_code)).inc()
        done()
        return response

    @app.put(
        "/fhir/{type_name}/{resource_id}",
        tags=["FHIR"],
        summary="Create or update",
        status_code=201,
        openapi_extra=body_doc(JSON_TYPES, "A FHIR R4 resource whose id is the URL's", "resource"),
        responses=ERROR_DOCS,
    )
    async def put_resource(
        type_name: type_name_schema, resource_id: str, request: Request
    ) -> Response:
        """The body's id must equal the URL id."""
        done = timed("update")
        source = await authenticate(request)
        check_type(type_name)
        body = await read_body(request, JSON_TYPES, type_name)
        received_at: datetime = request.state.received_at

        def work() -> Response:
            item = prepare_resource(
                parse_json(body, type_name),
                type_name,
                url_id=resource_id,
                max_resource_bytes=publisher.max_resource_bytes(),
            )
            return single(source, received_at, item)

        response = await run_in_threadpool(work)
        metrics.requests.labels(source, "update", str(response.status_code)).inc()
        done()
        return response

    def kafka_check() -> str:
        try:
            publisher.check()
        except BrokerUnavailable as exc:
            metrics.broker_up.set(0)
            return f"down: {exc}"
        metrics.broker_up.set(1)
        return "ok"

    def database_check() -> str:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # any driver error means "down" here
            return f"down: {type(exc).__name__}"
        return "ok"

    async def probe(name: str, check: Callable[[], str]) -> str:
        future = in_flight.get(name)
        if future is None or future.done():
            future = in_flight[name] = probes.submit(check)
        try:
            return await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), timeout=HEALTH_BUDGET_S
            )
        except TimeoutError:
            return f"down: no answer within {HEALTH_BUDGET_S:g} s"

    @app.get("/healthz", tags=["ops"], summary="Liveness and dependencies")
    async def healthz() -> Response:
        """200 when Kafka and SQL answer, else 503; the body says which one failed. Answers
        within a second whatever they do."""
        kafka, database = await asyncio.gather(
            probe("kafka", kafka_check), probe("database", database_check)
        )
        checks = {"kafka": kafka, "database": database}
        ok = all(v == "ok" for v in checks.values())
        return Response(
            json.dumps({"status": "ok" if ok else "degraded", **checks}),
            status_code=200 if ok else 503,
            media_type="application/json",
        )

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    def prometheus() -> Response:
        """Counters per source: requests, resources by outcome, rejections by reason."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_env() -> FastAPI:
    """Uvicorn factory: settings from the environment (used with several workers)."""
    return create_app(Settings())
