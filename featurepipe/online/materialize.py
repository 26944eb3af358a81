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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import redis

from featurepipe.batch.sources import SourceReport, read_events
from featurepipe.compile.polars_aggs import SEQ
from featurepipe.compile.python_state import ViewProgram
from featurepipe.dsl.definitions import FeatureView
from featurepipe.ir.types import DType
from featurepipe.online.errors import OnlineStoreError
from featurepipe.online.layout import (
    CUTOVER_EVENT_TIME,
    DEFAULT_PREFIX,
    Entity,
    HashMapping,
    OnlineStoreLayout,
    ViewMeta,
    encode_entity,
    state_fields,
)

Progress = Callable[[int, int], None]
Client = redis.Redis | redis.RedisCluster

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SWEEP_BATCH = 1000


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


def to_micros(t: datetime) -> int:
    """Epoch microseconds of ``t``; a naive datetime is taken as UTC."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - _EPOCH) // timedelta(microseconds=1)


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
) -> MaterializeReport:
    """Write every entity's state after the events with ``ts < until`` to the online store.

    ``progress(done, total)`` is called once before the first batch and after each batch
    (entities). An exception it raises stops the run, which a later call resumes.
    """
    t0 = time.perf_counter()
    if batch_size < 1:
        raise OnlineStoreError(f"batch_size must be >= 1, got {batch_size}")
    layout = OnlineStoreLayout(prefix)
    key = view.entity.key
    key_type = view.source.fields[key][0]
    if key_type not in (DType.STR, DType.INT):
        raise OnlineStoreError(
            f"view '{view.name}': entity key '{key}' is {key_type}; the online store keys "
            "entities by str or int"
        )
    until_dt = until if until.tzinfo is not None else until.replace(tzinfo=UTC)
    until_us = to_micros(until_dt)
    fingerprint = view.fingerprint
    lf, report = read_events(view.source, root=root, path=path, end=until_dt)
    run_id = _run_identity(fingerprint, until_us, report)
    prog_key = layout.progress_key(view)
    meta_key = layout.meta_key(view)
    cluster = isinstance(client, redis.RedisCluster)

    try:
        saved = _decode(client.hgetall(prog_key))
        if (
            resume
            and saved.get("run") == run_id
            and saved.get("until") == str(until_us)
            and saved.get("fingerprint") == fingerprint
        ):
            last: Entity | None = json.loads(saved["last_entity"])
            done_entities, done_events = int(saved["entities"]), int(saved["events"])
        else:
            last, done_entities, done_events = None, 0, 0
            pipe = client.pipeline(transaction=False)
            pipe.delete(meta_key)  # no meta key: the store is not complete
            pipe.delete(prog_key)
            # stream workers' stored offsets belong to the states being replaced: drop them, so
            # that workers re-read their topics from the start and skip up to the new cut-over
            for offsets in client.scan_iter(match=f"{_glob(layout.prefix)}:offsets:*", count=1000):
                pipe.delete(offsets)
            pipe.hset(
                prog_key,
                mapping=_progress_fields(run_id, until_us, fingerprint, None, 0, 0),
            )
            pipe.execute()
    except redis.exceptions.RedisError as e:
        raise OnlineStoreError(f"view '{view.name}': cannot read or reset progress: {e}") from e
    resumed_from = last

    fields = list(view.source.fields)
    ts_col = view.source.timestamp
    usable = pl.col(key).is_not_null() & pl.col(ts_col).is_not_null()
    todo_filter = usable if last is None else usable & (pl.col(key) > pl.lit(last))
    todo_q = lf.filter(todo_filter).select(*fields, SEQ).sort(key, SEQ)
    skipped_q = lf.select((~usable).sum().alias("skipped"))
    entities_q = lf.filter(usable).select(pl.col(key).unique())
    todo, skipped_df, entities_df = pl.collect_all([todo_q, skipped_q, entities_q])
    total_entities = entities_df.height
    skipped = int(skipped_df["skipped"][0])

    prog = ViewProgram(view.ir)
    batches = 0
    if progress is not None:
        progress(done_entities, total_entities)
    batch: list[tuple[Entity, bytes, int]] = []
    for item in _entity_states(prog, todo, fields, key, last):
        batch.append(item)
        if len(batch) < batch_size:
            continue
        done_entities, done_events = _write_batch(
            client, layout, view, batch, run_id, until_us, done_entities, done_events, cluster
        )
        batches += 1
        batch = []
        if progress is not None:
            progress(done_entities, total_entities)
    if batch:
        done_entities, done_events = _write_batch(
            client, layout, view, batch, run_id, until_us, done_entities, done_events, cluster
        )
        batches += 1
        if progress is not None:
            progress(done_entities, total_entities)

    if done_entities != total_entities:  # the log changed under a resumed run
        raise OnlineStoreError(
            f"view '{view.name}': wrote {done_entities} entities but the log holds "
            f"{total_entities}; rerun with resume disabled"
        )
    current = {encode_entity(e) for e in entities_df[key]}
    try:
        stale = _sweep(client, layout, view, current)
        meta = ViewMeta(
            fingerprint=fingerprint,
            materialized_until=until_us,
            cutover_basis=CUTOVER_EVENT_TIME,
            materialized_at=datetime.now(UTC).isoformat(timespec="seconds"),
            entities=done_entities,
            events=done_events,
            source_files=[_file_entry(f) for f in report.files],
        )
        pipe = client.pipeline(transaction=False)
        pipe.hset(meta_key, mapping=meta.to_hash())
        pipe.delete(prog_key)
        pipe.execute()
    except redis.exceptions.RedisError as e:
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


def _entity_states(
    prog: ViewProgram, todo: pl.DataFrame, fields: list[str], key: str, last: Entity | None
) -> Iterator[tuple[Entity, bytes, int]]:
    """(entity, state bytes, events) per entity of ``todo`` (sorted by entity, arrival)."""
    ki = fields.index(key)
    n = len(fields)
    previous: Any = last
    current: Any = None
    state: list[Any] | None = None
    count = 0
    for row in todo.iter_rows():
        entity = row[ki]
        if state is None or entity != current:
            if state is not None:
                yield current, _dump(prog, state, current), count
            if previous is not None and not entity > previous:
                raise OnlineStoreError(
                    f"entities are not in increasing order ({entity!r} after {previous!r}): "
                    "resuming would be unsafe"
                )
            current = previous = entity
            state, count = prog.new_state(), 0
        prog.ingest(state, dict(zip(fields, row[:n], strict=True)), row[n])
        count += 1
    if state is not None:
        yield current, _dump(prog, state, current), count


def _dump(prog: ViewProgram, state: list[Any], entity: Entity) -> bytes:
    try:
        return prog.dumps(state)
    except (OverflowError, TypeError, ValueError) as e:  # e.g. an int beyond msgpack's 64 bits
        raise OnlineStoreError(
            f"view '{prog.view.name}': the state of entity {entity!r} cannot be encoded "
            f"by ViewProgram.dumps ({type(e).__name__}: {e})"
        ) from e


def _write_batch(
    client: Client,
    layout: OnlineStoreLayout,
    view: FeatureView,
    batch: list[tuple[Entity, bytes, int]],
    run_id: str,
    until_us: int,
    done_entities: int,
    done_events: int,
    cluster: bool,
) -> tuple[int, int]:
    """One round trip: HSET each state, then the progress record (same connection, in order)."""
    fingerprint = view.fingerprint
    done_entities += len(batch)
    done_events += sum(b[2] for b in batch)
    record = _progress_fields(
        run_id, until_us, fingerprint, batch[-1][0], done_entities, done_events
    )
    prog_key = layout.progress_key(view)
    try:
        pipe = client.pipeline(transaction=False)
        for entity, blob, _ in batch:
            pipe.hset(layout.state_key(view, entity), mapping=state_fields(blob, fingerprint))
        if not cluster:
            pipe.hset(prog_key, mapping=record)
        pipe.execute()
        if cluster:  # a cluster pipeline spans nodes without ordering: record progress after
            client.hset(prog_key, mapping=record)
    except redis.exceptions.RedisError as e:
        raise OnlineStoreError(
            f"view '{view.name}': Redis error writing entities {batch[0][0]!r}..{batch[-1][0]!r} "
            f"({e}); rerun to resume"
        ) from e
    return done_entities, done_events


def _sweep(client: Client, layout: OnlineStoreLayout, view: FeatureView, current: set[str]) -> int:
    """Delete state keys of ``view`` whose entity is not in ``current`` (encoded)."""
    stale: list[bytes | str] = []
    deleted = 0
    for k in client.scan_iter(match=layout.state_key_pattern(view), count=_SWEEP_BATCH):
        text = layout.entity_text(k, view)
        if text is not None and text not in current:
            stale.append(k)
            if len(stale) >= _SWEEP_BATCH:
                deleted += _delete(client, stale)
                stale = []
    if stale:
        deleted += _delete(client, stale)
    return deleted


def _delete(client: Client, keys: list[bytes | str]) -> int:
    pipe = client.pipeline(transaction=False)
    for k in keys:  # one DEL per key: keys of different entities may be in different slots
        pipe.delete(k)
    return sum(int(n) for n in pipe.execute())


def _progress_fields(
    run_id: str,
    until_us: int,
    fingerprint: str,
    last: Entity | None,
    entities: int,
    events: int,
) -> HashMapping:
    return {
        "run": run_id,
        "until": str(until_us),
        "fingerprint": fingerprint,
        "last_entity": json.dumps(last),
        "entities": str(entities),
        "events": str(events),
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _file_entry(f: dict[str, Any]) -> dict[str, Any]:
    return {"path": f["path"], "rows": f["rows"], "min_ts": f["min_ts"], "max_ts": f["max_ts"]}


def _run_identity(fingerprint: str, until_us: int, report: SourceReport) -> str:
    """What a resumed run must share with the interrupted one: view, cut-over and input files."""
    files = []
    for f in report.files:
        try:
            st = os.stat(f["path"])
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        files.append([*_file_entry(f).values(), size, mtime])
    blob = json.dumps([fingerprint, until_us, files, report.quarantined], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _decode(raw: Any) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in dict(raw).items()
    }


__all__ = ["MaterializeReport", "materialize", "to_micros"]


def _glob(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]\\" else c for c in text)
