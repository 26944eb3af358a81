"""The batch plan's shared range kernels against naive loops written here.

``Ranges`` keeps one column's prefix sums for every window that sums it (and for every
aggregation whose prepared column is a copy of it), skips the work for a column of zeros,
and answers a lifetime min/max from each entity's running extreme. Each test gives the
kernels ranges drawn by hypothesis (empty ranges, ranges of unknown entities, ranges that
start inside an entity, as the runs between late events do) and checks every answer against
a plain Python loop over the rows of the range."""

from __future__ import annotations

import math
import random
from typing import Literal

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

import featurepipe as fp
from featurepipe.compile.polars_aggs import (
    RANK,
    BatchProgram,
    Ranges,
    _distinct_count,
    _EndKeys,
    _from_entity_start,
    _range_extreme,
    _search,
    sort_by_entity,
)
from featurepipe.testing import assert_parity
from tests.schema import at, frame, row, view

I64 = pl.Int64


@st.composite
def sorted_events(draw: st.DrawFn, largest: int = 6) -> tuple[list[int], list[int]]:
    """Entity ranks in ascending order (a run of rows per entity) and an int value per row."""
    sizes = draw(st.lists(st.integers(0, largest), min_size=1, max_size=6))
    ranks = [r for r, size in enumerate(sizes) for _ in range(size)]
    values = draw(st.lists(st.integers(-(2**40), 2**40), min_size=len(ranks), max_size=len(ranks)))
    return ranks, values


def _entity_bounds(ranks: list[int]) -> dict[int, tuple[int, int]]:
    bounds: dict[int, tuple[int, int]] = {}
    for i, r in enumerate(ranks):
        lo, _ = bounds.get(r, (i, i))
        bounds[r] = (lo, i + 1)
    return bounds


@settings(max_examples=200, deadline=None)
@given(sorted_events(), st.data())
def test_range_sums_share_prefixes_and_never_a_stale_one(
    ev: tuple[list[int], list[int]], data: st.DataObject
) -> None:
    ranks, values = ev
    n = len(ranks)
    pairs = data.draw(
        st.lists(st.tuples(st.integers(0, n), st.integers(0, n)), min_size=1, max_size=8)
    )
    lo = [min(a, b) for a, b in pairs]
    hi = [max(a, b) for a, b in pairs]
    lo2 = [max(h - 1, 0) if h > 0 else 0 for h in hi]  # a second, shorter window
    lo2 = [min(max(a, b), h) for a, b, h in zip(lo, lo2, hi, strict=True)]
    col = pl.Series(values, dtype=I64)
    events = pl.DataFrame({RANK: pl.Series(ranks, dtype=I64), "a0_x": col, "a1_x": col})
    q = pl.DataFrame(
        {"hi": hi, "lo_life": lo, "lo_5_1": lo2},
        schema=dict.fromkeys(("hi", "lo_life", "lo_5_1"), I64),
    )
    kernels = Ranges(events, q, {"a1_x": "a0_x"})  # a1_x: a copy of a0_x

    def naive(col: list[int], los: list[int]) -> list[int]:
        return [sum(col[a:b]) for a, b in zip(los, hi, strict=True)]

    assert kernels.range_sum(events["a0_x"], None).to_list() == naive(values, lo)
    assert kernels.range_sum(events["a1_x"], (5, 1)).to_list() == naive(values, lo2)
    # a derived series under a cached column's name (a kind summing its own flags): its own
    # sums, not the cached column's
    doubled = [2 * v + 1 for v in values]
    derived = pl.Series("a0_x", doubled, dtype=I64)
    assert kernels.range_sum(derived, None).to_list() == naive(doubled, lo)
    assert kernels.range_sum(events["a0_x"], (5, 1)).to_list() == naive(values, lo2)
    zeros = pl.Series("a2_nan", [0] * n, dtype=I64)
    assert kernels.range_sum(zeros, None).to_list() == [0] * len(hi)


