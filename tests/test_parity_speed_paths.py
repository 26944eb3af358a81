"""The in-process parity harness against a naive reference: identical reports.

``reference_parity`` below is the harness as it was before it was made faster, written out
plainly: it shares nothing with ``featurepipe.parity.harness`` beyond the view's compiled
programs (``ViewProgram`` per event, ``BatchProgram`` in batch). Both run on seeded generated
logs with null fields and null entity keys, equal timestamps, out-of-order arrival (some events
later than the lateness, whose query points are skipped), int and str entity keys and several
views; every number of the report must be equal: events, queries, skipped points, per-feature
counts and first differences. A planted one-ulp difference must still be found, identically.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
import random
import signal
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import featurepipe as fp
from featurepipe import kernels
from featurepipe.compile.polars_aggs import ARRIVED, SEQ, TS, BatchProgram
from featurepipe.compile.python_state import ViewProgram
from featurepipe.dsl.definitions import FeatureView
from featurepipe.errors import ParityError
from featurepipe.ir.types import DType
from featurepipe.parity import harness
from featurepipe.parity.harness import (
    EVENTS_PER_JOB,
    ParityReport,
    _by_entity,
    _replay,
    _Spec,
    _split,
    _with_draws,
    auto_jobs,
    normalize_events,
    run_parity,
)
from tests.schema import SCHEMA, entity, source

BASE = datetime(2026, 3, 1, tzinfo=UTC)


# -- the reference ------------------------------------------------------------------------------


def _bits(v: Any) -> Any:
    return None if v is None else struct.unpack("<q", struct.pack("<d", float(v)))[0]


def _text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v!r} (0x{struct.unpack('<Q', struct.pack('<d', v))[0]:016x})"
    return repr(v)


def _normalized(view: FeatureView, events: pl.DataFrame) -> pl.DataFrame:
    datetimes = [c for c, t in events.schema.items() if isinstance(t, pl.Datetime)]
    ev = events.with_columns(
        pl.col(c).dt.replace_time_zone(None).cast(pl.Datetime("us")).cast(pl.Int64)
        for c in datetimes
    )
    return ev.with_columns(
        pl.col(view.source.timestamp).alias(TS), pl.int_range(pl.len(), dtype=pl.Int64).alias(SEQ)
    )


def reference_points(
    view: FeatureView, ev: pl.DataFrame, *, sample: float = 1.0, seed: int = 0
) -> tuple[list[tuple[Any, int, int]], list[tuple[Any, ...]], int, int]:
    """(entity, T, arrived) of every query point asked, in the order asked; the per-event
    answers; the points skipped; the events without an entity key."""
    key, ts_col = view.entity.key, view.source.timestamp
    prog = ViewProgram(view.ir)
    rng = random.Random(seed)
    names = list(view.source.fields)
    states: dict[Any, Any] = {}
    last_ts: dict[Any, int] = {}
    asked: list[tuple[Any, int, int]] = []
    answers: list[tuple[Any, ...]] = []
    skipped = 0
    null_entity = 0

    def ask(e: Any, t: int, arrived: int) -> None:
        nonlocal skipped
        st = states.get(e)
        if st is not None and not prog.can_answer(st, t):
            skipped += 1
            return
        asked.append((e, t, arrived))
        answers.append(prog.query(st, t))

    for seq, row in enumerate(ev.select(names).iter_rows()):
        event = dict(zip(names, row, strict=True))
        e = event[key]
        if e is None:
            null_entity += 1
            continue
        t = event[ts_col]
        if rng.random() < sample:
            ask(e, t, seq)
            prev = last_ts.get(e)
            if prev is not None and prev != t:
                ask(e, (prev + t) // 2, seq)
        if e not in states:
            states[e] = prog.new_state()
        prog.ingest(states[e], event, seq)
        if e not in last_ts or t > last_ts[e]:
            last_ts[e] = t
    windows = sorted({a.window_us for a in view.ir.aggs if a.window_us is not None})
    for e, t in last_ts.items():
        for w in [*windows, view.ir.max_window_us + 86_400_000_000]:
            ask(e, t + w, ev.height)
    return asked, answers, skipped, null_entity


def reference_parity(
    view: FeatureView, events: pl.DataFrame, *, sample: float = 1.0, seed: int = 0
) -> tuple[Any, ...]:
    """The report's numbers, computed the plain way: one event at a time in arrival order,
    every query point asked when it comes, every value compared in a Python loop."""
    key = view.entity.key
    ev = _normalized(view, events)
    asked, answers, skipped, null_entity = reference_points(view, ev, sample=sample, seed=seed)
    queries = pl.DataFrame(
        {
            key: pl.Series([q[0] for q in asked], dtype=ev.schema[key]),
            TS: pl.Series([q[1] for q in asked], dtype=pl.Int64),
            ARRIVED: pl.Series([q[2] for q in asked], dtype=pl.Int64),
        }
    )
    batch = BatchProgram(view.ir).features(ev.lazy(), queries)
    features = []
    for j, feat in enumerate(view.ir.features):
        dtype = feat.expr.dtype
        shown = batch[feat.name].to_list()
        compared = batch[feat.name]
        if dtype is DType.DATETIME:
            compared = compared.cast(pl.Int64)
        values = compared.to_list()
        mismatched = 0
        first = None
        for i, (b, s) in enumerate(zip(values, (a[j] for a in answers), strict=True)):
            same = _bits(b) == _bits(s) if dtype is DType.FLOAT else b == s
            if not same:
                mismatched += 1
                if first is None:
                    e, t, arrived = asked[i]
                    first = {
                        "entity": e,
                        "time_us": t,
                        "arrived": arrived,
                        "batch": _text(shown[i]),
                        "stream": _text(s),
                    }
        features.append((feat.name, str(dtype), len(answers), mismatched, first))
    return (ev.height, len(answers), skipped, null_entity, features)


def numbers(report: ParityReport) -> tuple[Any, ...]:
    features = [(f.name, str(f.dtype), f.compared, f.mismatched, f.first) for f in report.features]
    return (
        report.events,
        report.queries,
        report.skipped_beyond_lateness,
        report.skipped_null_entity,
        features,
    )


# -- generated logs and views -------------------------------------------------------------------


class Rating(BaseModel):
    userId: int | None
    movieId: int
    rating: float | None
    tag: str | None
    ts: datetime


RATING_SCHEMA = {
    "userId": pl.Int64(),
    "movieId": pl.Int64(),
    "rating": pl.Float64(),
    "tag": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
}
ratings = fp.Source("ratings", schema=Rating, timestamp="ts")


@fp.feature_view(entity=entity, source=source, lateness="2h")
def things(t):  # type: ignore[no-untyped-def]
    x = t.x.fill_null(0.0)
    n_1h = fp.count(window="1h")
    return {
        "n_1h": n_1h,
        "n_total": fp.count(),
        "x_sum_1d": fp.sum(x, window="1d", default=0.0),
        "x_mean_6h": fp.mean(t.x, window="6h"),
        "x_std_1d": fp.std(t.x, window="1d"),
        "x_min_1d": fp.min(t.x, window="1d"),
        "x_max": fp.max(t.x),
        "n_sum_6h": fp.sum(t.n, window="6h"),
        "b_count_1d": fp.count(window="1d", where=t.b),
        "distinct_s_1d": fp.count_distinct(t.s, window="1d"),
        "distinct_x": fp.count_distinct(t.x),
        "first_ts": fp.first(t.ts),
        "last_s": fp.last(t.s),
        "last_n_6h": fp.last(t.n, window="6h"),
        "ratio": fp.feature("n_1h") / (fp.feature("n_total") + 1),
    }


@fp.feature_view(entity=fp.Entity("user", key="userId"), source=ratings, lateness="1h")
def by_user(t):  # type: ignore[no-untyped-def]
    return {
        "n_total": fp.count(),
        "mean_rating_1d": fp.mean(t.rating, window="1d"),
        "distinct_movies": fp.count_distinct(t.movieId),
        "high_3h": fp.count(window="3h", where=t.rating >= 4.0),
        "last_movie": fp.last(t.movieId),
    }


@fp.feature_view(entity=fp.Entity("movie", key="movieId"), source=ratings, lateness="30m")
def by_movie(t):  # type: ignore[no-untyped-def]
    return {
        "n_total": fp.count(),
        "rating_sum": fp.sum(t.rating, default=0.0),
        "distinct_tags": fp.count_distinct(t.tag),
    }


@fp.feature_view(entity=fp.Entity("tag", key="tag"), source=ratings, lateness="1h")
def by_tag(t):  # type: ignore[no-untyped-def]
    return {"n_2h": fp.count(window="2h"), "var_2h": fp.var(t.rating, window="2h")}


X_VALUES = [None, 0.0, -0.0, 1.5, -2.25, 0.1, 1e300, -1e300, math.inf, math.nan, 3.0, 1e-310]


def _arrival(rng: random.Random, n: int) -> tuple[list[datetime], list[int]]:
    """Event times over three days, most in 10-minute steps (many ties), some with an odd
    microsecond, and an arrival order: by time, with a tenth of the events up to four hours
    late."""
    times = sorted(
        BASE
        + timedelta(minutes=10 * rng.randrange(432))
        + timedelta(microseconds=rng.randrange(1, 10**6) if rng.random() < 0.2 else 0)
        for _ in range(n)
    )
    delays = [rng.uniform(0, 4 * 3600) if rng.random() < 0.1 else 0.0 for _ in range(n)]
    order = sorted(range(n), key=lambda i: times[i].timestamp() + delays[i])
    return times, order


def thing_log(seed: int, n: int = 300) -> pl.DataFrame:
    rng = random.Random(seed)
    times, order = _arrival(rng, n)
    rows = [
        {
            "k": None if rng.random() < 0.05 else rng.choice("abcde"),
            "x": rng.choice(X_VALUES),
            "n": None if rng.random() < 0.1 else rng.randrange(-5, 50),
            "s": rng.choice([None, "", "US", "FR", "中国"]),
            "b": rng.choice([None, True, False]),
            "ts": times[i],
        }
        for i in order
    ]
    return pl.DataFrame(rows, schema=SCHEMA)


def rating_log(seed: int, n: int = 300) -> pl.DataFrame:
    rng = random.Random(seed)
    times, order = _arrival(rng, n)
    rows = [
        {
            "userId": None if rng.random() < 0.05 else rng.randrange(1, 6),
            "movieId": min(int(rng.paretovariate(1.2)), 9),
            "rating": None if rng.random() < 0.05 else rng.randrange(1, 11) / 2,
            "tag": rng.choice([None, "funny", "dark", "long"]),
            "ts": times[i],
        }
        for i in order
    ]
    return pl.DataFrame(rows, schema=RATING_SCHEMA)


CASES = [(things, thing_log), (by_user, rating_log), (by_movie, rating_log), (by_tag, rating_log)]


# -- the tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("view, log", CASES, ids=[v.name for v, _ in CASES])
def test_reports_equal_the_reference(view: FeatureView, log: Any, seed: int) -> None:
    events = log(seed)
    for sample in (1.0, 0.4):
        report = run_parity(view, events, sample=sample, seed=seed)
        assert numbers(report) == reference_parity(view, events, sample=sample, seed=seed)
        assert report.ok, report.as_dict()
    assert report.queries > 0


@pytest.mark.parametrize("view, log", CASES, ids=[v.name for v, _ in CASES])
def test_query_points_come_in_arrival_order_replay_order(view: FeatureView, log: Any) -> None:
    """The entity-by-entity replay puts its points back in the order an arrival-order replay
    asks them, so that the first difference is the same whichever point differs."""
    events = log(4)
    ev = normalize_events(view, events)
    spec = _Spec.of(view)
    drawn = _with_draws(spec, ev, sample=0.7, seed=4)
    replay = _replay(
        spec, ViewProgram(view.ir), _by_entity(spec, drawn), total=ev.height, progress=None
    )
    asked, answers, skipped, null_entity = reference_points(
        view, _normalized(view, events), sample=0.7, seed=4
    )
    assert list(zip(replay.keys, replay.times, replay.arrived, strict=True)) == asked
    assert repr(replay.answers) == repr(answers)  # NaN and -0.0 as they are
    assert (replay.skipped, ev[view.entity.key].null_count()) == (skipped, null_entity)


def test_the_logs_hold_what_the_reports_must_count() -> None:
    """The generated logs exercise skipped points and null keys, not just the easy path."""
    skipped = null = 0
    for view, log in CASES:
        for seed in (0, 1, 2):
            report = run_parity(view, log(seed))
            skipped += report.skipped_beyond_lateness
            null += report.skipped_null_entity
    assert skipped > 0 and null > 0


def test_a_planted_difference_is_found_as_the_reference_finds_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The per-event float sum one ulp up (as in test_first_hour_output): the same mismatches,
    the same first differences."""
    original = kernels.finalize_float_sum
    monkeypatch.setattr(
        kernels, "finalize_float_sum", lambda *a: math.nextafter(original(*a), math.inf)
    )
    for view, log in [(things, thing_log), (by_movie, rating_log)]:
        events = log(3)
        report = run_parity(view, events)
        assert not report.ok
        assert numbers(report) == reference_parity(view, events)
        nudged = {f.name for f in report.features if f.mismatched}
        # the float sums and the mean built on one
        assert nudged == ({"x_sum_1d", "x_mean_6h"} if view is things else {"rating_sum"})


