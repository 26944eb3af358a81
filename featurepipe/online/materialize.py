"""Bulk-load the online store from the batch log: per-entity state as of a cut-over instant.

``materialize(view, until, client)`` reads the view's Parquet events with ``ts < until``,
replays each entity's events in arrival order through ``ViewProgram`` (the same code the stream
worker runs, so the state is byte-for-byte what a worker that had seen those events would hold)
and writes one state hash per entity in pipelined batches.

Cut-over contract: when it completes, ``<prefix>:meta:<view>`` records ``materialized_until``
= ``until`` and the stream worker ingests exactly the events with ``ts >= until``: no gap, no
double count. While a run is in progress (or was interrupted) the meta key is absent, so a worker
can tell a complete store from a partial one.

Resumable: entities are processed in sorted order; after each batch the last finished entity is
recorded in ``<prefix>:meta:<view>:materialize`` (in the same round trip as the batch's writes,
after them). A rerun with the same ``until``, view fingerprint and input files skips the
finished entities; anything else starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import polars as pl
import redis

from featurepipe.batch.sources import SourceReport, read_events
from featurepipe.compile.polars_aggs import SEQ, sort_by_entity
from featurepipe.compile.polars_records import (
    EXACT,
    Accumulation,
    RecordPlan,
    accumulation,
    record_plan,
)
from featurepipe.compile.python_state import ViewProgram
from featurepipe.dsl.definitions import FeatureView
from featurepipe.ir.entity_keys import with_composite_key
from featurepipe.ir.nodes import ViewIR
from featurepipe.ir.timebase import as_utc, to_epoch_us
from featurepipe.ir.types import DType
from featurepipe.online.cluster_store import UNSTREAMED_PARTITIONS, pseudo_topic
from featurepipe.online.errors import OnlineStoreError
from featurepipe.online.state_store import (
    CUTOVER_EVENT_TIME,
    DEFAULT_PREFIX,
    Client,
    Entity,
    MaterializeProgress,
    StateStore,
    ViewMeta,
    open_store,
)

Progress = Callable[[int, int], None]
# a Redis Cluster with no reachable node raises RedisClusterException, not a RedisError
_REDIS_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)


@dataclass
class MaterializeReport:
    """Totals describe the whole materialization, including work done by an interrupted run."""

    view: str
    fingerprint: str
    until_us: int
    entities: int  # entities whose state is now in the store
    events: int  # events replayed into them
    seconds: float  # wall time of this call
    batches: int  # pipelined batches written by this call
    resumed_from: Entity | None  # last entity finished by the interrupted run resumed, if any
    skipped: int = 0  # events without an entity key or timestamp (not stored)
    quarantined: int = 0  # rows that broke the source contract (see read_events)
    stale_deleted: int = 0  # state keys of entities absent from this materialization, removed


def materialize(
    view: FeatureView,
    until: datetime,
    client: Client,
    *,
    root: str | Path = ".",
    path: str | Path | None = None,
    batch_size: int = 1000,
    prefix: str = DEFAULT_PREFIX,
    progress: Progress | None = None,
    resume: bool = True,
    allow_empty: bool = False,
    basis: str = "materialize",
    topic: str | None = None,
    partitions: int | None = None,
    shards: int = 1,
    runner: StateRunner | None = None,
    rebuilding: Sequence[str] = (),
) -> MaterializeReport:
    """Write every entity's state after the events with ``ts < until`` to the online store.

    ``progress(done, total)`` is called once before the first batch and after each batch
    (entities). An exception it raises stops the run, which a later call resumes.

    Input without a single usable event (empty, filtered out, or entirely quarantined) is
    refused before anything in the store changes, unless ``allow_empty``: replacing every live
    state by nothing is almost always a wrong path or a broken export, not an intent.
    A fresh (not resumed) run starts a new store generation (``basis``).

    On a Redis Cluster the states are kept by the Kafka partition of ``topic`` (the view's
    stream topic by default) their entity's events go to: ``partitions`` is that topic's
    partition count, needed the first time the store meets the topic (``recover`` asks the
    broker for it).

    ``shards`` > 1 splits the entities into that many entity-hash shards, each replayed alone
    (each shard scans the whole input); ``runner`` computes the shards elsewhere (a Dask cluster,
    ``featurepipe.batch.distributed.DaskRunner``). Each entity's state is the same bytes either
    way. A sharded run is not resumed after an interruption: it starts over (a new generation).
    """
    t0 = time.perf_counter()
    if batch_size < 1:
        raise OnlineStoreError(f"batch_size must be >= 1, got {batch_size}")
    if shards < 1:
        raise OnlineStoreError(f"shards must be >= 1, got {shards}")
    sharded = shards > 1 or runner is not None
    store = open_store(client, prefix)
    key = view.entity.key
    key_type = view.entity_dtype
    if key_type not in (DType.STR, DType.INT):
        raise OnlineStoreError(
            f"view '{view.name}': entity key '{key}' is {key_type}; the online store keys "
            "entities by str or int"
        )
    until_dt = as_utc(until)
    until_us = to_epoch_us(until_dt)
    fingerprint = view.fingerprint
    lf, report = read_events(view.source, root=root, path=path, end=until_dt)
    lf = with_composite_key(lf, view.ir.entity_parts)
    run_id = _run_identity(fingerprint, until_us, report, shards if sharded else 0)
    fields = list(view.source.fields)
    ts_col = view.source.timestamp
    usable = pl.col(key).is_not_null() & pl.col(ts_col).is_not_null()
    columns = list(dict.fromkeys([*fields, key]))  # a composite key is a column of its own
    skipped_q = lf.select((~usable).sum().alias("skipped"))
    if sharded:  # each shard reads its own events
        entities_df = lf.filter(usable).select(pl.col(key).unique()).collect()
        skipped = int(skipped_q.collect()["skipped"][0])
    else:  # one read: the events (sorted), their entities, the rows skipped
        unsorted, skipped_df = pl.collect_all([lf.filter(usable).select(*columns, SEQ), skipped_q])
        every = sort_by_entity(unsorted, key, SEQ)
        del unsorted
        entities_df = every.select(pl.col(key).unique(maintain_order=True))
        skipped = int(skipped_df["skipped"][0])
    if entities_df.height == 0 and not allow_empty:
        files = len(report.files)
        raise OnlineStoreError(
            f"view '{view.name}': no usable event before {until_dt.isoformat()} in {files} "
            f"file(s) ({report.quarantined:,} rows quarantined); refusing to replace the online "
            "state by nothing. Check the source path and the cut-over, or pass --allow-empty"
        )

    try:
        if store.partitioned:
            _route(store, view, topic, partitions)
        saved = store.read_progress(view)
        if (
            resume
            and not sharded
            and saved is not None
            and (saved.run, saved.until, saved.fingerprint) == (run_id, until_us, fingerprint)
        ):
            last = saved.last_entity
            done_entities, done_events = saved.entities, saved.events
        else:
            last, done_entities, done_events = None, 0, 0
            store.new_generation(basis, {view.name: fingerprint}, rebuilding)
            # no meta key while running: a worker cannot mistake a partial store for a complete one
            store.start_materialization(
                view, MaterializeProgress(run_id, until_us, fingerprint, None, 0, 0)
            )
    except _REDIS_ERRORS as e:
        raise OnlineStoreError(f"view '{view.name}': cannot read or reset progress: {e}") from e
    resumed_from = last

    fields = columns
    total_entities = entities_df.height
    computed: Iterator[pl.DataFrame] = iter(())
    if sharded:
        tasks = shard_tasks(view, lf.filter(usable), fields, max(shards, 1))
        computed = (t.compute() for t in tasks) if runner is None else runner.states(tasks)
        states: Iterator[tuple[Entity, bytes, int]] = (
            row for frame in computed for row in frame.iter_rows()
        )
    else:
        todo = every if last is None else every.filter(pl.col(key) > pl.lit(last))
        del every
        states = entity_states(ViewProgram(view.ir), todo, fields, key, last)

    batches = 0
    try:
        if progress is not None:
            progress(done_entities, total_entities)
        batch: list[tuple[Entity, bytes, int]] = []
        for item in states:
            batch.append(item)
            if len(batch) < batch_size:
                continue
            done_entities, done_events = _write_batch(
                store, view, batch, run_id, until_us, done_entities, done_events
            )
            batches += 1
            batch = []
            if progress is not None:
                progress(done_entities, total_entities)
        if batch:
            done_entities, done_events = _write_batch(
                store, view, batch, run_id, until_us, done_entities, done_events
            )
            batches += 1
            if progress is not None:
                progress(done_entities, total_entities)
    finally:  # a runner's pending tasks are cancelled now, not when collected
        if sharded and isinstance(computed, Generator):
            computed.close()

    if done_entities != total_entities:  # the log changed under a resumed run
        raise OnlineStoreError(
            f"view '{view.name}': wrote {done_entities} entities but the log holds "
            f"{total_entities}; rerun with resume disabled"
        )
    try:
        stale = store.delete_states_except(view, entities_df[key])
        meta = ViewMeta(
            fingerprint=fingerprint,
            materialized_until=until_us,
            cutover_basis=CUTOVER_EVENT_TIME,
            materialized_at=datetime.now(UTC).isoformat(timespec="seconds"),
            entities=done_entities,
            events=done_events,
            source_files=[_file_entry(f) for f in report.files],
        )
        store.finish_materialization(view, meta)
    except _REDIS_ERRORS as e:
        raise OnlineStoreError(
            f"view '{view.name}': Redis error while finishing ({e}); rerun to finish"
        ) from e
    return MaterializeReport(
        view=view.name,
        fingerprint=fingerprint,
        until_us=until_us,
        entities=done_entities,
        events=done_events,
        seconds=time.perf_counter() - t0,
        batches=batches,
        resumed_from=resumed_from,
        skipped=skipped,
        quarantined=report.quarantined,
        stale_deleted=stale,
    )


# the columns of a shard's result
STATE = "__state"
EVENTS = "__events"
_SHARD_SEED = 7  # the entity-hash of training-set partitions, so shards line up with them


@dataclass(frozen=True)
class StateTask:
    """One entity-hash shard of a materialization: all a worker needs to compute its states.

    ``ir``: the view, compiled where it runs; ``events``: the lazy plan that reads the shard's
    usable events before the cut-over (a Polars plan: paths and expressions, no data).
    ``compute`` returns one row per entity: the key, its state bytes and its event count.
    """

    view: str
    ir: ViewIR
    key: str
    fields: tuple[str, ...]
    partition: int
    partitions: int
    events: pl.LazyFrame

    def compute(self) -> pl.DataFrame:
        fields = list(self.fields)
        todo = self.events.select(*fields, SEQ).sort(self.key, SEQ).collect()
        rows = list(entity_states(ViewProgram(self.ir), todo, fields, self.key, None))
        return pl.DataFrame(
            {
                self.key: pl.Series([r[0] for r in rows], dtype=todo.schema[self.key]),
                STATE: pl.Series([r[1] for r in rows], dtype=pl.Binary),
                EVENTS: pl.Series([r[2] for r in rows], dtype=pl.Int64),
            }
        )


class StateRunner(Protocol):
    """Computes ``StateTask``s elsewhere; yields their results as they complete."""

    def states(self, tasks: Sequence[StateTask]) -> Iterator[pl.DataFrame]: ...


def shard_tasks(
    view: FeatureView, events: pl.LazyFrame, fields: list[str], shards: int
) -> list[StateTask]:
    """The view's materialization as one task per entity-hash shard (``events``: usable)."""
    key = view.entity.key
    return [
        StateTask(
            view.name,
            view.ir,
            key,
            tuple(fields),
            p,
            shards,
            events if shards == 1 else events.filter(pl.col(key).hash(_SHARD_SEED) % shards == p),
        )
        for p in range(shards)
    ]


