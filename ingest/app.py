"""The FHIR R4 ingest gateway over HTTP (FastAPI). `create_app(settings)` wires one process's
state (`ingest.gateway.Gateway`) and connects nothing at import; the endpoints live in
`ingest.routes`, the error handlers in `ingest.errors`.

Order of checks for a write: bearer token (401) → rate (429) → resource type (404) → media type
(415) → size (413) and body timeout (408) → JSON (400) → depth, characters, FHIR validation and
invariants (400/413/422) → broker probe and topic check (503) → dedupe → ownership (403) →
version conflict (409) → the integrator's versions held, then looked up again (503 if another
request holds them too long) → publish with acks=all (503 if Kafka does not acknowledge) →
record → 201/200. Every error body is an OperationOutcome.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

import parcours
from ingest import errors, routes
from ingest.auth import Authenticator, RateLimiter
from ingest.db_waits import bound_database_waits
from ingest.fhir_http import fail_fast
from ingest.gateway import Gateway
from ingest.metrics import IngestMetrics
from ingest.outcome import BrokerUnavailable
from ingest.publish import Publisher
from ingest.references import ReferenceResolver
from ingest.service import IngestService
from ingest.validate import warm_up
from parcours.db import make_engine
from parcours.identity import TopicGuard
from parcours.runtime import collect_seldom
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
    gateway = Gateway(
        settings=settings,
        engine=engine,
        metrics=metrics,
        publisher=publisher,
        service=service,
        resolver=ReferenceResolver(engine, metrics, settings.ingest_defer_unresolved),
        auth=Authenticator(engine),
        limiter=RateLimiter(settings.ingest_rate_per_s, settings.ingest_rate_burst),
    )
    fail_fast(engine, gateway.db_retry_at)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(warm_up)
        # Validation allocates many short-lived objects: everything loaded at startup (modules,
        # model classes) is moved out of the collector's reach, and it runs seldom.
        gc.collect()
        collect_seldom()
        # A broker that is down at startup gives 503s, not a crash.
        try:
            await run_in_threadpool(publisher.producer)
        except BrokerUnavailable as exc:
            log.warning("starting without Kafka: %s", exc)
        yield
        await run_in_threadpool(gateway.close)

    app = FastAPI(
        title="Parcours FHIR R4 ingest gateway",
        version=parcours.__version__,
        description=(
            "Push FHIR R4 JSON (resources, Bundles, NDJSON). Errors are OperationOutcomes. "
            "A 2xx means Kafka acknowledged every record of the request."
        ),
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    errors.install(app)
    app.include_router(routes.router)
    return app


def app_from_env() -> FastAPI:
    """Uvicorn factory: settings from the environment (used with several workers)."""
    return create_app(Settings())