def test_the_collector_is_left_as_it_was() -> None:
    events = thing_log(0, 50)
    assert gc.isenabled()
    run_parity(things, events)
    assert gc.isenabled()
    gc.disable()
    try:
        run_parity(things, events)
        assert not gc.isenabled()
    finally:
        gc.enable()


# -- a check split over processes -------------------------------------------------------------


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check's workers as threads of this process (the parts' split, hand-out and merge,
    with the monkeypatches a spawned process would not see): ``jobs - 1`` of them, beside
    this process's own share, as with processes."""
    monkeypatch.setattr(harness, "_pool", lambda jobs, ctx, done: Threads(jobs))


class Threads(ThreadPoolExecutor):
    """Leaving the ``with`` block does not wait for the calls still running, as the process
    pool stops its workers at once."""

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=False, cancel_futures=True)


@pytest.mark.parametrize("jobs", [2, 3, 7])
@pytest.mark.parametrize("view, log", CASES, ids=[v.name for v, _ in CASES])
def test_parts_give_the_reference_report(
    view: FeatureView, log: Any, jobs: int, in_process: None
) -> None:
    for seed in (0, 1):
        events = log(seed)
        for sample in (1.0, 0.4):
            report = run_parity(view, events, sample=sample, seed=seed, jobs=jobs)
            entities = events[view.entity.key].drop_nulls().n_unique()
            assert report.jobs == min(jobs, entities) > 1
            assert numbers(report) == reference_parity(view, events, sample=sample, seed=seed)


