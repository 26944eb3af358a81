"""Worker metrics: plain counters, exposed in the Prometheus text format by prometheus_client.

The worker counts into ``Counters`` (also what ``StreamWorker.run`` returns); a collector reads
them at scrape time, so counting costs an integer add. Each worker has its own
``CollectorRegistry``: several workers in one process (tests, benchmarks) do not collide.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# end-to-end delay (Kafka message timestamp to commit): milliseconds to minutes
FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_KEEP_SAMPLES = 50_000  # freshness samples kept in Counters for reports and benchmarks
# distinct labels kept per labelled counter; the worker counts categories (a fixed set plus the
# source's declared fields), so this only guards against a bug that would count free text
MAX_LABELS = 256
OTHER = "other"


@dataclass
class Counters:
    events: int = 0  # messages consumed
    valid: int = 0
    invalid: int = 0  # dead-lettered
    before_cutover: int = 0
    null_entity: int = 0
    batches: int = 0
    flush_retries: int = 0
    last_flush: float = 0.0  # unix time of the last commit
    started: float = field(default_factory=time.time)
    lag: int = 0
    freshness_ms: list[float] = field(default_factory=list)  # recent samples, newest last
    reasons: dict[str, int] = field(default_factory=dict)  # dead letters per reason category
    quarantined: dict[str, int] = field(default_factory=dict)  # entities, per reason category
    cache_entities: int = 0  # entity states cached in memory
    cache_bytes: int = 0  # their estimated size in memory
    cache_evictions: int = 0  # least recently used states dropped from the cache

    def count_reason(self, category: str, n: int = 1) -> None:
        _count(self.reasons, category, n)

    def count_quarantined(self, category: str, n: int = 1) -> None:
        _count(self.quarantined, category, n)


def _count(counts: dict[str, int], label: str, n: int) -> None:
    if label not in counts and len(counts) >= MAX_LABELS:
        label = OTHER
    counts[label] = counts.get(label, 0) + n


class _CountersCollector:
    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        c = self.counters
        counts = [
            ("featurepipe_events", "Messages consumed.", c.events),
            ("featurepipe_events_valid", "Events ingested into the online store.", c.valid),
            ("featurepipe_events_invalid", "Events sent to the dead-letter topic.", c.invalid),
            (
                "featurepipe_events_before_cutover",
                "Events dropped because materialize already counted them.",
                c.before_cutover,
            ),
            ("featurepipe_events_null_entity", "Events without an entity key.", c.null_entity),
            ("featurepipe_batches", "Poll batches committed.", c.batches),
            ("featurepipe_flush_retries", "Retries while Redis was unavailable.", c.flush_retries),
            (
                "featurepipe_cache_evictions",
                "Entity states dropped from the worker's cache (least recently used).",
                c.cache_evictions,
            ),
        ]
        for name, doc, value in counts:
            yield CounterMetricFamily(name, doc, value=value)
        labelled = [
            (
                "featurepipe_dead_letters",
                "Messages sent to the dead-letter topic, per reason category.",
                c.reasons,
            ),
            (
                "featurepipe_entities_quarantined",
                "Entities this worker quarantined (lookups refuse them), per reason category.",
                c.quarantined,
            ),
        ]
        for name, doc, values in labelled:
            family = CounterMetricFamily(name, doc, labels=["reason"])
            for label, n in sorted(values.items()):
                family.add_metric([label], n)
            yield family
        yield GaugeMetricFamily(
            "featurepipe_cache_entities", "Entity states cached in memory.", c.cache_entities
        )
        yield GaugeMetricFamily(
            "featurepipe_cache_bytes",
            "Estimated memory of the cached entity states.",
            c.cache_bytes,
        )
        rate = c.valid / max(time.time() - c.started, 1e-9)
        yield GaugeMetricFamily(
            "featurepipe_last_flush_timestamp_seconds",
            "Unix time of the last commit.",
            c.last_flush,
        )
        yield GaugeMetricFamily(
            "featurepipe_events_per_second", "Valid events per second since start.", rate
        )
        yield GaugeMetricFamily(
            "featurepipe_consumer_lag", "Messages behind the end of the assigned partitions.", c.lag
        )

    def describe(self) -> Iterator[Metric]:
        return self.collect()  # the names, for the registry's duplicate check


class WorkerMetrics:
    """One worker's registry, and its HTTP endpoint when asked for."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.registry = CollectorRegistry()
        self.registry.register(_CountersCollector(counters))
        self.freshness = Histogram(
            "featurepipe_freshness_seconds",
            "Delay from the Kafka message timestamp to the commit of its state.",
            buckets=FRESHNESS_BUCKETS,
            registry=self.registry,
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def record_freshness(self, samples_ms: Iterable[float]) -> None:
        kept = self.counters.freshness_ms
        for ms in samples_ms:
            kept.append(ms)
            self.freshness.observe(ms / 1000)
        if len(kept) > _KEEP_SAMPLES:
            del kept[: _KEEP_SAMPLES // 2]

    def exposition(self) -> bytes:
        """The current metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread until ``close``."""
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
