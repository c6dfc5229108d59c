"""The service's Prometheus metrics (text exposition format, served at GET /metrics), kept in a
registry of their own so that two services in one process (tests) never share counts.

    rsicrc_requests_total{endpoint, status}        every answered request
    rsicrc_request_errors_total{endpoint, status}  those answered with status >= 400
    rsicrc_request_duration_seconds{endpoint}      latency, histogram
    rsicrc_batch_size                              pairs per batch, histogram
    rsicrc_batch_duration_seconds                  encode + decode time per batch, histogram
    rsicrc_queue_depth                             requests waiting for a batch, now
    rsicrc_model_ready                             1 once the model is loaded

Uses prometheus_client (the Prometheus project's own client), imported when metrics are built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rsicrc.errors import DependencyError

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0)
ENDPOINTS = ("/v1/caption", "/v1/search", "/healthz", "/readyz", "/metrics")  # other paths: "other"
SERVE_EXTRA = "pip install 'rsicrc[serve]'"


def import_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise DependencyError(f"rsicrc serve needs prometheus-client: {SERVE_EXTRA}") from None
    return prometheus_client


def batch_buckets(max_batch: int) -> tuple[float, ...]:
    """1, 2, 4, ... up to max_batch (and max_batch itself), so every size is visible."""
    sizes, size = {max_batch}, 1
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return tuple(float(s) for s in sorted(sizes))


class ServeMetrics:
    """The counters, histograms and gauges of one service."""

    def __init__(self, max_batch: int) -> None:
        prom = import_prometheus()
        prom.disable_created_metrics()  # no *_created series: creation times are noise to a scraper
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("rsicrc_requests", "Requests answered.", ["endpoint", "status"],
                                     registry=r)
        self.errors = prom.Counter("rsicrc_request_errors", "Requests answered with status >= 400.",
                                   ["endpoint", "status"], registry=r)
        self.latency = prom.Histogram("rsicrc_request_duration_seconds", "Time from request to answer.",
                                      ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = prom.Histogram("rsicrc_batch_size", "Pairs captioned together.",
                                         buckets=batch_buckets(max_batch), registry=r)
        self.batch_seconds = prom.Histogram("rsicrc_batch_duration_seconds", "Encode + decode time of a "
                                            "batch.",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = prom.Gauge("rsicrc_queue_depth", "Requests waiting for a batch.", registry=r)
        self.ready = prom.Gauge("rsicrc_model_ready", "1 once the model is loaded and serving.", registry=r)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        endpoint = path if path in ENDPOINTS else "other"
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def track_queue(self, depth: Callable[[], float]) -> None:
        """Read the queue depth from `depth()` at every scrape."""
        self.queue_depth.set_function(depth)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the text exposition format."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