def test_this_process_checks_the_biggest_part_and_a_worker_the_next(
    monkeypatch: pytest.MonkeyPatch, in_process: None
) -> None:
    """With ``jobs`` processes, ``jobs - 1`` workers and this process share the parts: this
    one starts on the biggest at once (it has everything imported), a worker on the next;
    every part is checked once and the report is the reference's."""
    ran: list[tuple[bool, int]] = []
    check = harness._check

    def recorded(spec: Any, ev: pl.DataFrame, *args: Any, **kwargs: Any) -> Any:
        ran.append((threading.current_thread() is threading.main_thread(), ev.height))
        return check(spec, ev, *args, **kwargs)

    monkeypatch.setattr(harness, "_check", recorded)
    events = pl.concat([rating_log(s, 300) for s in range(4)])
    report = run_parity(by_user, events, jobs=2)
    assert numbers(report) == reference_parity(by_user, events)
    parts = _split(
        _Spec.of(by_user),
        _with_draws(_Spec.of(by_user), normalize_events(by_user, events), sample=1.0, seed=0),
        2,
    )
    assert sorted(n for _, n in ran) == sorted(p.height for p in parts)
    here = [n for main, n in ran if main]
    assert here[0] == max(p.height for p in parts)
    assert len(here) < len(ran)  # the worker took parts too


