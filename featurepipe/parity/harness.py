"""In-process parity: replay an event log through the per-event evaluator and compare every
sampled query with the Polars batch plan, bit for bit.

The log's row order is its arrival order. A query made at some point of the replay is compared
with the batch value over the events that had *arrived* by then (``__arrived``), so out-of-order
events are held to the bi-temporal rule.
"""

from __future__ import annotations

import heapq
import multiprocessing
import os
import queue
import random
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl
import polars.selectors as cs

from featurepipe.batch.sources import SourceReport, read_events
from featurepipe.compile.polars_aggs import ARRIVED, SEQ, TS, BatchProgram
from featurepipe.compile.polars_rows import PL_TYPES, to_series
from featurepipe.compile.python_state import State, ViewProgram, collector_paused
from featurepipe.dsl.definitions import FeatureView, Source
from featurepipe.errors import DataError, ParityError
from featurepipe.ir import nodes as ir
from featurepipe.ir.entity_keys import with_composite_key
from featurepipe.ir.timebase import format_us
from featurepipe.ir.types import DType
from featurepipe.kernels import last_visible

# which events get query points (``_with_draws``)
SAMPLED = "__sampled"


@dataclass
class FeatureResult:
    name: str
    dtype: DType
    compared: int = 0
    mismatched: int = 0
    first: dict[str, Any] | None = None
    # where the first difference comes in an arrival-order replay (to merge parts of a check)
    first_place: int = -1


