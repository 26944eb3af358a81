"""Queries that must not see late events of their range (``__arrived``): the batch plan answers
the kinds with ``AggKind.merge_ranges`` from the runs of events between the late ones
(``BatchProgram._between_late``). Held against the naive reference (``reference=True``: every
query paired with every event of its window, filtered by arrival) on generated logs in any
arrival order, and against values worked out by hand."""

from __future__ import annotations

import math
from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

import featurepipe as fp
from featurepipe.compile.polars_aggs import ARRIVED, TS, BatchProgram
from featurepipe.ir.aggs import kind_of
from featurepipe.parity.harness import normalize_events
from tests.schema import SCHEMA, at, row, scaled, view
from tests.test_batch_reference import _assert_frames_identical
from tests.test_oracle_duckdb import US

OUTPUTS: dict[str, Any] = {
    "n_all": lambda t: fp.count(),
    "n_5s": lambda t: fp.count(window="5s"),
    "n_b_5s": lambda t: fp.count(window="5s", where=t.b),
    "n_x_hop": lambda t: fp.count(t.x, window="6s", hop="2s"),
    "sum_x_5s": lambda t: fp.sum(t.x, window="5s"),
    "sum_n_all": lambda t: fp.sum(t.n),
    "mean_x_hop": lambda t: fp.mean(t.x, window="6s", hop="2s"),
    "var_x_10s": lambda t: fp.var(t.x, window="10s"),
    "std_n_all": lambda t: fp.std(t.n),
    "min_x_5s": lambda t: fp.min(t.x, window="5s"),
    "max_n_all": lambda t: fp.max(t.n),
    "max_x_all": lambda t: fp.max(t.x, where=t.b),
    "first_s_all": lambda t: fp.first(t.s),
    "last_s_5s": lambda t: fp.last(t.s, window="5s"),
    "last_x_b": lambda t: fp.last(t.x, where=t.b),
    "first_n_hop": lambda t: fp.first(t.n, window="6s", hop="2s"),
    # distinct counts: the late events left out by the kernel (SkippingRanges)
    "distinct_s_5s": lambda t: fp.count_distinct(t.s, window="5s"),
    "distinct_n_all": lambda t: fp.count_distinct(t.n),
    "distinct_x_hop": lambda t: fp.count_distinct(t.x, window="6s", hop="2s", where=t.b),
    "last_2_n": lambda t: fp.last_k(t.n, 2),
    "last_3_x_5s": lambda t: fp.last_k(t.x, 3, window="5s"),
    "first_2_s_hop": lambda t: fp.first_k(t.s, 2, window="6s", hop="2s"),
    # neither: the (query, event) pairs, beside the others in one frame
    "mode_s_5s": lambda t: fp.mode(t.s, window="5s"),
}
VIEW = view(OUTPUTS, lateness="1d", name="late")


def test_the_view_takes_every_path() -> None:
    paths = {
        "runs" if kind_of(a).merge_ranges(a, pl.col) else "skips" if kind_of(a).skips else "pairs"
        for a in VIEW.ir.aggs
    }
    assert paths == {"runs", "skips", "pairs"}


def _features(
    log: pl.DataFrame, queries: pl.DataFrame, reference: bool, limit: float = 0.0
) -> pl.DataFrame:
    """``limit`` 0: the runs for every window with late events (the path under test); the
    default plan keeps the pairs where they are few."""
    ev = normalize_events(VIEW, log)
    program = BatchProgram(VIEW.ir, reference=reference, late_pairs_limit=limit)
    return program.features(ev.lazy(), queries)


FLOATS = st.one_of(
    st.none(),
    st.sampled_from([0.0, -0.0, 1.5, -2.25, math.nan, math.inf, -math.inf, 1e300, 5e-324]),
    st.floats(-1e6, 1e6, allow_nan=False),
)
INTS = st.one_of(st.none(), st.integers(-5, 5), st.sampled_from([2**62, -(2**62)]))


@st.composite
def logs(draw: st.DrawFn) -> pl.DataFrame:
    """Events in arrival order (any order of their times, ties included)."""
    n = draw(st.integers(1, 40))
    rows = [
        row(
            k=draw(st.sampled_from("abc")),
            ts=at(draw(st.integers(0, 20)) / 2),
            x=draw(FLOATS),
            n=draw(INTS),
            s=draw(st.one_of(st.none(), st.sampled_from(["p", "q", "é", ""]))),
            b=draw(st.one_of(st.none(), st.booleans())),
        )
        for _ in range(n)
    ]
    return pl.DataFrame(rows, schema=SCHEMA)