def entity_states(
    prog: ViewProgram,
    todo: pl.DataFrame,
    fields: list[str],
    key: str,
    last: Entity | None,
    *,
    per_event: bool = False,
) -> Iterator[tuple[Entity, bytes, int]]:
    """(entity, state bytes, events) per entity of ``todo`` (sorted by entity, arrival).

    About ``ASSEMBLE_CHUNK`` events (whole entities) at a time, each step vectorized where the
    view allows it and its entities have enough events to pay for it (``_assembled_chunk``),
    else each event's record (vectorized where it can be) ingested in turn; ``per_event``
    forces each event through the row function and ``ViewProgram.ingest`` (the stream
    worker's path: the reference the others are tested and benchmarked against). The bytes
    are the same."""
    plan = None if per_event else record_plan(prog.view, prog.slots)
    folding = accumulation(prog.view, prog.lifetime) if plan is not None else None
    sizes = todo.group_by(key, maintain_order=True).len().get_column("len").to_list()
    start = end = entities = 0
    previous: Any = last
    for n in sizes:
        end, entities = end + n, entities + 1
        if end - start < ASSEMBLE_CHUNK and end < todo.height:
            continue
        chunk = todo.slice(start, end - start)
        if plan is not None and prog.assembles and chunk.height >= ASSEMBLE_MIN_EVENTS * entities:
            states = _assembled_chunk(prog, plan, folding, chunk, fields, key)
        else:
            states = _ingested(prog, plan, chunk, fields, key)
        for entity, blob, count in states:
            if previous is not None and not entity > previous:
                raise OnlineStoreError(
                    f"entities are not in increasing order ({entity!r} after {previous!r}): "
                    "resuming would be unsafe"
                )
            previous = entity
            yield entity, blob, count
        start, entities = end, 0


