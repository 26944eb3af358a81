"""The worker's metrics endpoint serves Prometheus text that prometheus_client's own parser reads,
with the counts of what the worker did."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from featurepipe import load_definitions
from featurepipe.dev import infra
from featurepipe.dev.datagen import generate_transactions
from featurepipe.online.redis_conn import connect
from featurepipe.online.state_store import StateStore
from featurepipe.stream.metrics import Counters, WorkerMetrics
from featurepipe.stream.produce import ensure_topics, produce_frame, produce_raw
from featurepipe.stream.worker import StreamWorker, WorkerConfig
from tests.services import services, unique

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["services"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    """Sample name (with labels) -> value, as prometheus_client parses the endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_metrics_of_two_workers_in_one_process_are_separate() -> None:
    a, b = Counters(), Counters()
    ma, mb = WorkerMetrics(a), WorkerMetrics(b)  # a shared registry would refuse the second
    pa, pb = _free_port(), _free_port()
    ma.serve(pa)
    mb.serve(pb)
    try:
        a.events, a.valid, a.invalid, a.lag = 10, 8, 2, 3
        b.events = 99
        ma.record_freshness([20.0, 400.0])
        got_a, got_b = _scrape(pa), _scrape(pb)
    finally:
        ma.close()
        mb.close()
    assert got_a["featurepipe_events_total"] == 10 and got_b["featurepipe_events_total"] == 99
    assert got_a["featurepipe_events_valid_total"] == 8
    assert got_a["featurepipe_events_invalid_total"] == 2
    assert got_a["featurepipe_consumer_lag"] == 3
    assert got_a["featurepipe_freshness_seconds_count"] == 2
    assert got_a["featurepipe_freshness_seconds_bucket{le=0.025}"] == 1
    assert got_a["featurepipe_freshness_seconds_bucket{le=0.5}"] == 2
    assert got_b["featurepipe_freshness_seconds_count"] == 0
    assert a.freshness_ms == [20.0, 400.0]
    assert b"featurepipe_events_total 10.0" in ma.exposition()


def test_endpoint_counts_what_the_worker_did(services: infra.DevServices) -> None:
    defs = load_definitions(ROOT / "feature_defs")
    log = generate_transactions(1_500, users=30, seed=41)
    topic, prefix = unique("tx-metrics"), unique("fp-metrics")
    ensure_topics(services.kafka_bootstrap, {topic: 2, topic + ".dlq": 1})
    produce_frame(log, topic, services.kafka_bootstrap, "user_id")
    produce_raw(topic, services.kafka_bootstrap, [(b"u1", b"not json")] * 7)
    total = log.height + 7
    client = connect(services.redis_url)
    port = _free_port()
    worker = StreamWorker(
        defs,
        WorkerConfig(bootstrap=services.kafka_bootstrap, group_id=prefix, prefix=prefix,
                     idle_exit_s=60, metrics_port=port),
        client, topics={"transactions": topic},
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    got: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                got = _scrape(port)
            except OSError:  # not serving yet
                got = {}
            done = got.get("featurepipe_events_valid_total", 0) + got.get(
                "featurepipe_events_invalid_total", 0
            )
            if done == total:  # counted once the last batch has committed
                break
            time.sleep(0.2)
    finally:
        worker.request_stop()
        thread.join(30)
        StateStore(client, prefix).clear()
    assert not thread.is_alive()
    assert got["featurepipe_events_total"] == total
    assert got["featurepipe_events_valid_total"] == log.height
    assert got["featurepipe_events_invalid_total"] == 7
    assert got["featurepipe_events_before_cutover_total"] == 0
    assert got["featurepipe_batches_total"] >= 1
    assert got["featurepipe_flush_retries_total"] == 0
    assert got["featurepipe_last_flush_timestamp_seconds"] > time.time() - 120
    assert got["featurepipe_freshness_seconds_count"] > 0
    assert "featurepipe_consumer_lag" in got