@pytest.mark.parametrize("jobs", [2, 3])
def test_a_workers_failure_ends_the_check_without_waiting_for_the_others(
    monkeypatch: pytest.MonkeyPatch, in_process: None, jobs: int
) -> None:
    """A part failing in a worker (this process's parts succeed; with 3 jobs, the other
    worker's part is slow) raises that error here once this process is done with its own
    part, without waiting for the slow one."""
    check = harness._check
    slow, release, slow_ended = threading.Event(), threading.Event(), threading.Event()

    def failing(spec: Any, ev: pl.DataFrame, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is threading.main_thread():
            return check(spec, ev, *args, **kwargs)
        if jobs == 3 and not slow.is_set():  # the first worker's part: slow
            slow.set()
            release.wait(10.0)  # until the check has ended (its result is never read)
            slow_ended.set()
            raise ParityError("the slow part")
        raise ParityError(f"a worker's part of {ev.height} events failed")

    monkeypatch.setattr(harness, "_check", failing)
    events = pl.concat([rating_log(s, 300) for s in range(4)])
    try:
        with pytest.raises(ParityError, match=r"a worker's part of \d+ events failed"):
            run_parity(by_user, events, jobs=jobs)
        assert not slow_ended.is_set()  # raised while the slow part still ran
    finally:
        release.set()


def test_parts_find_the_first_difference_of_the_whole_log(
    monkeypatch: pytest.MonkeyPatch, in_process: None
) -> None:
    """With a planted difference in every part, the merged report names the difference an
    arrival-order replay of the whole log meets first (the reference's), with the summed
    counts."""
    original = kernels.finalize_float_sum
    monkeypatch.setattr(
        kernels, "finalize_float_sum", lambda *a: math.nextafter(original(*a), math.inf)
    )
    for view, log in [(things, thing_log), (by_movie, rating_log)]:
        events = log(3)
        expected = reference_parity(view, events)
        for jobs in (2, 3, 5):
            report = run_parity(view, events, jobs=jobs)
            assert report.jobs > 1 and not report.ok
            assert numbers(report) == expected


def test_parts_hold_whole_entities_in_arrival_order() -> None:
    """Every keyed event lands in exactly one part, with all of its entity's events, in
    arrival order; events without a key in none; the parts' event counts are balanced."""
    view = by_user
    events = pl.concat([rating_log(s, 400) for s in range(3)])
    ev = _with_draws(_Spec.of(view), normalize_events(view, events), sample=1.0, seed=0)
    for jobs in (1, 2, 3, 4):
        parts = _split(_Spec.of(view), ev, jobs)
        seqs = [p[SEQ].to_list() for p in parts]
        assert all(s == sorted(s) for s in seqs)
        everything = sorted(q for s in seqs for q in s)
        keyed = ev.filter(pl.col("userId").is_not_null())
        assert everything == keyed[SEQ].to_list()
        owners: dict[Any, int] = {}
        for i, p in enumerate(parts):
            for user in p["userId"].unique().to_list():
                assert owners.setdefault(user, i) == i
        if jobs > 1:
            sizes = [p.height for p in parts]
            assert len(parts) == min(2 * jobs, keyed["userId"].n_unique())
            biggest = keyed.group_by("userId").len()["len"].max()
            assert max(sizes) - min(sizes) <= biggest  # greedy: within one entity


def test_many_small_entities_make_balanced_parts() -> None:
    """Entities of 2 events each, 600 of them: two parts per process, every entity whole, the
    parts' event counts within one entity of each other."""
    n = 1200
    events = pl.DataFrame(
        {
            "k": [f"e{i % 600}" for i in range(n)],
            "x": [float(i) for i in range(n)],
            "n": list(range(n)),
            "s": ["a"] * n,
            "b": [True] * n,
            "ts": [BASE + timedelta(seconds=i) for i in range(n)],
        },
        schema=SCHEMA,
    )
    spec = _Spec.of(things)
    ev = _with_draws(spec, normalize_events(things, events), sample=1.0, seed=0)
    for jobs in (2, 3):
        parts = _split(spec, ev, jobs)
        assert len(parts) == 2 * jobs
        sizes = [p.height for p in parts]
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 2
        assert sorted(k for p in parts for k in p["k"].unique().to_list()) == sorted(
            f"e{i}" for i in range(600)
        )


def test_parts_in_worker_processes_give_the_reference_report() -> None:
    """Real processes (spawned): the same report as one process, the reference's; progress
    counts every keyed event once."""
    events = pl.concat([rating_log(s, 300) for s in range(4)])
    seen: list[int] = []
    report = run_parity(by_user, events, jobs=2, progress=seen.append)
    assert report.jobs == 2
    assert numbers(report) == reference_parity(by_user, events)
    assert seen[-1] == events.height and seen == sorted(seen)
    single = run_parity(by_user, events)
    assert report.as_dict()["features"] == single.as_dict()["features"]


lowered = fp.feature_view(entity=entity, source=source, name="lowered", lateness="10s")(
    lambda t: {"c": fp.count(window="30s"), "l": fp.last(t.s.lower())}
)


def _no_worker_left() -> bool:
    """No child process of this one is running. A terminated worker is reaped by this thread
    or by the process pool's own thread, whichever waits first; until the pool's thread has
    recorded it, ``active_children`` may still list it, gone (no /proc entry) or a zombie."""

    def running(pid: int | None) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    return not any(running(p.pid) for p in multiprocessing.active_children())


def test_a_failing_part_fails_the_check_as_one_process_does() -> None:
    """A log that breaks the check (a str field holding ints: the per-event ``lower`` fails on
    entity "d", the batch plan on the column type) fails it with several processes with the
    error one process raises for one of the parts, and no worker is left running (the others
    are stopped, not waited for)."""
    n = 4_000
    events = pl.DataFrame(
        {
            "k": ["da"[i % 2] for i in range(n)],
            "x": [float(i % 7) for i in range(n)],
            "n": list(range(n)),
            "s": [None] * n,
            "b": [True] * n,
            "ts": [BASE + timedelta(seconds=i) for i in range(n)],
        },
        schema=SCHEMA,
    ).with_columns(pl.when(pl.col("k") == "d").then(5).cast(pl.Int64).alias("s"))

    def failure(log: pl.DataFrame, jobs: int) -> tuple[type, str]:
        with pytest.raises(Exception) as caught:
            run_parity(lowered, log, jobs=jobs)
        return type(caught.value), str(caught.value)

    alone = {failure(events.filter(pl.col("k") == k), 1) for k in "ad"}
    assert failure(events, 2) in alone
    assert _no_worker_left()


def test_a_worker_process_killed_mid_part_fails_the_check_instead_of_hanging() -> None:
    """A worker process killed while it checks its part (SIGKILL, as the kernel's OOM killer
    sends) ends the check with an error naming the fault, and leaves no worker running; a
    pool that replaced the dead worker would wait for the lost part for ever."""
    events = rating_log(5, 40_000)
    spec = _Spec.of(by_user)
    ev = _with_draws(spec, harness.normalize_events(by_user, events), sample=1.0, seed=0)
    keyed = ev.filter(pl.col("userId").is_not_null())
    small = keyed.filter(pl.col("userId") == 1)
    big = keyed.filter(pl.col("userId") != 1)
    assert small.height > 0 and big.height > 20_000  # a worker reports every 10,000 events
    killed: list[int] = []

    def progress(n: int) -> None:
        # the worker has reported events of its part (beyond this process's whole part): it
        # is in the middle of the big part
        if not killed and n > small.height:
            (worker,) = multiprocessing.active_children()
            killed.append(worker.pid or 0)
            os.kill(worker.pid or 0, signal.SIGKILL)

    raised: list[BaseException] = []

    def check() -> None:
        try:
            harness._check_in_processes(spec, [small, big], ev.height, 2, progress)
        except BaseException as e:
            raised.append(e)

    runner = threading.Thread(target=check, daemon=True)
    runner.start()
    runner.join(120.0)
    assert not runner.is_alive(), "the check hangs on the killed worker's part"
    assert killed, "the worker was not killed while checking its part"
    assert len(raised) == 1 and isinstance(raised[0], ParityError), raised
    assert "ended abruptly" in str(raised[0])
    assert _no_worker_left()


def test_jobs_follow_the_cores_and_the_log_size() -> None:
    cores = len(os.sched_getaffinity(0))
    assert auto_jobs(0) == 1
    assert auto_jobs(EVENTS_PER_JOB - 1) == 1
    assert auto_jobs(2 * EVENTS_PER_JOB) == min(2, cores)
    assert auto_jobs(10**9) == cores


def test_a_failing_batch_plan_stops_the_replay_beside_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """In one process the batch plan runs in a thread beside the replay: when it fails, the
    replay stops at its next progress step (every 10,000 events) instead of running to the end,
    and the plan's own error is raised. The first progress step waits until the plan failed."""
    n = 30_000
    events = pl.DataFrame(
        {
            "k": [f"e{i % 50}" for i in range(n)],
            "x": [float(i % 7) for i in range(n)],
            "n": list(range(n)),
            "s": ["a"] * n,
            "b": [True] * n,
            "ts": [BASE + timedelta(seconds=i) for i in range(n)],
        },
        schema=SCHEMA,
    )
    failed = threading.Event()

    def broken(self: BatchProgram, *args: Any, **kwargs: Any) -> pl.DataFrame:
        failed.set()
        raise RuntimeError("the batch plan broke")

    monkeypatch.setattr(BatchProgram, "features", broken)
    steps: list[int] = []

    def progress(i: int) -> None:
        if not steps:
            assert failed.wait(30)
        steps.append(i)

    with pytest.raises(RuntimeError, match="the batch plan broke"):
        run_parity(lowered, events, progress=progress)
    assert steps == [0]  # stopped at the first step: 30,000 events would report 0, 10k, 20k


_answer_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.sampled_from(
        [0.0, -0.0, math.nan, -math.nan, struct.unpack("<d", bytes(6) + b"\xf8\x7f")[0]]
    )
    | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=2) | st.integers(0, 3), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_answer_values, min_size=1, max_size=4), st.data())