ASSEMBLE_CHUNK = 262_144  # events per step, whole entities: bounds the copies and objects alive
# events per entity from which assembling beats ingesting records one by one: measured on
# user_spend, 20k entities: 5 events each 0.46 vs 0.38 s, 10: 0.60 vs 0.69 s, 50: 1.4 vs 3.0 s
ASSEMBLE_MIN_EVENTS = 8


def _ingested(
    prog: ViewProgram, plan: RecordPlan | None, todo: pl.DataFrame, fields: list[str], key: str
) -> Iterator[tuple[Entity, bytes, int]]:
    """The states of ``todo``'s entities, each event's record ingested in turn."""
    current: Any = None
    state: Any = None  # ViewProgram state, opaque here
    count = 0
    ingest = prog.ingest_record
    for entity, rec in _event_records(prog, plan, todo, fields, key):
        if state is None or entity != current:
            if state is not None:
                yield current, _dump(prog, state, current), count
            current = entity
            state, count = prog.new_state(), 0
        ingest(state, rec)
        count += 1
    if state is not None:
        yield current, _dump(prog, state, current), count


def _assembled_chunk(
    prog: ViewProgram,
    plan: RecordPlan,
    folding: Accumulation | None,
    todo: pl.DataFrame,
    fields: list[str],
    key: str,
) -> Iterator[tuple[Entity, bytes, int]]:
    """The states of the whole entities of ``todo``: in Polars, each entity's events split
    into those behind its final horizon and the buffer (in (ts, seq) order); the former
    folded into the lifetime accumulators by Polars aggregations (``accumulation``) where
    their records are exact, the rest turned into records (``_computed_records``)."""
    ts = pl.col(prog.view.timestamp)
    newer = ts >= ts.max().over(key) - prog.retention_us
    # sorted first (the fields), widened after (the record columns, each computed once)
    ordered = (
        todo.with_columns(newer.alias(NEWER))
        .sort(key, NEWER, ts, SEQ)
        .with_columns(plan.exact, *plan.columns)
    )
    if folding is not None:  # exact older events: folded in Polars, never Python objects
        folded = pl.col(NEWER).not_() & pl.col(EXACT)
        vectorized, indices = {}, folding.indices
        if folding.aggregations:  # none: no lifetime aggregation keeps anything of them
            grouped = (
                ordered.filter(folded)
                .select(key, *plan.names)
                .group_by(key, maintain_order=True)
                .agg(*folding.aggregations)
            )
            vectorized = dict(
                zip(grouped.get_column(key).to_list(), folding.accumulators(grouped), strict=True)
            )
        ordered = ordered.filter(~folded)
    else:
        vectorized, indices = {}, ()
    sizes = ordered.group_by(key, maintain_order=True).agg(
        pl.col(NEWER).not_().sum().alias("older"), pl.len().alias("n")
    )
    totals = todo.group_by(key, maintain_order=True).agg(pl.len().alias("n"), ts.max())
    counts = dict(
        zip(sizes.get_column(key).to_list(), sizes.select("older", "n").rows(), strict=True)
    )
    records = iter(_computed_records(prog, plan, ordered, fields))
    for entity, n, max_ts in totals.iter_rows():
        older, rest = counts.get(entity, (0, 0))
        folded_records = list(islice(records, older))  # first: an entity's records come so
        accumulated = vectorized.get(entity)
        state = prog.assemble(
            max_ts,
            folded_records,
            list(islice(records, rest - older)),
            None if accumulated is None else (indices, accumulated),
        )
        yield entity, _dump(prog, state, entity), n