@settings(max_examples=200, deadline=None)
@given(st.one_of(sorted_events(), sorted_events(largest=120)), st.data(), st.booleans())
def test_lifetime_extreme_from_entity_start_or_any_range(
    ev: tuple[list[int], list[int]], data: st.DataObject, smallest: bool
) -> None:
    """Ranges that each start at their entity's first row (or are empty) take the running
    extreme; a set with any range starting inside an entity (the runs between late events)
    must give the same answers as the loop too."""
    ranks, values = ev
    n = len(ranks)
    bounds = _entity_bounds(ranks)
    sentinel = 2**62 if smallest else -(2**62)
    queries: list[tuple[int, int]] = []
    for _ in range(data.draw(st.integers(1, 8))):
        if bounds and data.draw(st.booleans()):
            start, end = bounds[data.draw(st.sampled_from(sorted(bounds)))]
            queries.append((start, data.draw(st.integers(start, end))))
        else:  # anywhere: empty, or starting inside an entity
            a = data.draw(st.integers(0, n))
            b = data.draw(st.integers(a, max(a, n)))
            if b > a and ranks[a] != ranks[b - 1]:
                b = bounds[ranks[a]][1]  # one entity per range, as the plan's ranges are
            queries.append((a, b))
    events = pl.DataFrame(
        {RANK: pl.Series(ranks, dtype=I64), "a0_best": pl.Series(values, dtype=I64)}
    )
    q = pl.DataFrame(
        {"lo_life": [a for a, _ in queries], "hi": [b for _, b in queries]},
        schema={"lo_life": I64, "hi": I64},
    )
    got = Ranges(events, q).range_extreme(events["a0_best"], None, smallest, sentinel)
    pick = min if smallest else max
    want = [pick(values[a:b]) if b > a else sentinel for a, b in queries]
    assert got.to_list() == want


def test_running_extreme_taken_where_it_pays_and_only_from_entity_starts() -> None:
    """Two entities of 40 events: lifetime ranges take the running extreme (by hand: the
    largest of 0..k-1 is k-1); a range starting inside an entity is refused (None)."""
    rank = pl.Series([0] * 40 + [1] * 40, dtype=I64)
    col = pl.Series(list(range(40)) + list(range(100, 60, -1)), dtype=I64)
    lo = pl.Series([0, 0, 40, 40], dtype=I64)
    hi = pl.Series([10, 0, 80, 45], dtype=I64)
    got = _from_entity_start(rank, col, lo, hi, False, -1)
    assert got is not None and got.to_list() == [9, -1, 100, 100]
    inside = _from_entity_start(rank, col, lo + pl.Series([1, 0, 0, 0]), hi, False, -1)
    assert inside is None


def test_expressions_differing_only_in_the_sign_of_zero_are_not_shared() -> None:
    """1.0 / 0.0 is inf, 1.0 / -0.0 is -inf (docs/semantics.md: IEEE division): one event with
    a null x counts in the first and not in the second."""
    v = view(
        {
            "pos": lambda t: fp.count(where=1.0 / t.x.fill_null(0.0) > 0.0),
            "neg": lambda t: fp.count(where=1.0 / t.x.fill_null(-0.0) > 0.0),
            "last_pos": lambda t: fp.last(t.x.fill_null(0.0)),
            "last_neg": lambda t: fp.last(t.x.fill_null(-0.0)),
        }
    )
    events = frame([row(ts=at(1), x=None)])
    report = assert_parity(v, events)  # the per-event path, which shares no code with the plan
    assert report.ok
    us = 1_000_000
    ev = pl.DataFrame(
        {"k": ["a"], "__ts": [us], "__seq": [0], "x": [None]}, schema_overrides={"x": pl.Float64}
    )
    got = BatchProgram(v.ir).features(ev.lazy(), pl.DataFrame({"k": ["a"], "__ts": [2 * us]}))
    r = got.row(0, named=True)
    assert (r["pos"], r["neg"]) == (1, 0)
    assert str(r["last_pos"]) == "0.0" and str(r["last_neg"]) == "-0.0"


def test_aggregations_of_several_inputs_and_filters_match_the_per_event_path() -> None:
    """Sums, counts, means and max over two inputs with and without ``where``: columns shared
    only where the expressions are the same, checked against the per-event path."""
    v = view(
        {
            "sx": lambda t: fp.sum(t.x, window="5s"),
            "sn": lambda t: fp.sum(t.n, window="5s"),
            "sx_b": lambda t: fp.sum(t.x, window="5s", where=t.b),
            "cx": lambda t: fp.count(t.x),
            "cn": lambda t: fp.count(t.n),
            "c_b": lambda t: fp.count(where=t.b),
            "mx": lambda t: fp.mean(t.x, window="10s"),
            "mn": lambda t: fp.mean(t.n, window="10s"),
            "hi_x": lambda t: fp.max(t.x),
            "hi_n": lambda t: fp.max(t.n),
        }
    )
    rows = [
        row(k=k, ts=at(s), x=x, n=n, b=b)
        for k, s, x, n, b in [
            ("a", 1, 1.5, 3, True),
            ("a", 2, None, -4, False),
            ("b", 2, 4.0, None, None),
            ("a", 7, -2.0, 10, True),
            ("b", 9, 8.0, 2, False),
            ("a", 14, 3.0, None, True),
            ("b", 15, float("inf"), 1, True),
        ]
    ]
    assert_parity(v, frame(rows))


