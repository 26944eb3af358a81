"""Writing an event log to a Kafka topic (demo, end-to-end parity, benchmarks)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import msgspec
import polars as pl
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from featurepipe.settings import kafka_security


def ensure_topics(bootstrap: str, topics: dict[str, int]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kafka_security())
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(t, num_partitions=n, replication_factor=1)
            for t, n in topics.items()
            if t not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
    finally:
        admin.close()


def produce_frame(
    df: pl.DataFrame,
    topic: str,
    bootstrap: str,
    key: str,
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Send each row as a JSON event keyed by ``key``, in row (arrival) order."""
    rows = df.with_columns(
        pl.col(c).dt.to_string("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        for c, t in df.schema.items()
        if isinstance(t, pl.Datetime)
    )
    encoder = msgspec.json.Encoder()
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20, acks=1, **kafka_security()
    )
    n = 0
    try:
        for row in rows.iter_rows(named=True):
            k = row[key]
            producer.send(
                topic, key=None if k is None else str(k).encode(), value=encoder.encode(row)
            )
            n += 1
            if progress is not None and n % 10_000 == 0:
                progress(n)
        producer.flush()
    finally:
        producer.close()
    return n


def produce_raw(topic: str, bootstrap: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, max_request_size=8 << 20, **kafka_security()
    )
    try:
        for k, v in messages:
            producer.send(topic, key=k, value=v)
        producer.flush()
    finally:
        producer.close()


def encode_event(event: dict[str, Any]) -> bytes:
    return msgspec.json.encode(event)
