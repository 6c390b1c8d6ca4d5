"""Prometheus metrics of one ingress replica (its own registry, exposed at ``/metrics``)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24)


class SinkMetrics:
    """Per sink, as the catalogue shards last reported it (summed over shards): events queued,
    lag (age of the oldest undelivered event), dead letters, events delivered, failed deliveries."""

    def __init__(self) -> None:
        self.stats: dict[str, dict[str, float]] = {}

    def collect(self) -> Iterator[Metric]:
        Family = GaugeMetricFamily | CounterMetricFamily
        gauges: dict[str, Family] = {
            "queued": GaugeMetricFamily("marketguard_sink_queued_events", "events in the outbox",
                                        labels=["sink"]),
            "lag_s": GaugeMetricFamily("marketguard_sink_lag_seconds", "age of the oldest undelivered event",
                                       labels=["sink"]),
            "dead_letters": GaugeMetricFamily("marketguard_sink_dead_letters",
                                              "events in the dead-letter table", labels=["sink"])}
        counters: dict[str, Family] = {
            "delivered_total": CounterMetricFamily("marketguard_sink_delivered_events", "events delivered",
                                                   labels=["sink"]),
            "failures_total": CounterMetricFamily("marketguard_sink_failures", "failed deliveries",
                                                  labels=["sink"])}
        for sink, row in sorted(self.stats.items()):
            for key, fam in {**gauges, **counters}.items():
                fam.add_metric([sink], row.get(key, 0.0))
        yield from gauges.values()
        yield from counters.values()


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
        self.sinks = SinkMetrics()
        r.register(self.sinks)
        self.deep_queued = Gauge("marketguard_deep_queued_jobs", "deep-tier jobs (OCR, NSFW) waiting",
                                 registry=r)
        self.deep_bytes = Gauge("marketguard_deep_queued_bytes", "image bytes of the waiting deep jobs",
                                registry=r)
        self.deep_skipped = Gauge("marketguard_deep_skipped_jobs",
                                  "deep work skipped on a full queue since the catalogue shards started",
                                  registry=r)

    def render(self, index_sizes: dict[tuple[str, str], int],
               sink_stats: dict[str, dict[str, float]] | None = None,
               deep_stats: dict[str, float] | None = None) -> bytes:
        for (tenant, modality), n in index_sizes.items():
            self.index_size.labels(tenant, modality).set(n)
        self.sinks.stats = sink_stats or {}
        if deep_stats:
            self.deep_queued.set(deep_stats.get("queued", 0.0))
            self.deep_bytes.set(deep_stats.get("bytes", 0.0))
            self.deep_skipped.set(deep_stats.get("skipped_total", 0.0))
        return generate_latest(self.registry)