def test_copies_of_one_prepared_expression_are_computed_once() -> None:
    """count/mean/std/max of one input over two windows: their ``n`` flags (and the
    fixed-point values mean and std share) are one computed column each, the others copies;
    the features still equal the reference path's (every query down the pairs)."""
    v = view(
        {
            "c1": lambda t: fp.count(t.x, window="5s"),
            "c2": lambda t: fp.count(t.x, window="10s"),
            "m": lambda t: fp.mean(t.x, window="10s"),
            "s": lambda t: fp.std(t.x, window="10s"),
            "mx": lambda t: fp.max(t.x),
        }
    )
    prog = BatchProgram(v.ir)
    us = 1_000_000
    events = pl.DataFrame(
        {
            "k": ["a", "a", "b", "a", "b", "a"],
            "__ts": [1 * us, 2 * us, 2 * us, 7 * us, 9 * us, 14 * us],
            "__seq": [0, 1, 2, 3, 4, 5],
            "x": [1.5, None, 4.0, -2.0, 8.0, 3.0],
        }
    )
    queries = pl.DataFrame(
        {"k": ["a", "b", "a", "c", "a"], "__ts": [x * us for x in (3, 10, 15, 5, 20)]}
    )
    fast = prog.features(events.lazy(), queries)
    assert prog.same_as, "no prepared column was shared"
    assert set(prog.same_as.values()).isdisjoint(prog.same_as)
    slow = BatchProgram(v.ir, reference=True).features(events.lazy(), queries)
    assert fast.equals(slow)
    # by hand (docs/semantics.md): at 15s, key a sees x in [5s, 15s): -2.0 and 3.0
    row = fast.row(2, named=True)
    assert (row["c1"], row["c2"], row["m"], row["mx"]) == (1, 2, 0.5, 3.0)
    assert fast.row(3, named=True)["c1"] == 0 and fast.row(3, named=True)["mx"] is None


