"""``featurepipe monitor --every 5m --metrics-port 9108``: monitoring as a service.

Each round re-reads the current data (new served-feature log files included) and checks it
against the baselines; the last round's statistics are exposed as Prometheus gauges, so
alerting can follow them (e.g. ``featurepipe_monitor_alarm == 1``):

* ``featurepipe_monitor_alarm{view,feature}``: 1 while the feature alarms, else 0;
* ``featurepipe_monitor_psi``, ``..._ks_statistic``, ``..._ks_pvalue``, ``..._js``,
  ``..._null_rate``, ``..._baseline_null_rate``, ``..._out_of_range``, ``..._new_category``
  ``{view,feature}``: the statistics (absent where not computed for that feature's kind);
* ``featurepipe_monitor_rows{view}``, ``featurepipe_monitor_alarms``,
  ``featurepipe_monitor_last_run_timestamp_seconds``, ``featurepipe_monitor_runs_total``,
  ``featurepipe_monitor_run_errors_total`` (a round that failed, e.g. an unreadable file: the
  previous round's gauges stay, and the error is printed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from featurepipe.monitoring.check import Report

STATS = (
    "psi",
    "ks_statistic",
    "ks_pvalue",
    "js",
    "null_rate",
    "baseline_null_rate",
    "out_of_range",
    "new_category",
)


class MonitorMetrics:
    """The last report as gauges, in its own registry (several services in one process do not
    collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.report: Report | None = None
        self.last_run = 0.0
        self.runs = 0
        self.errors = 0
        self._lock = threading.Lock()
        self.registry.register(self)

    def update(self, report: Report) -> None:
        with self._lock:
            self.report = report
            self.last_run = time.time()
            self.runs += 1

    def failed(self) -> None:
        with self._lock:
            self.errors += 1

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            report, last, runs, errors = self.report, self.last_run, self.runs, self.errors
        alarm = GaugeMetricFamily(
            "featurepipe_monitor_alarm", "1 while the feature alarms", labels=["view", "feature"]
        )
        stats = {
            s: GaugeMetricFamily(
                f"featurepipe_monitor_{s}", s.replace("_", " "), labels=["view", "feature"]
            )
            for s in STATS
        }
        rows = GaugeMetricFamily("featurepipe_monitor_rows", "rows checked", labels=["view"])
        alarms = GaugeMetricFamily("featurepipe_monitor_alarms", "features alarming")
        if report is not None:
            for v in report.views:
                rows.add_metric([v.view], float(v.rows))
                for f in v.features:
                    alarm.add_metric([f.view, f.feature], 1.0 if f.alarms else 0.0)
                    for s in STATS:
                        value = getattr(f, s)
                        if value is not None:
                            stats[s].add_metric([f.view, f.feature], float(value))
            alarms.add_metric([], float(len(report.alarms)))
        yield alarm
        yield from stats.values()
        yield rows
        yield alarms
        last_run = GaugeMetricFamily(
            "featurepipe_monitor_last_run_timestamp_seconds", "when the last round finished"
        )
        last_run.add_metric([], last)
        yield last_run
        yield CounterMetricFamily("featurepipe_monitor_runs", "rounds run", value=runs)
        yield CounterMetricFamily("featurepipe_monitor_run_errors", "rounds failed", value=errors)


def serve_forever(
    check: Callable[[], Report],
    every_s: float,
    port: int,
    *,
    addr: str = "127.0.0.1",
    stop: threading.Event | None = None,
    on_round: Callable[[Report | None, Exception | None], Any] | None = None,
) -> MonitorMetrics:
    """Run ``check`` every ``every_s`` seconds, its last report exposed on
    ``addr:port/metrics``, until ``stop`` is set (or the process is interrupted)."""
    metrics = MonitorMetrics()
    stop = stop or threading.Event()
    server, thread = start_http_server(port, addr=addr, registry=metrics.registry)
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                report = check()
            except Exception as e:  # a bad round is counted and shown; the service goes on
                metrics.failed()
                if on_round is not None:
                    on_round(None, e)
            else:
                metrics.update(report)
                if on_round is not None:
                    on_round(report, None)
            stop.wait(max(0.0, every_s - (time.monotonic() - started)))
    finally:
        server.shutdown()
        thread.join(timeout=5)
    return metrics
