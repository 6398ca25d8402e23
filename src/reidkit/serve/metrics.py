"""Prometheus metrics of one server: requests, latency, micro-batch sizes and gallery size.

Each app owns its registry (two apps in one process, as in tests, do not share counters).
Requests are labelled by route *template* (``/v1/crops/{crop_id}``), never by the raw path, so
a scan of ids cannot blow up the number of series.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "ServerMetrics"]

# Seconds: a search is a few ms when idle, a large add can take seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """Counters and histograms, plus a gallery-size gauge read when Prometheus scrapes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "reidkit_requests_total",
            "HTTP requests by method, route template and status code.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "reidkit_request_duration_seconds",
            "Time from request to response, by route template.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "reidkit_embed_batch_images",
            "Images per model run after micro-batching.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self._gallery_size = Gauge(
            "reidkit_gallery_embeddings",
            "Embeddings in the gallery.",
            registry=self.registry,
        )

    def report_gallery_size(self, size: Callable[[], int]) -> None:
        """Read the gallery size from ``size`` at each scrape."""
        self._gallery_size.set_function(lambda: float(size()))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
