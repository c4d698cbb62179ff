"""Prometheus metrics of the gateway, kept per source (integrator)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IngestMetrics:
    """The gateway's counters, in their own registry (one per app, so tests can build many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "parcours_ingest_requests",
            "HTTP requests by endpoint and status code.",
            ["source", "endpoint", "status"],
            registry=self.registry,
        )
        self.resources = Counter(
            "parcours_ingest_resources",
            "Resources by outcome: accepted (published), duplicate, rejected.",
            ["source", "outcome", "resource_type"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "parcours_ingest_rejections",
            "Refused requests or entries by reason.",
            ["source", "reason"],
            registry=self.registry,
        )
        self.unresolved_references = Counter(
            "parcours_ingest_unresolved_references",
            "Conditional references accepted before their target (deferred), by element.",
            ["source", "element"],
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "parcours_ingest_publish_seconds",
            "Time from first send to the last Kafka ack of a request.",
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "parcours_ingest_request_seconds",
            "Request handling time by endpoint.",
            ["endpoint"],
            registry=self.registry,
        )
        self.broker_up = Gauge(
            "parcours_ingest_broker_up",
            "1 when the last publish or probe reached Kafka, else 0.",
            registry=self.registry,
        )