_COUNTS = view(
    {
        "c_all": lambda t: fp.count(),
        "c_5s": lambda t: fp.count(window="5s"),
        "c_hop": lambda t: fp.count(window="10s", hop="2s"),
    }
)
_EXTREMES = [-(2**63) + 1, -(2**61), -(2**61) + 7, 2**61 - 7, 2**61, 2**63 - 1]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.integers(-20, 20)), min_size=0, max_size=12),
    st.lists(
        st.tuples(
            st.sampled_from("abcd"),
            st.one_of(
                st.integers(-25, 25).map(lambda s: s * 1_000_000), st.sampled_from(_EXTREMES)
            ),
        ),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, 3),
)
def test_window_bounds_found_among_the_events_of_each_entity(
    events: list[tuple[str, int]], queries: list[tuple[str, int]], scale: int
) -> None:
    """Counts over a lifetime, a sliding and a hopped window by a loop over the raw events,
    at query times before, among and after the events, and at the ends of int64 (where the
    plan's keys are wide); event times spread by ``scale`` so some logs span far more than
    others."""
    us = 1_000_000 * 10**scale
    ev = pl.DataFrame(
        {
            "k": [k for k, _ in events],
            "__ts": [s * us for _, s in events],
            "__seq": list(range(len(events))),
        },
        schema={"k": pl.String, "__ts": I64, "__seq": I64},
    )
    q = pl.DataFrame(
        {"k": [k for k, _ in queries], "__ts": [t for _, t in queries]},
        schema={"k": pl.String, "__ts": I64},
    )
    got = BatchProgram(_COUNTS.ir).features(ev.lazy(), q)

    def naive(k: str, t: int, start: int | None) -> int:
        return sum(
            1 for e, s in events if e == k and s * us < t and (start is None or s * us >= start)
        )

    for answer, (k, t) in zip(got.iter_rows(named=True), queries, strict=True):
        assert answer["c_all"] == naive(k, t, None)
        assert answer["c_5s"] == naive(k, t, t - 5_000_000)
        # hopped (docs/semantics.md): T floored to the hop, then the window before it
        assert answer["c_hop"] == naive(k, t, t // 2_000_000 * 2_000_000 - 10_000_000)


@settings(max_examples=300, deadline=None)
@given(st.data(), st.booleans(), st.booleans())
def test_range_extreme_table_of_numbers_and_of_other_types(
    data: st.DataObject, smallest: bool, floats: bool
) -> None:
    """The sparse table of a numeric column without nulls (one NumPy array) and the general
    one (here for a column with a null) against a loop: infinities, int64's ends, ties of
    0.0, empty ranges, ranges as long as the column."""
    if floats:
        value = st.one_of(
            st.floats(-1e6, 1e6), st.sampled_from([0.0, math.inf, -math.inf, 1.5, 1e308])
        )
        sentinel: float | int = math.inf if smallest else -math.inf
    else:
        value = st.one_of(st.integers(-9, 9), st.sampled_from([2**63 - 1, -(2**63), 0]))
        sentinel = 2**63 - 1 if smallest else -(2**63)
    values = data.draw(st.lists(value, min_size=1, max_size=70))
    n = len(values)
    queries = data.draw(
        st.lists(st.tuples(st.integers(0, n), st.integers(0, n)), min_size=1, max_size=12)
    )
    lo = pl.Series([a for a, _ in queries], dtype=I64)
    hi = pl.Series([b for _, b in queries], dtype=I64)
    dtype = pl.Float64 if floats else I64
    pick = min if smallest else max
    want = [pick(values[a:b]) if b > a else sentinel for a, b in queries]
    got = _range_extreme(pl.Series(values, dtype=dtype), lo, hi, smallest, sentinel)
    assert got.dtype == dtype and got.to_list() == want
    # the general table: the same column as Float32/Int32 with one more (null-free) row
    # would change types; a null row after the end, never inside a range, does not
    with_null = pl.Series([*values, None], dtype=dtype)
    general = _range_extreme(with_null, lo, hi, smallest, sentinel)
    assert general.to_list() == want


@st.composite
def distinct_log(draw: st.DrawFn) -> tuple[list[tuple[int, int, str | None]], int]:
    """Events (rank, ts, value) sorted by (rank, ts), and the number of ranks; some logs with
    times near int64's ends, where Int64 keys do not fit."""
    ranks = draw(st.integers(1, 4))
    far = st.sampled_from([-(2**62), -(2**61) - 3, 2**61 - 40, 2**61 + 1, 2**62])
    times = st.integers(0, 60) | far if draw(st.booleans()) else st.integers(0, 60)
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(0, ranks - 1),
                times,
                st.sampled_from(["a", "b", "c", "é", None]),
            ),
            max_size=60,
        )
    )
    return sorted(rows, key=lambda r: (r[0], r[1])), ranks