NEWER = "__newer"


def _computed_records(
    prog: ViewProgram, plan: RecordPlan, frame: pl.DataFrame, fields: list[str]
) -> list[tuple[Any, ...]]:
    """The records of ``frame``'s rows from its computed columns (``plan.names``), the row
    function taking the rows marked inexact."""
    records = plan.records(frame.select(plan.names))
    exact = frame.get_column(EXACT)
    if not exact.all():
        raw = frame.select(*fields, SEQ)
        n = len(fields)
        for i in (~exact).arg_true().to_list():
            row = raw.row(i)
            records[i] = prog.record(dict(zip(fields, row[:n], strict=True)), row[n])
    return records


RECORD_CHUNK = 65_536  # events turned into records at once: bounds the Python objects alive


def _event_records(
    prog: ViewProgram, plan: RecordPlan | None, todo: pl.DataFrame, fields: list[str], key: str
) -> Iterator[tuple[Entity, tuple[Any, ...]]]:
    """(entity, record) per event of ``todo`` (``fields`` then ``__seq``), in order: computed
    by the vectorized row stage (``plan``) with the row function taking the rows it marks
    inexact, or every row when there is no plan (the view has none, or ``per_event``).
    Either way the records are the row function's, so the states are the same bytes."""
    if plan is None:
        n, ki = len(fields), fields.index(key)
        for row in todo.iter_rows():
            yield row[ki], prog.record(dict(zip(fields, row[:n], strict=True)), row[n])
        return
    for offset in range(0, todo.height, RECORD_CHUNK):
        part = todo.slice(offset, RECORD_CHUNK).with_columns(plan.exact, *plan.columns)
        records = _computed_records(prog, plan, part, fields)
        yield from zip(part.get_column(key).to_list(), records, strict=True)


