"""A lifetime count_distinct answered without copying its set (``AggKind.lifetime_code``).

The query counts the set of the events evicted from the buffer (the lifetime accumulator)
plus the buffer's values the set lacks, instead of copying the whole history's set per query.
Held to a naive count written here (docs/semantics.md: nulls are not values, every NaN is one
value, -0.0 is 0.0), to the batch plan (Polars, no shared code), and checked not to touch the
state it reads.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import featurepipe as fp
from featurepipe.compile.python_state import ViewProgram
from featurepipe.parity.harness import normalize_events
from featurepipe.testing import assert_parity
from tests.schema import at, frame, row, scaled, view

VIEW = view(
    {
        "distinct_x": lambda t: fp.count_distinct(t.x),
        "distinct_n": lambda t: fp.count_distinct(t.n),
        "distinct_s_where": lambda t: fp.count_distinct(t.s, where=t.b),
        "distinct_s_10s": lambda t: fp.count_distinct(t.s, window="10s"),
    },
    lateness="1m",
    name="lifetime_distinct",
)


def _us(seconds: float) -> int:
    return int(at(seconds).timestamp() * 1_000_000)


def _key(v: Any) -> Any:
    """The value count_distinct counts (docs/semantics.md)."""
    if isinstance(v, float):
        return "NaN" if math.isnan(v) else v + 0.0  # -0.0 + 0.0 is 0.0
    return v


def _naive(rows: list[dict[str, Any]], t: int) -> dict[str, int]:
    """Distinct non-null values among the entity's events before ``t``, by plain sets."""
    before = [r for r in rows if _us((r["ts"] - at(0)).total_seconds()) < t]
    recent = [r for r in before if _us((r["ts"] - at(0)).total_seconds()) >= t - 10_000_000]
    return {
        "distinct_x": len({_key(r["x"]) for r in before if r["x"] is not None}),
        "distinct_n": len({r["n"] for r in before if r["n"] is not None}),
        "distinct_s_where": len({r["s"] for r in before if r["s"] is not None and r["b"]}),
        "distinct_s_10s": len({r["s"] for r in recent if r["s"] is not None}),
    }


def _replayed(rows: list[dict[str, Any]]) -> tuple[ViewProgram, Any]:
    prog = ViewProgram(VIEW.ir)
    state = prog.new_state()
    for seq, event in enumerate(normalize_events(VIEW, frame(rows)).iter_rows(named=True)):
        prog.ingest(state, event, seq)
    return prog, state


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One entity: a history hours old (evicted into the lifetime set: the window is 10 s and
    the lateness 1 min), then recent events repeating some of its values, a few late."""
    x = st.one_of(st.none(), st.sampled_from([0.0, -0.0, 1.5, math.nan, -math.inf, 1e300]))
    n = st.one_of(st.none(), st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63)]))
    s = st.one_of(st.none(), st.sampled_from(["", "a", "ß", "中", "ключ"]))
    b = st.one_of(st.none(), st.booleans())
    old = draw(st.integers(0, 20))
    new = draw(st.integers(0, 30))
    rows = [
        row(x=draw(x), n=draw(n), s=draw(s), b=draw(b), ts=at(-7200 + draw(st.integers(0, 600))))
        for _ in range(old)
    ]
    rows.sort(key=lambda r: r["ts"])
    recent = [
        row(x=draw(x), n=draw(n), s=draw(s), b=draw(b), ts=at(draw(st.integers(0, 40))))
        for _ in range(new)
    ]
    recent.sort(key=lambda r: r["ts"])
    for i, j in draw(st.lists(st.tuples(st.integers(0, 29), st.integers(0, 29)), max_size=4)):
        if i < new and j < new:  # late arrivals, within the lateness
            recent[i], recent[j] = recent[j], recent[i]
    return rows + recent


@settings(max_examples=scaled(200), deadline=None)
@given(rows=histories())
def test_lifetime_distinct_counts_equal_plain_sets(rows: list[dict[str, Any]]) -> None:
    prog, state = _replayed(rows)
    for seconds in (0, 5, 20, 40, 41, 100):
        t = _us(seconds)
        if prog.can_answer(state, t):
            got = dict(zip(prog.feature_names, prog.query(state, t), strict=True))
            assert got == _naive(rows, t), seconds


@settings(max_examples=scaled(100), deadline=None)
@given(rows=histories())
def test_lifetime_distinct_counts_match_the_batch_plan(rows: list[dict[str, Any]]) -> None:
    assert_parity(VIEW, frame(rows))


def test_lifetime_distinct_by_hand_and_the_state_untouched() -> None:
    """s = "a", "b", "a" two hours ago (evicted: the set {"a", "b"}), then "b", "c", "c" and a
    null at 0..3 s, every b True. At 10 s: {"a", "b", "c"} -> 3; the 10 s window sees "b",
    "c" -> 2. x: 1.5 and NaN evicted, then NaN, -0.0 and 0.0 -> {1.5, NaN, 0.0} -> 3. n: never
    given -> 0. Querying twice gives the same answers and leaves the state's bytes as they
    were; the state decoded from those bytes answers alike."""
    old = [("a", 1.5), ("b", math.nan), ("a", None)]
    new = [("b", math.nan), ("c", -0.0), ("c", 0.0), (None, None)]
    rows = [row(s=s, x=x, b=True, ts=at(-7200 + i)) for i, (s, x) in enumerate(old)]
    rows += [row(s=s, x=x, b=True, ts=at(i)) for i, (s, x) in enumerate(new)]
    prog, state = _replayed(rows)
    assert len(state.buffer) == len(new)  # the history left the buffer
    before = prog.dumps(state)
    t = _us(10)
    got = dict(zip(prog.feature_names, prog.query(state, t), strict=True))
    assert got == {"distinct_x": 3, "distinct_n": 0, "distinct_s_where": 3, "distinct_s_10s": 2}
    assert dict(zip(prog.feature_names, prog.query(state, t), strict=True)) == got
    assert prog.dumps(state) == before
    assert prog.query(prog.loads(before), t) == prog.query(state, t)
    assert_parity(VIEW, frame(rows))
