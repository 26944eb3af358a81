"""Bounded memory: the worker's entity cache (LRU by entries and estimated bytes) and its
dead-letter counters stay bounded however many entities and distinct bad messages stream by.

``StreamWorker.process`` is driven directly with polled batches built here, against the real
Redis (the states and offsets) and the real broker (the dead letters): the broker path adds
nothing to what is measured and would make a million entities slow.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import polars as pl
import pytest
from kafka import KafkaProducer, TopicPartition

from featurepipe import load_definitions
from featurepipe.compile.polars_aggs import TS, BatchProgram
from featurepipe.dev import infra
from featurepipe.online.lookup import OnlineReader
from featurepipe.online.redis_conn import connect
from featurepipe.online.state_store import StateStore
from featurepipe.parity.harness import compare, normalize_events
from featurepipe.stream.dead_letters import (
    CATEGORIES,
    MAX_DEAD_LETTER_BYTES,
    DeadLetterPublisher,
)
from featurepipe.stream.produce import ensure_topics
from featurepipe.stream.worker import StreamWorker, WorkerConfig
from tests.services import services, unique

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["services"]
START = datetime(2026, 1, 1, tzinfo=UTC)
COUNTRIES = ["US", "FR", "DE", None]


class Record(NamedTuple):
    """The fields of a kafka ConsumerRecord the worker reads."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def event(i: int, user: str) -> dict[str, Any]:
    return {
        "transaction_id": f"t{i}",
        "user_id": user,
        "merchant_id": f"m{i % 97}",
        "amount": None if i % 13 == 0 else round((i % 1000) * 1.25, 2),
        "country": COUNTRIES[i % 4],
        "employment_type": "student" if i % 3 else None,
        "channel": "app",
        "event_time": (START + timedelta(seconds=i)).isoformat(),
    }


def batches(
    topic: str,
    users: Iterator[str],
    n: int,
    size: int,
    partitions: int = 4,
    extra: Callable[[int], list[tuple[bytes, bytes]]] = lambda b: [],
) -> Iterator[dict[TopicPartition, list[Record]]]:
    """``n`` events (one per ``users`` item) as polled batches of ``size``, keyed by user;
    ``extra(b)`` messages (key, value) appended to partition 0 of batch ``b``."""
    enc = msgspec.json.Encoder()
    offsets = [0] * partitions
    polled: dict[TopicPartition, list[Record]] = {}
    count = b = 0

    def add(p: int, key: bytes, value: bytes) -> None:
        polled.setdefault(TopicPartition(topic, p), []).append(
            Record(topic, p, offsets[p], 0, key, value, [])
        )
        offsets[p] += 1

    for i in range(n):
        user = next(users)
        add(hash(user) % partitions, user.encode(), enc.encode(event(i, user)))
        count += 1
        if count == size or i == n - 1:
            for key, value in extra(b):
                add(0, key, value)
            yield polled
            polled, count, b = {}, 0, b + 1