def _dump(prog: ViewProgram, state: Any, entity: Entity) -> bytes:
    try:
        return prog.dumps(state)
    except (OverflowError, TypeError, ValueError) as e:  # e.g. an int beyond msgpack's 64 bits
        raise OnlineStoreError(
            f"view '{prog.view.name}': the state of entity {entity!r} cannot be encoded "
            f"by ViewProgram.dumps ({type(e).__name__}: {e})"
        ) from e


def _write_batch(
    store: StateStore,
    view: FeatureView,
    batch: list[tuple[Entity, bytes, int]],
    run_id: str,
    until_us: int,
    done_entities: int,
    done_events: int,
) -> tuple[int, int]:
    """One round trip: the batch's states, then the progress record claiming them."""
    done_entities += len(batch)
    done_events += sum(b[2] for b in batch)
    record = MaterializeProgress(
        run_id, until_us, view.fingerprint, batch[-1][0], done_entities, done_events
    )
    try:
        store.write_states_with_progress(
            view, view.fingerprint, [(entity, blob) for entity, blob, _ in batch], record
        )
    except _REDIS_ERRORS as e:
        raise OnlineStoreError(
            f"view '{view.name}': Redis error writing entities {batch[0][0]!r}..{batch[-1][0]!r} "
            f"({e}); rerun to resume"
        ) from e
    return done_entities, done_events


def _route(store: StateStore, view: FeatureView, topic: str | None, partitions: int | None) -> None:
    """Record where a partitioned store (a Redis Cluster) keeps the view's states."""
    stream = view.source.stream
    topic = topic or (stream.topic if stream is not None else pseudo_topic(view.name))
    count = partitions or store.recorded_partitions(topic)
    if count is None and stream is None:
        count = UNSTREAMED_PARTITIONS
    if count is None:
        raise OnlineStoreError(
            f"view '{view.name}': the online store is a Redis Cluster, which keeps states by "
            f"the Kafka partition of topic '{topic}', and it has not recorded that topic's "
            "partition count yet: pass --topic-partitions <the topic's partition count>, or run "
            "`featurepipe recover`, which asks the broker"
        )
    store.register_routing({view.name: topic}, {topic: count})


def _file_entry(f: dict[str, Any]) -> dict[str, Any]:
    return {"path": f["path"], "rows": f["rows"], "min_ts": f["min_ts"], "max_ts": f["max_ts"]}


def _run_identity(fingerprint: str, until_us: int, report: SourceReport, shards: int = 0) -> str:
    """What a resumed run must share with the interrupted one: view, cut-over and input files."""
    files = []
    for f in report.files:
        try:
            st = os.stat(f["path"])
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        files.append([*_file_entry(f).values(), size, mtime])
    parts: list[Any] = [fingerprint, until_us, files, report.quarantined]
    if shards:  # a sharded run is never resumed by an unsharded one (nor the reverse)
        parts.append(shards)
    blob = json.dumps(parts, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


__all__ = ["MaterializeReport", "StateRunner", "StateTask", "materialize", "shard_tasks"]
