"""Prometheus metrics of one ingress replica (its own registry, exposed at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24)


class ApiMetrics:
    """Latency per route, batch sizes, signals written, errors by code, requests shed, index sizes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram("marketguard_request_seconds", "request latency by route and status",
                                 ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("marketguard_batch_size", "records per extractor call (batch=extract) "
                                    "and per request (batch=<kind>_request)", ["batch"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.signals = Counter("marketguard_signals_written_total", "signals returned by writes", ["kind"],
                               registry=r)
        self.errors = Counter("marketguard_errors_total", "error answers by code", ["code"], registry=r)
        self.shed = Counter("marketguard_requests_shed_total", "requests refused with 503 at capacity",
                            ["route"], registry=r)
        self.index_size = Gauge("marketguard_index_items", "items per tenant and modality index",
                                ["tenant", "modality"], registry=r)

    def render(self, index_sizes: dict[tuple[str, str], int]) -> bytes:
        for (tenant, modality), n in index_sizes.items():
            self.index_size.labels(tenant, modality).set(n)
        return generate_latest(self.registry)
