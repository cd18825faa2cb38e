"""The worker's Prometheus metrics, in a registry of its own.

A private registry keeps GET /metrics to the worker's series, whatever else the process imported
has registered globally, and lets tests build several apps side by side.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PUSH_RESULTS = ("applied", "unchanged", "stale", "invalid", "unauthorized", "too_large")
# Upstream latency on one machine or one data centre is mostly single-digit milliseconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WorkerMetrics:
    """Counters, histogram and gauge the worker updates as it serves."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.hits = Counter(
            "worker_hits",
            "GET /hit answers by upstream status code, or by the failure when there was none.",
            ["upstream_status"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "worker_upstream_latency_seconds",
            "Time spent fetching the configured URL, failures included.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.config_version = Gauge(
            "worker_config_version",
            "Version of the configuration in force; 0 before the first push.",
            registry=self.registry,
        )
        self.pushes = Counter(
            "worker_config_pushes",
            "POST /config requests by result.",
            ["result"],
            registry=self.registry,
        )
        for result in PUSH_RESULTS:
            self.pushes.labels(result=result)

    def render(self) -> bytes:
        return generate_latest(self.registry)