@dataclass
class ParityReport:
    view: str
    fingerprint: str
    events: int
    queries: int
    skipped_beyond_lateness: int
    skipped_null_entity: int
    features: list[FeatureResult] = field(default_factory=list)
    # seconds of the per-event replay with its queries, and of the batch plan; with several
    # jobs, summed over the processes (which run at once: see seconds_wall)
    seconds_stream: float = 0.0
    seconds_batch: float = 0.0
    # the whole check, end to end, and how many processes shared it
    seconds_wall: float = 0.0
    jobs: int = 1

    @property
    def mismatches(self) -> int:
        return sum(f.mismatched for f in self.features)

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values (``featurepipe parity --json``); the time of a
        first difference as ISO text (``time``) and epoch microseconds (``time_us``)."""
        return {
            "view": self.view,
            "fingerprint": self.fingerprint,
            "ok": self.ok,
            "events": self.events,
            "queries": self.queries,
            "values": self.queries * len(self.features),
            "mismatches": self.mismatches,
            "skipped_beyond_lateness": self.skipped_beyond_lateness,
            "skipped_null_entity": self.skipped_null_entity,
            "seconds_stream": self.seconds_stream,
            "seconds_batch": self.seconds_batch,
            "seconds_wall": self.seconds_wall,
            "jobs": self.jobs,
            "features": [
                {
                    "name": f.name,
                    "type": str(f.dtype),
                    "compared": f.compared,
                    "mismatched": f.mismatched,
                    "first_difference": None if f.first is None else show_first(f.first),
                }
                for f in self.features
            ],
        }


def show_first(first: dict[str, Any]) -> dict[str, Any]:
    """A first difference with its query time as ISO text too (``time``)."""
    return {
        "entity": first["entity"],
        "time": format_us(first["time_us"]),
        "time_us": first["time_us"],
        "arrived": first["arrived"],
        "batch": first["batch"],
        "stream": first["stream"],
    }


def source_log(
    source: Source, *, root: str | Path = ".", path: str | Path | None = None
) -> tuple[pl.DataFrame, SourceReport]:
    """The event log of ``source`` as the batch path reads it: its Parquet files (a file, a
    directory, a glob; relative to ``root``), contract-checked (rows breaking the contract are
    left out and counted in the report), in arrival order (the arrival column, else file then
    row order). Returned as an event log: the contract's fields only, datetimes as UTC
    datetimes, row order = arrival order, ready for ``run_parity`` or a Kafka topic."""
    lf, report = read_events(source, root=root, path=path)
    fields = list(source.fields)
    log = lf.select(fields).collect()
    datetimes = [n for n, (dtype, _) in source.fields.items() if dtype is DType.DATETIME]
    return log.with_columns(pl.col(n).cast(pl.Datetime("us", "UTC")) for n in datetimes), report


def normalize_events(view: FeatureView, events: pl.DataFrame) -> pl.DataFrame:
    """Datetimes to int64 epoch micros (UTC), arrival order as ``__seq``, checks the contract."""
    missing = [f for f in view.source.fields if f not in events.columns]
    if missing:
        raise DataError(
            f"view '{view.name}': event log lacks field(s) {missing} of source '{view.source.name}'"
        )
    ts_col = view.source.timestamp
    nulls = events[ts_col].null_count()
    if nulls:
        row = events.with_row_index("__row").filter(pl.col(ts_col).is_null())["__row"][0]
        raise DataError(
            f"view '{view.name}': {nulls} event(s) have a null '{ts_col}' (first at row {row})"
        )
    out = with_composite_key(events, view.ir.entity_parts).with_columns(
        cs.datetime().dt.replace_time_zone(None).cast(pl.Datetime("us")).cast(pl.Int64)
    )
    return out.with_columns(
        pl.col(ts_col).alias(TS), pl.int_range(pl.len(), dtype=pl.Int64).alias(SEQ)
    )


def _float_bits(s: pl.Series) -> pl.Series:
    """The IEEE bit patterns of a float column (nulls stay null): -0.0 != 0.0, NaN by payload."""
    s = s.cast(pl.Float64)
    bits = pl.Series(s.name, s.fill_null(0.0).to_numpy().astype(np.float64).view(np.int64))
    return pl.select(pl.when(s.is_null()).then(None).otherwise(bits)).to_series()


def run_parity(
    view: FeatureView,
    events: pl.DataFrame,
    *,
    sample: float = 1.0,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    jobs: int = 1,
) -> ParityReport:
    """Replay ``events`` (arrival order) through both paths and compare every query point.

    Query points: at each sampled event's own timestamp just before ingesting it, midway
    between that event and the entity's previous one, and after the log at the last event
    plus each window length (an exact window edge) and plus a day past the longest window.

    The per-event side is the stream worker's and the lookups' own code: ``ViewProgram.ingest``
    for every event, ``ViewProgram.query`` for every query point; every ``LOOKUP_EVERY``-th
    point is also answered as a lookup answers it (a state never queried before; every
    ``BYTES_EVERY``-th decoded afresh from its bytes), and must be the same bit for bit
    (``_as_looked_up``). Answers are collected as
    columns and compared with the batch frame by Polars, one column per feature.

    ``jobs`` above 1 splits the entities into parts, each checked whole (replay, batch plan,
    comparison) by this process or one of ``jobs - 1`` worker processes: entities are
    independent on both paths, every event keeps its place in the whole log (``__seq``, the
    query points' ``__arrived``) and which events are sampled is drawn over the whole log
    first, so the report is the one a single process gives, first differences included. The
    workers are spawned (they import the caller's main module): a script calling this with
    ``jobs`` above 1 keeps its work under ``if __name__ == "__main__":``, as multiprocessing
    requires."""
    started = time.perf_counter()
    spec = _Spec.of(view)
    ev = _with_draws(spec, normalize_events(view, events), sample=sample, seed=seed)
    parts = _split(spec, ev, jobs) if jobs > 1 else [ev]
    if len(parts) == 1:
        checked = [_check(spec, ev, ev.height, progress)]
    else:
        checked = _check_in_processes(spec, parts, ev.height, jobs, progress)
    report = ParityReport(
        view=view.name,
        fingerprint=view.fingerprint,
        events=ev.height,
        queries=sum(c.queries for c in checked),
        skipped_beyond_lateness=sum(c.skipped for c in checked),
        skipped_null_entity=ev[spec.key].null_count(),
        seconds_stream=sum(c.seconds_stream for c in checked),
        seconds_batch=sum(c.seconds_batch for c in checked),
        jobs=min(jobs, len(parts)),
    )
    report.features = _merged([c.features for c in checked])
    report.seconds_wall = time.perf_counter() - started
    if progress is not None:
        progress(ev.height)  # every event checked (events without a key are skipped)
    return report


# below this many events a second process costs more than it saves (starting one and importing
# Polars and featurepipe into it takes about half a second)
EVENTS_PER_JOB = 50_000


def auto_jobs(events: int) -> int:
    """Processes for checking a log of ``events`` events: one per usable core, at most one per
    ``EVENTS_PER_JOB`` events."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, events // EVENTS_PER_JOB))


@dataclass(frozen=True)
class _Spec:
    """What checking a view needs of it, picklable for a worker process (a view's schema
    classes may live in a module that a fresh process cannot import)."""

    name: str
    key: str
    fields: tuple[str, ...]
    timestamp: str
    ir: ir.ViewIR

    @classmethod
    def of(cls, view: FeatureView) -> _Spec:
        return cls(
            view.name, view.entity.key, tuple(view.source.fields), view.source.timestamp, view.ir
        )


@dataclass
class _Checked:
    """One part's share of a report: its query points, per-feature counts and first
    differences (with their place in the arrival-order replay, to merge parts), and times."""

    queries: int
    skipped: int
    features: list[FeatureResult]
    seconds_stream: float
    seconds_batch: float


def _with_draws(spec: _Spec, ev: pl.DataFrame, *, sample: float, seed: int) -> pl.DataFrame:
    """Which events get query points (``SAMPLED``): one draw of ``random.Random(seed)`` per
    event with an entity key, in arrival order; events without a key get none."""
    has_key = ev[spec.key].is_not_null()
    draw = random.Random(seed).random
    drawn = iter([draw() < sample for _ in range(int(has_key.sum()))])
    flags = [next(drawn) if k else False for k in has_key.to_list()]
    return ev.with_columns(pl.Series(SAMPLED, flags, dtype=pl.Boolean))


def _split(spec: _Spec, ev: pl.DataFrame, jobs: int) -> list[pl.DataFrame]:
    """The keyed events in about ``2 * jobs`` parts of whole entities, balanced by event count
    (largest entities first, each to the lightest part), each in arrival order; fewer when the
    log has fewer entities. Two parts per process let a process done early take a third (an
    entity's replay costs more than its share of the events when its windows hold many), and
    stagger the batch plans, which use every core (one part per process was 5% slower on the
    generated log, whose entities are all small: benchmarks/RESULTS.md)."""
    keyed = ev.filter(pl.col(spec.key).is_not_null())
    sizes = keyed.group_by(spec.key).agg(pl.len().alias("__n"), pl.col(SEQ).min().alias("__f"))
    sizes = sizes.sort(["__n", "__f"], descending=[True, False])
    count = min(2 * jobs, sizes.height)
    if count <= 1:
        return [ev]
    loads = [(0, p) for p in range(count)]
    heapq.heapify(loads)
    owner: list[int] = []
    for n in sizes["__n"].to_list():
        load, p = heapq.heappop(loads)
        owner.append(p)
        heapq.heappush(loads, (load + n, p))
    parts = sizes.select(spec.key).with_columns(pl.Series("__part", owner, dtype=pl.Int64))
    tagged = keyed.join(parts, on=spec.key, how="left", maintain_order="left")
    biggest_first = sorted(loads, reverse=True)  # the heaviest part is submitted first
    return [tagged.filter(pl.col("__part") == p).drop("__part") for _, p in biggest_first]


def _check(
    spec: _Spec,
    ev: pl.DataFrame,
    total: int,
    progress: Callable[[int], None] | None,
    *,
    beside: bool = True,
) -> _Checked:
    """Replay, batch plan and comparison of the events ``ev`` (whole entities of a log of
    ``total`` events, in arrival order, with their ``SEQ`` and ``SAMPLED``).

    The query points are decided first (``_points``), so that with ``beside`` the batch plan
    runs in a thread beside the replay: Polars works outside the interpreter lock, on the
    cores the replay leaves idle (not when processes share the cores: ``_check_part``); if
    the plan fails, the replay stops at its next progress step and the plan's error is
    raised."""
    prog = ViewProgram(spec.ir)
    with collector_paused():
        order = _by_entity(spec, ev)
        points = _points(spec, prog, order, total)
        batch_done: list[pl.DataFrame] = []
        failed: list[BaseException] = []
        spent: list[float] = []
        stop = threading.Event()

        def run_batch() -> None:
            t1 = time.perf_counter()
            try:
                queries = _queries(spec, prog, order, points)
                batch_done.append(BatchProgram(spec.ir).features(ev.drop(SAMPLED).lazy(), queries))
            except BaseException as e:  # raised again by the caller
                failed.append(e)
                stop.set()
            spent.append(time.perf_counter() - t1)

        batch_thread = threading.Thread(target=run_batch, name="featurepipe-parity-batch")
        if beside:
            batch_thread.start()
        try:
            t0 = time.perf_counter()
            replay = _replay(
                spec, prog, order, total=total, progress=progress, points=points, stop=stop
            )
            seconds_stream = time.perf_counter() - t0
        except _Stopped:
            pass  # the batch plan's error is raised below
        finally:
            if beside:
                batch_thread.join()
        if not beside:
            run_batch()
        if failed:
            raise failed[0]
        features = compare(
            spec.ir,
            batch_done[0],
            replay.answers,
            replay.keys,
            replay.times,
            replay.arrived,
            places=replay.places,
        )
        checked = _Checked(
            queries=len(replay.answers),
            skipped=replay.skipped,
            features=features,
            seconds_stream=seconds_stream,
            seconds_batch=spent[0],
        )
        del replay  # freed before the collector is back: it would scan every answer once
    return checked


def _merged(parts: list[list[FeatureResult]]) -> list[FeatureResult]:
    """Per feature: the parts' counts summed, the first difference of the part whose first
    difference comes first in the arrival-order replay."""
    merged = []
    for same in zip(*parts, strict=True):
        out = FeatureResult(same[0].name, same[0].dtype)
        out.compared = sum(f.compared for f in same)
        out.mismatched = sum(f.mismatched for f in same)
        found = [f for f in same if f.first is not None]
        if found:
            best = min(found, key=lambda f: f.first_place)
            out.first, out.first_place = best.first, best.first_place
        merged.append(out)
    return merged


def _check_in_processes(
    spec: _Spec,
    parts: list[pl.DataFrame],
    total: int,
    jobs: int,
    progress: Callable[[int], None] | None,
) -> list[_Checked]:
    """Each part through ``_check``: ``jobs - 1`` fresh processes (spawned: Polars' thread
    pool does not survive a fork) and this one, which has everything imported and starts at
    once (a spawned process takes about a second to import Polars and featurepipe). Parts
    are taken biggest first, each by whichever is free first (``_Parts``); the workers'
    progress comes back over a queue. The first part to fail ends the check: its error is
    raised here and the workers still running are stopped."""
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Queue()
    counts = [0] * len(parts)
    results: list[_Checked | None] = [None] * len(parts)
    with _pool(min(jobs, len(parts)) - 1, ctx, done) as pool:
        todo = _Parts(len(parts))

        def hand_out(finished: Future[_Checked] | None = None) -> None:
            # a worker is free (or starts): it takes the next part; called from the pool's
            # result thread when a part is done
            if finished is not None and (finished.cancelled() or finished.exception()):
                return  # no new part: the check ends (with this error)
            p = todo.take(worker=True)
            if p is not None:
                try:
                    running = pool.submit(_check_part, spec, parts[p], total, p)
                except (ValueError, RuntimeError):  # the pool is stopped: the check ended
                    return
                todo.running(p, running)
                running.add_done_callback(hand_out)

        def heard() -> None:
            """The workers' progress passed on; a worker's failure raised."""
            while True:
                try:
                    p, n = done.get_nowait()
                except queue.Empty:
                    break
                counts[p] = max(counts[p], n)
            if progress is not None:
                progress(sum(counts))
            failed = todo.failure()
            if failed is not None:
                raise _failed(failed)

        mine = todo.take()  # the biggest part: this process starts on it at once
        for _ in range(min(jobs - 1, len(parts) - 1)):
            hand_out()
        while mine is not None:

            def own(n: int, p: int = mine) -> None:
                counts[p] = n
                heard()

            results[mine] = _check(spec, parts[mine], total, own, beside=False)
            counts[mine] = parts[mine].height
            heard()
            mine = todo.take()
        while not todo.finished():
            pending = todo.pending()
            if pending:
                wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            else:  # a part just handed to a worker, its future not yet recorded
                time.sleep(0.01)
            heard()
        heard()  # a worker's failure that ended the wait raised here, not after the others
        for p, f in todo.futures():
            error = f.exception()
            if error is not None:
                raise _failed(error)
            results[p] = f.result()
    checked = [r for r in results if r is not None]
    assert len(checked) == len(parts), "a part of the check was not checked"
    return checked


class _Parts:
    """The parts of a check not yet taken (biggest first) and the workers' futures, shared by
    this process's loop and the pool's result thread."""

    def __init__(self, count: int) -> None:
        self._lock = threading.Lock()
        self._next = 0
        self._count = count
        self._handed: set[int] = set()  # parts taken by a worker, their future maybe not yet here
        self._futures: dict[int, Future[_Checked]] = {}

    def take(self, *, worker: bool = False) -> int | None:
        with self._lock:
            if self._next == self._count:
                return None
            self._next += 1
            if worker:
                self._handed.add(self._next - 1)
            return self._next - 1

    def running(self, p: int, f: Future[_Checked]) -> None:
        with self._lock:
            self._futures[p] = f

    def futures(self) -> list[tuple[int, Future[_Checked]]]:
        with self._lock:
            return list(self._futures.items())

    def pending(self) -> list[Future[_Checked]]:
        with self._lock:
            return [f for f in self._futures.values() if not f.done()]

    def failure(self) -> BaseException | None:
        with self._lock:
            futures = list(self._futures.values())
        for f in futures:
            if f.done() and f.exception() is not None:
                return f.exception()
        return None

    def finished(self) -> bool:
        """Every part taken and every worker's part done, or one failed (the caller raises
        its error)."""
        with self._lock:
            futures = list(self._futures.values())
            waiting = self._next < self._count or len(self._futures) < len(self._handed)
        failed = any(f.done() and f.exception() is not None for f in futures)
        return failed or (not waiting and all(f.done() for f in futures))


class _SpawnPool:
    """Worker processes taking calls as futures. A ``ProcessPoolExecutor``: a worker that dies
    (killed, out of memory) fails every call not yet done with ``BrokenProcessPool``, where a
    ``multiprocessing.Pool`` starts a new worker and leaves the lost call unanswered for ever.
    Leaving the ``with`` block stops the workers at once, whether their calls are done or not
    (the executor's own shutdown would wait for the running ones)."""

    def __init__(self, jobs: int, ctx: Any, done: Any) -> None:
        self._pool = ProcessPoolExecutor(
            jobs, mp_context=ctx, initializer=_init_part, initargs=(done,)
        )

    def submit(self, fn: Callable[..., _Checked], *args: Any) -> Future[_Checked]:
        return self._pool.submit(fn, *args)

    def __enter__(self) -> _SpawnPool:
        return self

    def __exit__(self, *exc: object) -> None:
        workers = list((self._pool._processes or {}).values())  # started on demand
        self._pool.shutdown(wait=False, cancel_futures=True)
        for w in workers:
            w.terminate()
        for w in workers:
            w.join()


def _pool(jobs: int, ctx: Any, done: Any) -> _SpawnPool | Executor:
    return _SpawnPool(jobs, ctx, done)


def _failed(error: BaseException) -> BaseException:
    """A worker's error as the check raises it: a worker process that died names the fault."""
    if isinstance(error, BrokenProcessPool):
        out = ParityError(
            "a worker process of the check ended abruptly (killed, out of memory, or it could "
            "not start or send its result back); the check is incomplete: run it again, with "
            "fewer --jobs if memory is short"
        )
        out.__cause__ = error
        return out
    return error


_progress_queue: Any = None


def _init_part(done: Any) -> None:
    global _progress_queue
    _progress_queue = done


def _check_part(spec: _Spec, ev: pl.DataFrame, total: int, p: int) -> _Checked:
    """``_check`` in a worker process, its progress (events replayed) sent to the parent."""
    done = _progress_queue

    def progress(n: int) -> None:
        if done is not None:
            done.put((p, n))

    checked = _check(spec, ev, total, progress, beside=False)
    progress(ev.height)
    return checked


@dataclass
class _Replay:
    """The query points of a replay (entity, T, arrival position) and the per-event answers,
    in the order of an arrival-order replay (see ``_replay``)."""

    keys: list[Any]
    times: list[int]
    arrived: list[int]
    answers: list[tuple[Any, ...]]
    skipped: int
    # each point's place in an arrival-order replay of the whole log (sorted)
    places: list[int] = field(default_factory=list)


@dataclass
class _Points:
    """The query points of a replay, in arrival-order replay order (``places``, numbered over
    the whole log), each with when the entity-by-entity replay asks it (``at``: ``2 * i``
    before ingesting row ``i`` of ``_by_entity``, ``2 * i + 1`` after) and the row whose
    request fields it is answered with (``rows``; -1: none, the points after the log)."""

    keys: list[Any]
    times: list[int]
    arrived: list[int]
    places: list[int]
    at: list[int]
    rows: list[int]
    skipped: int


def _by_entity(spec: _Spec, ev: pl.DataFrame) -> pl.DataFrame:
    """The keyed events entity by entity (entities in order of first arrival, each one's
    events in arrival order): the source fields, the key, ``SEQ``, ``SAMPLED``."""
    key = spec.key
    names = list(dict.fromkeys([*spec.fields, key]))  # a composite key: its own column
    keyed = ev.select(*names, SEQ, SAMPLED).filter(pl.col(key).is_not_null())
    first = pl.col(SEQ).min().over(key).alias("__first")
    return keyed.with_columns(first).sort("__first", SEQ).drop("__first")


def _points(spec: _Spec, prog: ViewProgram, order: pl.DataFrame, total: int) -> _Points:
    """Which query points the replay asks (see ``run_parity``), decided from the events alone:
    at a sampled event's own time and midway from the entity's newest earlier event, then after
    the entity's last event (``QueryTail``), each only when the state can answer it, i.e. at or
    after its newest event minus the lateness (``ViewProgram.can_answer``; the replay's
    ``query`` refuses any other with ``StateError``)."""
    key, lateness, tail = spec.key, prog.lateness, QueryTail(spec.ir)
    keys: list[Any] = []
    times: list[int] = []
    arrived: list[int] = []
    places: list[int] = []
    at: list[int] = []
    rows: list[int] = []
    skipped = 0
    n = total

    def ask(e: Any, t: int, seq: int, place: int, when: int, row: int) -> None:
        keys.append(e)
        times.append(t)
        arrived.append(seq)
        places.append(place)
        at.append(when)
        rows.append(row)

    def after(e: Any, i: int, first: int, newest: int) -> None:
        nonlocal skipped
        for j, t in enumerate(tail(newest)):
            if t >= newest - lateness:
                ask(e, t, n, 2 * n + first * tail.points + j, 2 * i + 1, -1)
            else:
                skipped += 1

    columns = (order[key].to_list(), order[spec.timestamp].to_list(), order[SEQ].to_list())
    e: Any = None
    first = newest = 0
    for i, (k, t, seq, asked) in enumerate(zip(*columns, order[SAMPLED].to_list(), strict=True)):
        if i == 0 or k != e:  # the entity's first event: no state yet, any time is answered
            if i:
                after(e, i - 1, first, newest)
            e, first, newest = k, seq, t
            if asked:
                ask(e, t, seq, 2 * seq, 2 * i, i)
            continue
        if asked:
            if t >= newest - lateness:
                ask(e, t, seq, 2 * seq, 2 * i, i)
            else:
                skipped += 1
            if newest != t:
                mid = (newest + t) // 2
                if mid >= newest - lateness:
                    ask(e, mid, seq, 2 * seq + 1, 2 * i, i)
                else:
                    skipped += 1
        if t > newest:
            newest = t
    if order.height:
        after(e, order.height - 1, first, newest)
    return _Points(keys, times, arrived, places, at, rows, skipped)


def _queries(spec: _Spec, prog: ViewProgram, order: pl.DataFrame, points: _Points) -> pl.DataFrame:
    """The batch plan's query frame of ``points``, in arrival-order replay order: entity, T,
    ``ARRIVED`` and the request fields (``fp.request``): a point of an event is answered with
    the event's own field of that name and type (scoring the event), others with nulls."""
    key = spec.key
    key_type = order.schema[key]
    sort = np.argsort(np.array(points.places, dtype=np.int64), kind="stable")
    queries = pl.DataFrame(
        {
            key: pl.Series(points.keys, dtype=key_type),
            TS: points.times,
            ARRIVED: points.arrived,
        },
        schema={key: key_type, TS: pl.Int64, ARRIVED: pl.Int64},
    )
    rows = pl.Series(points.rows, dtype=pl.Int64)
    for name, dtype, scored in _request_fields(spec, prog):
        if scored:
            both = pl.DataFrame({"v": order[name].gather(rows.clip(lower_bound=0)), "r": rows})
            values = both.select(pl.when(pl.col("r") >= 0).then(pl.col("v"))).to_series()
        else:
            values = pl.repeat(None, len(points.rows), eager=True)
        queries = queries.with_columns(values.cast(PL_TYPES[dtype]).alias(name))
    return queries[sort]


def _request_fields(spec: _Spec, prog: ViewProgram) -> list[tuple[str, DType, bool]]:
    """The view's request fields (``fp.request``) and whether a query point answers each with
    the event's own source field (one of that name and type: the point scores the event) or
    with null."""
    fields = dict(spec.ir.fields)
    return [(name, dtype, fields.get(name) is dtype) for name, dtype in prog.request_fields]


class _Stopped(Exception):
    """The replay was asked to stop (the batch plan beside it failed)."""


# every LOOKUP_EVERY-th query point is also answered the way a lookup answers it, from the
# state as first queried (``_as_looked_up``); every BYTES_EVERY-th from its bytes decoded afresh
LOOKUP_EVERY = 32
BYTES_EVERY = 512


def _as_looked_up(
    spec: _Spec,
    state: State,
    t: int,
    request: dict[str, Any] | None,
    answer: tuple[Any, ...],
    prog: ViewProgram,
    entity: Any,
    from_bytes: bool,
) -> None:
    """Check that the state, queried as a lookup queries it, answers at ``t`` exactly (bit
    for bit: ``_canonical``) what the replay's state answered. The replay
    queries a state after every event, and the query keeps on it what makes the next query
    cheap (running sums, counted values: ``compile.python_state``); a lookup decodes a state
    and queries it once, folding the windows. The first is compared with the batch plan at
    every point, the second through this check: a difference is a defect of featurepipe, not
    of the definitions, and stops the check. ``from_bytes``: the state is encoded and decoded
    first (``dumps``, ``loads``), as the lookup reads it from Redis; else a state holding the
    same buffer and accumulators, never queried, answers."""
    if from_bytes:
        fresh = prog.loads(prog.dumps(state))
    else:
        fresh = State(state.horizon, state.max_ts, state.buffer, state.compacted, state.tiles)
    looked_up = prog.query(fresh, t, request)
    if not _identical(looked_up, answer):
        raise ParityError(
            f"view '{spec.name}', entity {entity!r}, T={format_us(t)}: the state as a lookup "
            f"reads it{' (decoded from its bytes)' if from_bytes else ''} answers "
            f"{looked_up!r}, the replayed state {answer!r}"
        )


_encode = msgspec.msgpack.Encoder().encode


def _identical(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Two answers bit for bit (``_canonical``). An answer holds None, bools, ints, floats,
    strings, lists and maps; equal msgpack bytes of two such say so at once: a float travels
    as its 8 bytes, ints and floats as different types, maps in their order (answers whose
    maps list their keys in another order are compared canonically)."""
    try:
        if _encode(a) == _encode(b):
            return True
    except (TypeError, ValueError, OverflowError):  # an int over 64 bits, a lone surrogate
        pass
    return bool(_canonical(a) == _canonical(b))


def _canonical(v: Any) -> Any:
    """``v`` compared bit for bit: a float as its bits (-0.0 is not 0.0), a map's entries in
    any order (a decoded accumulator may list its keys in another order than the one it was
    built in)."""
    if isinstance(v, float):
        return ("float", struct.pack("<d", v))
    if isinstance(v, dict):
        return ("map", sorted((repr(k), _canonical(x)) for k, x in v.items()))
    if isinstance(v, list | tuple):
        return [_canonical(x) for x in v]
    return v


def _replay(
    spec: _Spec,
    prog: ViewProgram,
    order: pl.DataFrame,
    *,
    total: int,
    progress: Callable[[int], None] | None,
    points: _Points | None = None,
    stop: threading.Event | None = None,
) -> _Replay:
    """Every event through ``prog.ingest``, every query point (``_points``) through
    ``prog.query``, at the point of the replay where it comes (see ``run_parity``).

    Entities are independent: an entity's state sees its own events only, in arrival order,
    each with its arrival position as ``seq``, exactly as in a replay of the whole log in
    arrival order (the stream worker's order). So the replay runs entity by entity
    (``_by_entity``: ``order``): the state it works on stays in the processor's caches, about
    1.6x faster on the 25-feature view than hopping to another entity's state at every event.
    What an arrival-order replay decides globally is decided before (``SAMPLED``: which events
    get query points). The answers are then put back into arrival-order replay order: an
    event's own point, then its midpoint, event by event, then the after-the-log points entity
    by entity (``places``, numbered over the whole log of ``total`` events, so parts of it
    merge)."""
    if points is None:
        points = _points(spec, prog, order, total)
    key = spec.key
    names = list(dict.fromkeys([*spec.fields, key]))
    key_at = names.index(key)
    request = _request_fields(spec, prog)
    request_names = [name for name, _, _ in request]
    from_event = [names.index(name) if scored else None for name, _, scored in request]
    ingest, query, new_state = prog.ingest, prog.query, prog.new_state
    answers: list[tuple[Any, ...]] = []
    times, at = points.times, points.at
    j, asked = 0, len(at)
    st: Any = None
    e: Any = None
    rows = order.select(names).iter_rows()
    for i, (row, seq) in enumerate(zip(rows, order[SEQ].to_list(), strict=True)):
        if i == 0 or row[key_at] != e:
            e, st = row[key_at], None
        while j < asked and at[j] == 2 * i:
            given = None
            if request_names:
                req = [None if f is None else row[f] for f in from_event]
                given = dict(zip(request_names, req, strict=True))
            answers.append(query(st, times[j], given))
            if j % LOOKUP_EVERY == 0 and st is not None:
                _as_looked_up(spec, st, times[j], given, answers[-1], prog, e, j % BYTES_EVERY == 0)
            j += 1
        if st is None:
            st = new_state()
        ingest(st, dict(zip(names, row, strict=True)), seq)
        while j < asked and at[j] == 2 * i + 1:
            answers.append(query(st, times[j]))
            if j % LOOKUP_EVERY == 0:
                _as_looked_up(spec, st, times[j], None, answers[-1], prog, e, j % BYTES_EVERY == 0)
            j += 1
        if i % 10_000 == 0:
            if progress is not None:
                progress(i)
            if stop is not None and stop.is_set():
                raise _Stopped
    if j != asked:  # the points are asked as the events pass: all of them, in their order
        raise ParityError(f"view '{spec.name}': {asked - j} query point(s) never asked")
    sort = np.argsort(np.array(points.places, dtype=np.int64), kind="stable").tolist()
    return _Replay(
        keys=[points.keys[i] for i in sort],
        times=[times[i] for i in sort],
        arrived=[points.arrived[i] for i in sort],
        answers=[answers[i] for i in sort],
        skipped=points.skipped,
        places=[points.places[i] for i in sort],
    )


def compare(
    view: ir.ViewIR,
    batch: pl.DataFrame,
    expected: list[tuple[Any, ...]],
    q_key: list[Any],
    q_ts: list[int],
    q_arr: list[int],
    *,
    places: list[int] | None = None,
) -> list[FeatureResult]:
    """Per feature: values from the per-event side (one tuple per query) vs the batch frame,
    bit for bit; the per-event answers are turned into columns once, compared by Polars.
    ``places``: each query's place in the replay order (``FeatureResult.first_place``), by
    default its index."""
    features = view.features
    columns: list[tuple[Any, ...]] = (
        list(zip(*expected, strict=True)) if expected else [() for _ in features]
    )
    results = []
    for j, feat in enumerate(features):
        dtype = feat.expr.dtype
        stream_col = to_series(feat.name, columns[j], dtype)
        batch_col = batch[feat.name]
        if dtype.is_collection:  # element by element, floats by their bits
            pairs = zip(batch_col.to_list(), stream_col.to_list(), strict=True)
            same = pl.Series([identical(a, b) for a, b in pairs], dtype=pl.Boolean)
        elif dtype is DType.FLOAT:
            same = _float_bits(batch_col).eq_missing(_float_bits(stream_col))
        else:
            same = batch_col.cast(PL_TYPES[dtype]).eq_missing(stream_col)
        bad = (~same).arg_true()
        result = FeatureResult(feat.name, dtype, compared=len(expected), mismatched=bad.len())
        if bad.len():
            i = int(bad[0])
            result.first = {
                "entity": q_key[i],
                "time_us": q_ts[i],
                "arrived": q_arr[i],
                "batch": _show(batch_col[i]),
                "stream": _show(expected[i][j]),
            }
            result.first_place = i if places is None else places[i]
        results.append(result)
    return results


def identical(a: Any, b: Any) -> bool:
    """Bit for bit: floats by their IEEE bits (-0.0 is not 0.0), lists and maps (as lists of
    {key, value} entries) element by element, in order."""
    if type(a) is float and type(b) is float:
        return struct.pack("<d", a) == struct.pack("<d", b)
    if type(a) is list and type(b) is list:
        return len(a) == len(b) and all(map(identical, a, b))
    if type(a) is dict and type(b) is dict:
        return list(a) == list(b) and all(identical(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v!r} (0x{struct.unpack('<Q', struct.pack('<d', v))[0]:016x})"
    return repr(v)


class QueryTail:
    """Query times after an entity's newest event: where each window ends for it (the
    newest event's last visible instant, and the next for a hopped window, whose edge is a
    hop boundary), and past every window."""

    def __init__(self, view: ir.ViewIR) -> None:
        self.spans = sorted({a.span for a in view.aggs if a.span is not None})
        self.beyond = view.max_window_us + 86_400_000_000
        self.points = len(self(0))

    def __call__(self, newest: int) -> list[int]:
        out: list[int] = []
        for w, h in self.spans:
            edge = last_visible(newest, w, h)
            out += [edge] if h == 1 else [edge, edge + 1]
        return [*out, newest + self.beyond]