@settings(max_examples=scaled(150), deadline=None)
@given(log=logs(), data=st.data())
def test_late_events_left_out_as_the_reference_does(log: pl.DataFrame, data: Any) -> None:
    n = log.height
    m = data.draw(st.integers(1, 30))
    queries = pl.DataFrame(
        {
            "k": data.draw(st.lists(st.sampled_from("abcd"), min_size=m, max_size=m)),
            TS: [
                int(at(0).timestamp()) * US + t * US // 4
                for t in data.draw(st.lists(st.integers(-4, 100), min_size=m, max_size=m))
            ],
            ARRIVED: data.draw(st.lists(st.integers(0, n), min_size=m, max_size=m)),
        },
        schema={"k": pl.String, TS: pl.Int64, ARRIVED: pl.Int64},
    )
    reference = _features(log, queries, reference=True)
    _assert_frames_identical(_features(log, queries, reference=False), reference)
    _assert_frames_identical(_features(log, queries, reference=False, limit=1.0), reference)


def test_a_late_event_worked_out_by_hand() -> None:
    """Entity a, in arrival order: x=1 at 1s, x=10 at 3s, x=100 at 2s (late), x=1000 at 4s.
    At T=5s a query that arrived after the first two sees 1 and 10 (the event at 4s is newer
    than anything it had, the one at 2s arrived after it); after three, 1, 100 and 10."""
    log = pl.DataFrame(
        [
            row(ts=at(1), x=1.0, n=1, s="p", b=True),
            row(ts=at(3), x=10.0, n=10, s="q", b=True),
            row(ts=at(2), x=100.0, n=100, s="r", b=True),
            row(ts=at(4), x=1000.0, n=1000, s="t", b=True),
        ],
        schema=SCHEMA,
    )
    t5 = int(at(5).timestamp()) * US
    queries = pl.DataFrame(
        {"k": ["a"] * 4, TS: [t5, t5, t5, t5], ARRIVED: [2, 3, 0, 1]},
        schema={"k": pl.String, TS: pl.Int64, ARRIVED: pl.Int64},
    )
    got = _features(log, queries, reference=False)
    assert got["n_all"].to_list() == [2, 3, 0, 1]
    assert got["sum_n_all"].to_list() == [11, 111, None, 1]  # an empty sum is null
    assert got["max_n_all"].to_list() == [10, 100, None, 1]
    assert got["first_s_all"].to_list() == ["p", "p", None, "p"]
    assert got["last_s_5s"].to_list() == ["q", "q", None, "p"]  # window [0s, 5s)
    assert got["last_x_b"].to_list() == [10.0, 10.0, None, 1.0]
    assert got["min_x_5s"].to_list() == [1.0, 1.0, None, 1.0]
    assert got["mean_x_hop"].to_list()[:2] == [5.5, 37.0]
    assert got["distinct_n_all"].to_list() == [2, 3, 0, 1]
    assert got["distinct_x_hop"].to_list()[:2] == [2, 3]
    assert got["last_2_n"].to_list() == [[10, 1], [10, 100], None, [1]]  # newest first


def test_a_value_left_out_only_where_it_has_no_visible_occurrence() -> None:
    """s in arrival order: "p" at 1s, "q" at 3s, "p" at 2s (late), "q" at 2.5s (late), "r" at
    1.5s (late). Seen after the first two: {"p", "q"}: the late "p" and "q" leave nothing out,
    "r" is not there yet (2); after four, {"p", "q"} (2); after all, 3."""
    log = pl.DataFrame(
        [
            row(ts=at(1), s="p"),
            row(ts=at(3), s="q"),
            row(ts=at(2), s="p"),
            row(ts=at(2.5), s="q"),
            row(ts=at(1.5), s="r"),
        ],
        schema=SCHEMA,
    )
    t4 = int(at(4).timestamp()) * US
    queries = pl.DataFrame(
        {"k": ["a"] * 4, TS: [t4] * 4, ARRIVED: [1, 2, 4, 5]},
        schema={"k": pl.String, TS: pl.Int64, ARRIVED: pl.Int64},
    )
    got = _features(log, queries, reference=False)
    assert got["distinct_s_5s"].to_list() == [1, 2, 2, 3]
