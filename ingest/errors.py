"""The gateway's exception handlers: every error answer is an OperationOutcome, counted in
`/metrics`. `install(app)` registers them; each reaches the process's state through
`request.app.state.gateway`."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ingest.fhir_http import RETRY_AFTER_S, FhirResponse, endpoint_of
from ingest.gateway import Gateway
from ingest.limits import depth_issue
from ingest.outcome import (
    BrokerUnavailable,
    DatabaseUnavailable,
    Issue,
    Rejection,
    operation_outcome,
)

log = logging.getLogger(__name__)

DATABASE_ERRORS = (
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeout,
    DatabaseUnavailable,
)


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _count(request: Request, status: str) -> None:
    source = getattr(request.state, "source", None)
    _gateway(request).metrics.requests.labels(
        source or "unknown", endpoint_of(request), status
    ).inc()


async def on_rejection(request: Request, exc: Rejection) -> Response:
    """A refused request: its OperationOutcome, stored and dead-lettered when it says so."""
    gw = _gateway(request)
    source = getattr(request.state, "source", None)
    received_at = getattr(request.state, "received_at", datetime.now(UTC))
    payload = getattr(request.state, "body", b"")
    if exc.record:
        await run_in_threadpool(gw.service.reject, source, received_at, exc, payload)
    else:
        gw.metrics.rejections.labels(source or "unknown", exc.reason).inc()
    _count(request, str(exc.status))
    return FhirResponse(exc.outcome(), status_code=exc.status, headers=exc.headers)


async def on_broker(request: Request, exc: BrokerUnavailable) -> Response:
    """Kafka unavailable: 503 with Retry-After."""
    _count(request, "503")
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


async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
    """Starlette's own errors (unknown route, method not allowed) as OperationOutcomes."""
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
    """The database is unreachable, hung or saturated: as retryable as a Kafka outage, and
    nothing was published (every SQL read happens before the first record is sent)."""
    if not isinstance(exc, DatabaseUnavailable):
        _gateway(request).database_failed()
        log.warning("database unavailable: %s", str(exc).splitlines()[0][:200])
    _count(request, "503")
    issue = Issue("transient", "The gateway's database is unavailable; retry later", ())
    return FhirResponse(
        operation_outcome([issue], "database-unavailable"),
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def on_too_deep(request: Request, _exc: RecursionError) -> Response:
    """The depth limit stops this first; a structure that still overflows the stack is
    refused the same way, with one log line."""
    log.warning("%s %s: structure too deep to process", request.method, request.url.path)
    _count(request, "400")
    return FhirResponse(operation_outcome([depth_issue("Resource")], "too-deep"), status_code=400)


async def on_crash(request: Request, exc: Exception) -> Response:
    """A bug: still an OperationOutcome. Nothing was acknowledged, so the client's retry is
    safe (at worst a record published twice, never one lost)."""
    log.exception("%s %s failed", request.method, request.url.path)
    _count(request, "500")
    issue = Issue("exception", f"Internal error ({type(exc).__name__}); retry later", ())
    return FhirResponse(operation_outcome([issue], "internal-error"), status_code=500)


async def on_disconnect(request: Request, _exc: ClientDisconnect) -> Response:
    """Nobody is left to answer; one line, not a traceback."""
    log.info("client disconnected during %s %s", request.method, request.url.path)
    _count(request, "499")
    return Response(status_code=400)


async def on_invalid(_request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's own parameter validation, as an OperationOutcome."""
    issues = [
        Issue("invalid", str(e.get("msg")), (".".join(str(p) for p in e.get("loc", ())),))
        for e in exc.errors()
    ]
    return FhirResponse(operation_outcome(issues), status_code=400)


def install(app: FastAPI) -> None:
    """Register every handler on `app`."""
    app.exception_handler(Rejection)(on_rejection)
    app.exception_handler(BrokerUnavailable)(on_broker)
    app.exception_handler(StarletteHTTPException)(on_http)
    for db_error in DATABASE_ERRORS:
        app.add_exception_handler(db_error, on_database)
    app.exception_handler(RecursionError)(on_too_deep)
    app.exception_handler(Exception)(on_crash)
    app.exception_handler(ClientDisconnect)(on_disconnect)
    app.exception_handler(RequestValidationError)(on_invalid)