def test_answers_compared_bit_for_bit_as_the_canonical_form_compares_them(
    a: list[Any], data: st.DataObject
) -> None:
    """``_identical`` (msgpack bytes first) decides as ``_canonical`` does: -0.0 is not 0.0,
    a NaN is its bits, 1 and 1.0 differ, a map's key order does not matter, ints beyond 64
    bits compare by value. The other answer is a copy, a copy with its
    maps' keys reversed, or another draw."""
    kind = data.draw(st.sampled_from(["copy", "reversed", "other"]))

    def rebuilt(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: rebuilt(v[k]) for k in reversed(list(v))}
        if isinstance(v, list):
            return [rebuilt(x) for x in v]
        return v

    if kind == "copy":
        b = list(a)
    elif kind == "reversed":
        b = rebuilt(a)
    else:
        b = data.draw(st.lists(_answer_values, min_size=len(a), max_size=len(a)))
    expected = harness._canonical(tuple(a)) == harness._canonical(tuple(b))
    assert harness._identical(tuple(a), tuple(b)) is expected
    if kind != "other":
        assert expected


def test_answers_differing_in_sign_of_zero_type_or_nan_bits_are_not_identical() -> None:
    quiet, signalling = math.nan, struct.unpack("<d", bytes(6) + b"\xf4\x7f")[0]
    for a, b in [
        ((0.0,), (-0.0,)),
        ((1,), (1.0,)),
        ((quiet,), (signalling,)),
        ((2**70,), (2**70 + 1,)),
        (({"a": 1.0, "b": -0.0},), ({"b": 0.0, "a": 1.0},)),
    ]:
        assert not harness._identical(a, b), (a, b)
    assert harness._identical(({"a": 1.0, "b": -0.0},), ({"b": -0.0, "a": 1.0},))
    assert harness._identical((quiet, 2**70), (quiet, 2**70))
