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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import redis

from featurepipe.batch.sources import SourceReport, read_events
from featurepipe.compile.polars_aggs import SEQ
from featurepipe.compile.python_state import ViewProgram
from featurepipe.dsl.definitions import FeatureView
from featurepipe.ir.entity_keys import with_composite_key
from featurepipe.ir.timebase import as_utc, to_epoch_us
from featurepipe.ir.types import DType
from featurepipe.online.errors import OnlineStoreError
from featurepipe.online.state_store import (
    CUTOVER_EVENT_TIME,
    DEFAULT_PREFIX,
    Client,
    Entity,
    MaterializeProgress,
    StateStore,
    ViewMeta,
)

Progress = Callable[[int, int], None]


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
) -> MaterializeReport:
    """Write every entity's state after the events with ``ts < until`` to the online store.

    ``progress(done, total)`` is called once before the first batch and after each batch
    (entities). An exception it raises stops the run, which a later call resumes.

    Input without a single usable event (empty, filtered out, or entirely quarantined) is
    refused before anything in the store changes, unless ``allow_empty``: replacing every live
    state by nothing is almost always a wrong path or a broken export, not an intent.
    A fresh (not resumed) run starts a new store generation (``basis``).
    """
    t0 = time.perf_counter()
    if batch_size < 1:
        raise OnlineStoreError(f"batch_size must be >= 1, got {batch_size}")
    store = StateStore(client, prefix)
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
    run_id = _run_identity(fingerprint, until_us, report)
    fields = list(view.source.fields)
    ts_col = view.source.timestamp
    usable = pl.col(key).is_not_null() & pl.col(ts_col).is_not_null()
    entities_df = lf.filter(usable).select(pl.col(key).unique()).collect()
    if entities_df.height == 0 and not allow_empty:
        files = len(report.files)
        raise OnlineStoreError(
            f"view '{view.name}': no usable event before {until_dt.isoformat()} in {files} "
            f"file(s) ({report.quarantined:,} rows quarantined); refusing to replace the online "
            "state by nothing. Check the source path and the cut-over, or pass --allow-empty"
        )

    try:
        saved = store.read_progress(view)
        if (
            resume
            and saved is not None
            and (saved.run, saved.until, saved.fingerprint) == (run_id, until_us, fingerprint)
        ):
            last = saved.last_entity
            done_entities, done_events = saved.entities, saved.events
        else:
            last, done_entities, done_events = None, 0, 0
            store.new_generation(basis, {view.name: fingerprint})
            # no meta key while running: a worker cannot mistake a partial store for a complete one
            store.start_materialization(
                view, MaterializeProgress(run_id, until_us, fingerprint, None, 0, 0)
            )
    except redis.exceptions.RedisError as e:
        raise OnlineStoreError(f"view '{view.name}': cannot read or reset progress: {e}") from e
    resumed_from = last

    todo_filter = usable if last is None else usable & (pl.col(key) > pl.lit(last))
    fields = list(dict.fromkeys([*fields, key]))  # a composite key is a column of its own
    todo_q = lf.filter(todo_filter).select(*fields, SEQ).sort(key, SEQ)
    skipped_q = lf.select((~usable).sum().alias("skipped"))
    todo, skipped_df = pl.collect_all([todo_q, skipped_q])
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
    state: Any = None  # ViewProgram state, opaque here
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
    except redis.exceptions.RedisError as e:
        raise OnlineStoreError(
            f"view '{view.name}': Redis error writing entities {batch[0][0]!r}..{batch[-1][0]!r} "
            f"({e}); rerun to resume"
        ) from e
    return done_entities, done_events


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


__all__ = ["MaterializeReport", "materialize"]
