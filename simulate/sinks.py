"""Where simulated resources go: NDJSON files, Kafka (as the gateway would publish them), or the
HTTP gateway (like any integrator).

Every sink takes resources one by one in delivery order, and reports counts in `summary()`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

import httpx

from parcours.topics import is_directory_key
from simulate import SimulationError
from simulate.fhir import message_key

log = logging.getLogger(__name__)


class Sink(Protocol):
    """A destination for simulated resources."""

    def send(self, resource: dict[str, Any], valid: bool) -> None:
        """Deliver one resource (`valid` is False for the deliberately invalid ones)."""

    def flush(self) -> None:
        """Push out whatever is buffered."""

    def close(self) -> None:
        """Flush and release resources."""

    def summary(self) -> dict[str, int]:
        """What was delivered, accepted and rejected."""


class NdjsonSink:
    """One resource per line, in delivery order, in `DIR/fhir.ndjson`."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "fhir.ndjson"
        self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        self.counts: Counter[str] = Counter()

    def send(self, resource: dict[str, Any], valid: bool) -> None:
        """Append one line."""
        self._fh.write(json.dumps(resource, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.counts["written"] += 1
        if not valid:
            self.counts["invalid_written"] += 1

    def flush(self) -> None:
        """Flush the file buffer."""
        self._fh.flush()

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    def summary(self) -> dict[str, int]:
        """Lines written."""
        return dict(self.counts)


class NullSink:
    """Discards everything (a history already in the raw topic)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def send(self, resource: dict[str, Any], valid: bool) -> None:
        """Count and drop."""
        self.counts["discarded"] += 1

    def flush(self) -> None:
        """Nothing is buffered."""

    def close(self) -> None:
        """Nothing to release."""

    def summary(self) -> dict[str, int]:
        """Resources discarded."""
        return dict(self.counts)


class KafkaSink:
    """Straight to the raw topic, keyed by patient (or `Type/id`), with acks=all; reference data
    (`parcours.topics.DIRECTORY_TYPES`) to the `directory` topic when one is given.

    The raw topic holds resources a gateway accepted, so the deliberately invalid ones are
    withheld here (send them through the gateway or an NDJSON file to exercise rejection).
    """

    def __init__(self, bootstrap: str, topic: str, directory: str | None = None) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.directory = directory
        self.counts: Counter[str] = Counter()
        self._errors: list[str] = []
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=20,
            batch_size=256 * 1024,
            client_id="parcours-simulate",
        )

    def _on_error(self, exc: BaseException) -> None:
        self._errors.append(repr(exc))

    def send(self, resource: dict[str, Any], valid: bool) -> None:
        """Produce one message (asynchronously; `flush` waits for the acknowledgements)."""
        if not valid:
            self.counts["invalid_withheld"] += 1
            return
        value = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()
        key = message_key(resource)
        to_directory = self.directory is not None and is_directory_key(key)
        future = self._producer.send(
            self.directory if to_directory else self.topic,
            key=key.encode(),
            value=value,
            headers=[("source", b"parcours-simulate")],
        )
        future.add_errback(self._on_error)
        self.counts["produced"] += 1

    def flush(self) -> None:
        """Wait until the broker acknowledged everything sent so far."""
        self._producer.flush()
        if self._errors:
            raise SimulationError(
                f"{len(self._errors)} Kafka sends failed, first: {self._errors[0]}"
            )

    def close(self) -> None:
        """Flush and close the producer."""
        try:
            self.flush()
        finally:
            self._producer.close()

    def summary(self) -> dict[str, int]:
        """Messages produced (and acknowledged once closed)."""
        return dict(self.counts)


class GatewaySink:
    """Batch Bundles to `POST {url}/fhir` with a bearer token, like any integrator.

    503 is retried after its Retry-After; connection errors and other 5xx with a backoff. A 4xx
    answer to the whole Bundle rejects its entries; otherwise each entry's `response.status` says.
    """

    def __init__(
        self,
        url: str,
        token: str,
        batch_size: int = 200,
        timeout_s: float = 30.0,
        max_retries: int = 30,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/fhir"
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.counts: Counter[str] = Counter()
        self._buffer: list[dict[str, Any]] = []
        self._client = httpx.Client(
            timeout=timeout_s,
            transport=transport,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/fhir+json",
                "Accept": "application/fhir+json",
            },
        )

    def send(self, resource: dict[str, Any], valid: bool) -> None:
        """Buffer one resource; a deliberately invalid one goes alone, so that its rejection
        cannot take valid neighbours with it."""
        if not valid:
            self.flush()
            self._post([resource])
            return
        self._buffer.append(resource)
        if len(self._buffer) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """POST the buffered resources as one batch Bundle."""
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self._post(batch)

    def _post(self, resources: list[dict[str, Any]]) -> None:
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {
                    "resource": r,
                    "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                }
                for r in resources
            ],
        }
        body = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode()
        response = self._request(body)
        self.counts["bundles"] += 1
        self.counts["sent"] += len(resources)
        if 400 <= response.status_code < 500:
            self.counts["rejected"] += len(resources)
            log.debug("gateway rejected a bundle: %s %s", response.status_code, response.text[:300])
            return
        accepted, rejected = _entry_outcomes(response, len(resources))
        self.counts["accepted"] += accepted
        self.counts["rejected"] += rejected

    def _request(self, body: bytes) -> httpx.Response:
        delay = 0.5
        for _attempt in range(self.max_retries):
            try:
                response = self._client.post(self.endpoint, content=body)
            except httpx.TransportError as exc:
                log.warning("gateway unreachable (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if response.status_code == 503:
                self.counts["retries_503"] += 1
                time.sleep(_retry_after(response, delay))
                delay = min(delay * 2, 10.0)
                continue
            if response.status_code >= 500:
                log.warning("gateway answered %s; retrying", response.status_code)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            return response
        raise SimulationError(
            f"gateway {self.endpoint} still failing after {self.max_retries} tries"
        )

    def close(self) -> None:
        """Flush and close the HTTP client."""
        try:
            self.flush()
        finally:
            self._client.close()

    def summary(self) -> dict[str, int]:
        """Resources sent, accepted, rejected; bundles; 503 retries."""
        return dict(self.counts)


def _retry_after(response: httpx.Response, default: float) -> float:
    value = response.headers.get("Retry-After")
    try:
        return min(max(float(value), 0.0), 60.0) if value is not None else default
    except ValueError:
        return default


def _entry_outcomes(response: httpx.Response, n: int) -> tuple[int, int]:
    """(accepted, rejected) from a batch-response Bundle; all accepted if the body says nothing."""
    try:
        body = response.json()
    except ValueError:
        return n, 0
    entries = body.get("entry") if isinstance(body, dict) else None
    if not isinstance(entries, list) or len(entries) != n:
        return n, 0
    rejected = 0
    for entry in entries:
        status = str(((entry or {}).get("response") or {}).get("status", "200"))
        if status[:1] in ("4", "5"):
            rejected += 1
    return n - rejected, rejected
