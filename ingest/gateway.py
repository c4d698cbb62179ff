"""What one gateway process holds: its settings and collaborators (database, producer, ingest
service, reference resolver, authenticator, rate limiter, metrics) and the state of its
dependency probes. `ingest.app.create_app` builds it; endpoints and error handlers reach it
through `request.app.state.gateway` (the `gateway` dependency of `ingest.routes`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine, text

from ingest.auth import Authenticator, RateLimiter
from ingest.fhir_http import DB_BACKOFF_S, HEALTH_BUDGET_S
from ingest.metrics import IngestMetrics
from ingest.outcome import BrokerUnavailable
from ingest.publish import Publisher
from ingest.references import ReferenceResolver
from ingest.service import IngestService
from parcours.settings import Settings


@dataclass
class Gateway:
    """The wired state of one gateway process."""

    settings: Settings
    engine: Engine
    metrics: IngestMetrics
    publisher: Publisher
    service: IngestService
    resolver: ReferenceResolver
    auth: Authenticator
    limiter: RateLimiter
    # Health probes run on their own threads, one at a time per dependency, so that neither
    # a hung database nor a saturated request pool can delay /healthz.
    probes: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="healthz")
    )
    in_flight: dict[str, Future[str]] = field(default_factory=dict)
    # Until this monotonic time, requests get 503 at once (see ingest.fhir_http.fail_fast).
    db_retry_at: list[float] = field(default_factory=lambda: [0.0])

    def database_failed(self) -> None:
        """Let the next requests of `DB_BACKOFF_S` get their 503 at once."""
        self.db_retry_at[0] = time.monotonic() + DB_BACKOFF_S

    def database_resting(self) -> bool:
        """True while the database failed a moment ago."""
        return time.monotonic() < self.db_retry_at[0]

    def kafka_check(self) -> str:
        """`ok`, or `down: …` if the broker does not answer now."""
        try:
            self.publisher.check()
        except BrokerUnavailable as exc:
            self.metrics.broker_up.set(0)
            return f"down: {exc}"
        self.metrics.broker_up.set(1)
        return "ok"

    def database_check(self) -> str:
        """`ok`, or `down: <error class>` if the database does not answer."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # any driver error means "down" here
            return f"down: {type(exc).__name__}"
        return "ok"

    async def probe(self, name: str, check: Callable[[], str]) -> str:
        """The answer of `check`, or `down: no answer…` after `HEALTH_BUDGET_S`; a check still
        running from an earlier probe is awaited rather than started again."""
        future = self.in_flight.get(name)
        if future is None or future.done():
            future = self.in_flight[name] = self.probes.submit(check)
        try:
            return await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), timeout=HEALTH_BUDGET_S
            )
        except TimeoutError:
            return f"down: no answer within {HEALTH_BUDGET_S:g} s"

    def close(self) -> None:
        """Flush and close the producer, stop the probes, close the pool."""
        self.publisher.close()
        self.probes.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()