@settings(max_examples=300, deadline=None)
@given(distinct_log(), st.data(), st.sampled_from([(5, 1), (1, 1), (10, 3), (20, 7)]))
def test_windowed_distinct_counts_in_int64_keys_and_int128_keys(
    log: tuple[list[tuple[int, int, str | None]], int],
    data: st.DataObject,
    window: tuple[int, int],
) -> None:
    """Distinct non-null values with window_start(T) <= ts < T (docs/semantics.md: T - w
    sliding, T floored to the hop minus w hopped) by a loop, for queries before, among and
    after the events and of unknown entities (rank -1): the Int64 keys and the Int128 ones
    the kernel falls back to give the loop's answers."""
    rows, ranks = log
    w, h = window
    query_times = st.integers(-5, 75) | st.sampled_from([-(2**62) + 9, 2**61 - 30, 2**62 + 70])
    queries = sorted(
        data.draw(st.lists(st.tuples(st.integers(-1, ranks - 1), query_times), max_size=20))
    )
    ev = pl.DataFrame(
        {
            RANK: [r for r, _, _ in rows],
            "__ts": [t for _, t, _ in rows],
            "v": [v for *_, v in rows],
        },
        schema={RANK: pl.UInt32, "__ts": I64, "v": pl.String},
    )
    # each query's lifetime range [lo_life, hi): its entity's events before T
    lo_life = [sum(1 for r, _, _ in rows if r < qr) for qr, _ in queries]
    hi = [sum(1 for r, t, _ in rows if r < qr or (r == qr and t < qt)) for qr, qt in queries]
    lo_life = [
        min(a, b) if qr >= 0 else 0 for a, b, (qr, _) in zip(lo_life, hi, queries, strict=True)
    ]
    hi = [b if qr >= 0 else 0 for b, (qr, _) in zip(hi, queries, strict=True)]
    q = pl.DataFrame(
        {
            RANK: [r for r, _ in queries],
            "__ts": [t for _, t in queries],
            "lo_life": lo_life,
            "hi": hi,
        },
        schema=dict.fromkeys((RANK, "__ts", "lo_life", "hi"), I64),
    )

    def naive(qr: int, t: int) -> int:
        start = t - w if h == 1 else t // h * h - w
        return len({v for r, ts, v in rows if r == qr and start <= ts < t and v is not None})

    want = [naive(r, t) for r, t in queries]
    assert _distinct_count(ev, q, "v", window).to_list() == want
    wide = _EndKeys.__init__

    def never_narrow(self: _EndKeys, *args: object) -> None:
        wide(self, *args)  # type: ignore[arg-type]
        self.narrow = False

    _EndKeys.__init__ = never_narrow  # type: ignore[method-assign]
    try:
        assert _distinct_count(ev, q, "v", window).to_list() == want
    finally:
        _EndKeys.__init__ = wide  # type: ignore[method-assign]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "é", "日本", None]),
            st.one_of(st.integers(-3, 3), st.sampled_from(_EXTREMES)),
        ),
        max_size=25,
    ),
    st.randoms(use_true_random=False),
)
def test_events_put_in_entity_time_arrival_order(
    rows: list[tuple[str | None, int]], rng: random.Random
) -> None:
    """``in_order`` (ranks, then one Int64 sort key where the times fit, a sort by rank, time
    and arrival otherwise) gives the rows of Polars' own sort by (key, ts, seq), events
    without a key left out, whether the log comes in arrival order or not; the ranks number
    the keys in sorted order."""
    seqs = list(range(len(rows)))
    if rng.random() < 0.5:
        rng.shuffle(seqs)
    ev = pl.DataFrame(
        {"k": [k for k, _ in rows], "__ts": [t for _, t in rows], "__seq": seqs},
        schema={"k": pl.String, "__ts": I64, "__seq": I64},
    )
    ordered, ents = BatchProgram(_COUNTS.ir).in_order(ev.lazy())
    want = ev.filter(pl.col("k").is_not_null()).sort("k", "__ts", "__seq")
    assert ordered.select("k", "__ts", "__seq").rows() == want.rows()
    keys = sorted({k for k, _ in rows if k is not None})
    assert ents.rows() == [(i, k) for i, k in enumerate(keys)]
    assert ordered[RANK].to_list() == [keys.index(k) for k in want["k"]]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(-3, 3), max_size=30),
    st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(-4, 4), max_size=30),
    st.sampled_from(["left", "right"]),
    st.booleans(),
)
def test_binary_searches_count_the_keys_below_each_probe(
    keys: list[int], probes: list[int], side: Literal["left", "right"], wide: bool
) -> None:
    """``_search`` (NumPy for Int64, Polars for Int128) against a count: the keys below each
    probe ("left"), or at most it ("right"), duplicates and int64's ends included."""
    dtype = pl.Int128 if wide else I64
    found = _search(pl.Series(sorted(keys), dtype=dtype), pl.Series(probes, dtype=dtype), side)
    below = [sum(1 for k in keys if (k < p if side == "left" else k <= p)) for p in probes]
    assert found.dtype == I64 and found.to_list() == below


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.sampled_from(["b", "a", "é", "", "日本"]), st.integers(-3, 3).map(str)),
            st.one_of(st.integers(0, 9), st.sampled_from(_EXTREMES)),
        ),
        max_size=25,
    )
)
def test_frames_sorted_by_entity_then_an_integer_as_polars_sorts_them(
    rows: list[tuple[str, int]],
) -> None:
    """``sort_by_entity`` (materialize's order, which resuming depends on) gives the rows of
    Polars' ``sort(key, then)``: one Int64 key where the integers fit, the two-key sort at
    int64's ends."""
    frame = pl.DataFrame(
        {"k": [k for k, _ in rows], "then": [t for _, t in rows], "row": list(range(len(rows)))},
        schema={"k": pl.String, "then": I64, "row": I64},
    )
    got = sort_by_entity(frame, "k", "then")
    want = frame.sort("k", "then", maintain_order=True)
    assert got.columns == frame.columns and got.rows() == want.rows()