def make_worker(defs: Any, services: infra.DevServices, client: Any, topic: str) -> StreamWorker:
    prefix = unique("fp-mem")
    worker = StreamWorker(
        defs,
        WorkerConfig(bootstrap=services.kafka_bootstrap, group_id=prefix, prefix=prefix),
        client,
        topics={"transactions": topic},
    )
    producer = KafkaProducer(
        bootstrap_servers=services.kafka_bootstrap, max_request_size=MAX_DEAD_LETTER_BYTES
    )
    worker.dead_letters = DeadLetterPublisher(producer, worker.retry)
    # what a worker does when it first starts on an empty store (run() is not called here)
    views = {v.name: v.fingerprint for v in defs.views.values()}
    worker.checkpoint.store.create_generation("stream", views)
    return worker


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_cache_bounds_hold_and_evicted_states_come_back_exact(
    services: infra.DevServices,
) -> None:
    """3,000 entities, each seen many times, through a cache of at most 400 states and an
    estimated 1.5 MB: the bounds hold after every batch, entities are evicted and read back
    over and over, and every entity ends equal to the batch plan. Dead letters with distinct
    free text (unknown fields, keys) count under a handful of categories."""
    defs = load_definitions(ROOT / "feature_defs")
    view = defs.view("user_spend")
    topic = unique("tx-mem")
    ensure_topics(services.kafka_bootstrap, {topic: 4, topic + ".dlq": 1})
    client = connect(services.redis_url)
    worker = make_worker(defs, services, client, topic)
    cp = worker.checkpoint
    cp.max_entries, cp.max_bytes = 400, 1_500_000
    n, users = 30_000, 3_000
    rng = iter([f"u{(i * 7919) % users}" for i in range(n)])  # every user every ~3,000 events
    enc = msgspec.json.Encoder()

    def bad_messages(b: int) -> list[tuple[bytes, bytes]]:
        # distinct free text in every bad message: unknown field names, mismatched keys
        return [
            (b"u1", b'{"zz%d": 1}' % b),
            (b"other-%d" % b, enc.encode(event(n + b, "u1"))),
            (b"u1", enc.encode(dict(event(n + b, "u1"), amount=f"x{b}"))),
        ]

    bad = 0
    try:
        for polled in batches(topic, rng, n, 1_000, extra=bad_messages):
            bad += 3
            worker.process(polled)
            assert len(cp.cache) <= cp.max_entries and cp.cache_bytes <= cp.max_bytes
        c = worker.counters
        assert c.valid == n and c.invalid == bad
        fields = {f"invalid field {f}" for f in view.source.fields}
        assert set(c.reasons) <= set(CATEGORIES) | fields and len(c.reasons) <= 4, c.reasons
        assert sum(c.reasons.values()) == bad and c.reasons["key is not the entity"] == bad // 3
        assert c.cache_evictions > 20_000  # states are dropped and read back all the time
        assert c.cache_entities == len(cp.cache) and 0 < c.cache_bytes <= cp.max_bytes
        text = worker.metrics.exposition().decode()
        assert (
            f'featurepipe_dead_letters_total{{reason="key is not the entity"}} {bad // 3}.0' in text
        )
        assert f"featurepipe_cache_entities {len(cp.cache)}.0" in text
        assert f"featurepipe_cache_evictions_total {c.cache_evictions}.0" in text
    finally:
        assert worker.dead_letters is not None
        worker.dead_letters.close()
    # every entity (most of them evicted and reloaded dozens of times) equals the batch plan
    ev = normalize_events(
        view,
        pl.DataFrame([event(i, f"u{(i * 7919) % users}") for i in range(n)]).with_columns(
            pl.col("event_time").str.to_datetime(time_zone="UTC")
        ),
    )
    last = ev.group_by("user_id").agg(pl.col(TS).max())
    keys = last["user_id"].to_list()
    times = [t + 1 for t in last[TS].to_list()]
    reader = OnlineReader(client, [view], worker.config.prefix)
    got = []
    for e, t in zip(keys, times, strict=True):
        row = reader.read([e], {"user_spend": view.feature_names}, at_us=t)[0]
        got.append(tuple(row[f] for f in view.feature_names))
    batch = BatchProgram(view.ir).features(ev.lazy(), pl.DataFrame({"user_id": keys, TS: times}))
    results = compare(view.ir, batch, got, keys, times, [0] * len(keys))
    assert sum(r.mismatched for r in results) == 0
    StateStore(client, worker.config.prefix).clear()


def stream_new_entities(
    worker: StreamWorker, topic: str, entities: int, batch: int = 2_000
) -> list[tuple[int, float]]:
    """Every event a new entity; (entities so far, RSS MiB) after each batch."""
    samples = []
    users = (f"e{i}" for i in range(entities))
    done = 0
    for polled in batches(topic, users, entities, batch):
        worker.process(polled)
        done += sum(len(m) for m in polled.values())
        if done % (10 * batch) == 0:
            gc.collect()
            samples.append((done, rss_mb()))
    return samples


@pytest.mark.slow
def test_rss_is_flat_after_warm_up(services: infra.DevServices) -> None:
    """300k new entities with the default bounds (100k states): once the cache is full the
    worker's RSS stays where it is."""
    defs = load_definitions(ROOT / "feature_defs")
    topic = unique("tx-rss")
    client = connect(services.redis_url)
    worker = make_worker(defs, services, client, topic)
    try:
        samples = stream_new_entities(worker, topic, 300_000)
    finally:
        StateStore(client, worker.config.prefix).clear()
        assert worker.dead_letters is not None
        worker.dead_letters.close()
    cp = worker.checkpoint
    assert len(cp.cache) == cp.max_entries
    print("entities -> RSS MiB:", samples)
    # the cache fills at 100k entities; from 150k to 300k the RSS stays within 10% (an
    # unbounded cache grows by about as much as it did from 0 to 100k: over 50%)
    warm = [rss for n, rss in samples if n >= 150_000]
    assert max(warm) < 1.1 * warm[0], samples
