"""``featurepipe recover``: rebuild the online store and the stream positions that match it.

After the store was emptied, rolled back to an older snapshot, or the broker was reset, the
states and positions in Redis no longer describe one history, and workers refuse to run on
them (``stream.positions``). Recovery restores the cut-over contract in one step:

1. every view is materialized from Parquet up to the cut-over ``until`` (events with
   ``ts < until``), as a new store generation;
2. the group's position of every partition of the views' topics is set to the partition's first
   offset: a worker re-reads the topic and ingests exactly the events with ``ts >= until``
   (events before the cut-over are skipped by event time, the materialize contract).

The result equals what a store materialized at ``until`` and streamed without a fault holds:
the Parquet log must hold every event before ``until`` and the topic every event from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from featurepipe.dsl.definitions import FeatureView
from featurepipe.online.materialize import MaterializeReport, Progress, materialize
from featurepipe.online.state_store import DEFAULT_PREFIX, Client, open_store
from featurepipe.settings import kafka_security
from featurepipe.stream.errors import StreamError
from featurepipe.stream.kafka_conn import require_broker


@dataclass
class RecoverReport:
    views: list[MaterializeReport] = field(default_factory=list)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    generation: str = ""


def stream_topics(views: Sequence[FeatureView], topics: dict[str, str] | None = None) -> list[str]:
    """The Kafka topics the views are streamed from (``topics`` overrides by source name)."""
    out: list[str] = []
    for v in views:
        stream = v.source.stream
        if stream is None:
            continue
        topic = (topics or {}).get(v.source.name, stream.topic)
        if topic not in out:
            out.append(topic)
    return out


def partition_starts(bootstrap: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """The first offset the broker holds for every partition of ``topics``.

    An unreachable broker raises ``BrokerUnreachableError`` within seconds."""
    require_broker(bootstrap, "recover")
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, **kafka_security()
        )
    except KafkaError as e:
        raise StreamError(f"cannot reach Kafka at {bootstrap}: {type(e).__name__}: {e}") from e
    try:
        every: list[TopicPartition] = []
        for topic in topics:
            ids = consumer.partitions_for_topic(topic)
            if not ids:
                raise StreamError(
                    f"topic '{topic}' does not exist on {bootstrap}: create it (or produce to it) "
                    "before recovering, so the positions can be set"
                )
            every += [TopicPartition(topic, p) for p in sorted(ids)]
        begin = consumer.beginning_offsets(every) if every else {}
        return {(tp.topic, tp.partition): int(o) for tp, o in begin.items()}
    finally:
        consumer.close()


def recover(
    views: Sequence[FeatureView],
    until: datetime,
    client: Client,
    bootstrap: str,
    *,
    group: str = "featurepipe",
    prefix: str = DEFAULT_PREFIX,
    topics: dict[str, str] | None = None,
    paths: dict[str, Path] | None = None,
    root: str | Path = ".",
    allow_empty: bool = False,
    progress: Callable[[str], Progress | None] | None = None,
) -> RecoverReport:
    """Materialize ``views`` up to ``until`` and reset ``group``'s positions to match.

    The broker is asked for the partitions first, so an unreachable broker or a missing topic
    fails before anything in the store changes.
    """
    starts = partition_starts(bootstrap, stream_topics(views, topics))
    report = RecoverReport()
    for i, v in enumerate(views):
        stream = v.source.stream
        topic = None if stream is None else (topics or {}).get(v.source.name, stream.topic)
        report.views.append(
            materialize(
                v,
                until,
                client,
                root=root,
                path=(paths or {}).get(v.name),
                prefix=prefix,
                resume=False,
                allow_empty=allow_empty,
                basis="recover",
                topic=topic,
                partitions=sum(1 for t, _ in starts if t == topic) or None,
                rebuilding=[w.name for w in views[i + 1 :]],
                progress=None if progress is None else progress(v.name),
            )
        )
    store = open_store(client, prefix)
    store.reset_positions(group, starts)
    generation = store.read_generation()
    report.positions = starts
    report.generation = "" if generation is None else generation.id
    return report
