"""End-to-end parity: the event log through a real Kafka topic and the stream worker into a real
Redis, read back with online lookups, compared with the batch plan bit for bit."""

from __future__ import annotations

import time
import uuid
from typing import Any

import polars as pl

from featurepipe.compile.polars_aggs import ARRIVED, SEQ, TS, BatchProgram
from featurepipe.compile.polars_rows import PL_TYPES
from featurepipe.dsl.loader import Definitions
from featurepipe.errors import ParityError
from featurepipe.ir.timebase import from_epoch_us
from featurepipe.ir.types import DType
from featurepipe.online.lookup import OnlineReader
from featurepipe.online.redis_conn import connect
from featurepipe.online.state_store import open_store
from featurepipe.parity.harness import ParityReport, QueryTail, compare, normalize_events
from featurepipe.stream.kafka_conn import require_broker
from featurepipe.stream.produce import ensure_topics, produce_frame
from featurepipe.stream.worker import StreamWorker, WorkerConfig


def run_e2e(
    defs: Definitions,
    view_name: str,
    events: pl.DataFrame,
    *,
    bootstrap: str,
    redis_url: str | None,
    partitions: int = 4,
    keep: bool = False,
) -> ParityReport:
    """Produce ``events`` (row order = arrival order) to a fresh topic, stream them into Redis
    under a fresh key prefix, then compare online lookups with the batch path at query points
    per entity: its newest event time, that time plus each window length (exact window edges),
    and a day past the longest window."""
    view = defs.view(view_name)
    # an unreachable broker is one clear error within seconds, before anything is produced
    require_broker(bootstrap, "end-to-end parity")
    key = view.entity.key
    run = uuid.uuid4().hex[:8]
    topic = f"{view.source.stream.topic if view.source.stream else view.source.name}.parity-{run}"
    prefix = f"fp-parity-{run}"
    client = connect(redis_url)
    ensure_topics(bootstrap, {topic: partitions, topic + ".dlq": 1})
    t0 = time.perf_counter()
    produced = produce_frame(events, topic, bootstrap, view.entity.parts)
    worker = StreamWorker(
        defs,
        WorkerConfig(
            bootstrap=bootstrap,
            group_id=prefix,
            prefix=prefix,
            # stops once every produced event is consumed; the idle limit only ends a stream
            # that stalls (a slow group join on a loaded machine takes seconds)
            idle_exit_s=30.0,
            max_events=produced,
        ),
        client,
        views=[view_name],
        topics={view.source.name: topic},
    )
    counters = worker.run()
    seconds_stream = time.perf_counter() - t0
    if counters.events < produced:  # lookups of a half-consumed stream would only differ
        raise ParityError(
            f"end-to-end parity of view '{view_name}': the worker consumed {counters.events:,} "
            f"of the {produced:,} events produced to '{topic}' before it went idle; "
            "nothing was compared"
        )

    ev = normalize_events(view, events)
    # request fields (fp.request): every point of an entity asks with its newest event's field
    # of the same name and type (null without one), on both paths
    fields = dict(view.ir.fields)
    asked = [
        (name, dtype, name if fields.get(name) is dtype else None)
        for name, dtype in view.ir.request_fields
    ]
    parts = view.ir.entity_parts or ()
    newest = (
        ev.filter(pl.col(key).is_not_null())
        .sort(TS, SEQ)
        .group_by(key, maintain_order=True)
        .agg(
            pl.col(TS).last().alias("last"),
            *[pl.col(src).last().alias(f"__r{i}") for i, (_, _, src) in enumerate(asked) if src],
            # a composite key's parts: the lookup takes them, as a caller gives them
            *[pl.col(p).first().alias(f"__p{i}") for i, p in enumerate(parts)],
        )
    )
    tail = QueryTail(view.ir)
    q_key: list[Any] = []
    q_ts: list[int] = []
    q_req: list[list[Any]] = [[] for _ in asked]
    q_entity: list[Any] = []  # what the lookup is given: the key, or the parts' tuple
    for row in newest.iter_rows(named=True):
        e, t = row[key], row["last"]
        given = tuple(row[f"__p{i}"] for i in range(len(parts))) if parts else e
        for at in [t, *tail(t)]:
            q_key.append(e)
            q_entity.append(given)
            q_ts.append(at)
            for i, (_, _, src) in enumerate(asked):
                q_req[i].append(row[f"__r{i}"] if src else None)
    reader = OnlineReader(client, [view], prefix)
    expected: list[tuple[Any, ...]] = []
    names = view.feature_names
    by_time: dict[int, list[int]] = {}
    for i, t in enumerate(q_ts):
        by_time.setdefault(t, []).append(i)
    rows: list[tuple[Any, ...] | None] = [None] * len(q_ts)
    for t, idx in by_time.items():
        request = {
            name: [_online(dtype, q_req[j][i]) for i in idx]
            for j, (name, dtype, _) in enumerate(asked)
        }
        got = reader.read(
            [q_entity[i] for i in idx], {view_name: names}, at_us=t, request=request or None
        )
        for i, r in zip(idx, got, strict=True):
            rows[i] = tuple(r[n] for n in names)
    expected = [r for r in rows if r is not None]
    t1 = time.perf_counter()
    queries = pl.DataFrame(
        {key: pl.Series(q_key, dtype=ev.schema[key]), TS: q_ts, ARRIVED: [ev.height] * len(q_ts)},
        schema={key: ev.schema[key], TS: pl.Int64, ARRIVED: pl.Int64},
    )
    for j, (name, dtype, _) in enumerate(asked):
        queries = queries.with_columns(pl.Series(name, q_req[j], dtype=PL_TYPES[dtype]))
    batch = BatchProgram(view.ir).features(ev.lazy(), queries)
    report = ParityReport(
        view=view.name,
        fingerprint=view.fingerprint,
        events=counters.valid,
        queries=len(expected),
        skipped_beyond_lateness=0,
        skipped_null_entity=counters.invalid,
        seconds_stream=seconds_stream,
        seconds_batch=time.perf_counter() - t1,
    )
    report.features = compare(view.ir, batch, expected, q_key, q_ts, [ev.height] * len(q_ts))
    if not keep:
        open_store(client, prefix).clear()
    return report


def _online(dtype: DType, value: Any) -> Any:
    """A request value as a lookup's caller gives it: a datetime for a datetime field (the
    replay holds epoch micros)."""
    return from_epoch_us(value) if dtype is DType.DATETIME and value is not None else value
