"""Prometheus metrics of the feature server.

With several worker processes every process writes its values to files in the directory named
by ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode; ``featurepipe serve``
sets it up) and ``GET /metrics``, answered by any one worker, adds up every worker's files.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as mp

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# request latency buckets: the targets are 2 ms (1 entity) and 5 ms (100 entities)
BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServeMetrics:
    """The server's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "featurepipe_serve_requests",
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "featurepipe_serve_request_duration_seconds",
            "Time from a request's arrival to its answer, by endpoint.",
            ["endpoint"],
            buckets=BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "featurepipe_serve_errors",
            "Requests refused or failed, by endpoint and error code.",
            ["endpoint", "code"],
            registry=r,
        )
        self.entity_rows = Counter(
            "featurepipe_serve_entity_rows",
            "Entity rows looked up, by endpoint.",
            ["endpoint"],
            registry=r,
        )
        self.in_flight = Gauge(
            "featurepipe_serve_in_flight",
            "Requests being answered.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.log_rows = Counter(
            "featurepipe_serve_log_rows",
            "Served-feature log rows written to Parquet.",
            registry=r,
        )
        self.log_dropped = Counter(
            "featurepipe_serve_log_dropped",
            "Served-feature log losses: lookups (reason queue_full, unencodable) or rows "
            "(write_failed).",
            ["reason"],
            registry=r,
        )

    def exposition(self) -> bytes:
        """The text exposition of every worker's metrics."""
        if self.multiprocess:
            registry = CollectorRegistry()
            mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))

    def close(self) -> None:
        """Forget this process's live gauges (multiprocess mode), at shutdown."""
        if self.multiprocess:
            mp.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
