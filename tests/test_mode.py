"""``mode(x)``: the most frequent non-null value, ties to the smallest (NaN above every number,
strings by code point, false before true), null when there is none. Hand-worked values on both
compilers (``ViewProgram.query`` and ``BatchProgram.features``), then parity on generated logs.
"""

from __future__ import annotations

import math
import struct
from datetime import datetime
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import featurepipe as fp
from featurepipe.compile.polars_aggs import ARRIVED, TS, BatchProgram
from featurepipe.compile.python_state import ViewProgram
from featurepipe.errors import DefinitionError
from featurepipe.parity.harness import normalize_events
from featurepipe.testing import assert_parity
from tests.schema import BASE, at, frame, row, scaled, view
from tests.test_parity_properties import E, event_logs

US = 1_000_000
NAN = math.nan
NEG_NAN = struct.unpack("<d", struct.pack("<Q", 0xFFF8000000000000))[0]
QNAN = 0x7FF8000000000000


def _bits(v: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", v))[0])


def same(got: Any, want: Any) -> bool:
    """Exact: floats by IEEE bits (NaN the canonical quiet NaN), bools are not ints."""
    if want is None:
        return got is None
    if isinstance(want, float):
        return type(got) is float and _bits(got) == (QNAN if want != want else _bits(want))
    return type(got) is type(want) and got == want


def us(seconds: float) -> int:
    return int(BASE.timestamp()) * US + round(seconds * US)


Event = tuple[float, dict[str, Any]]  # (seconds after BASE, fields), in arrival order


def both(
    features: dict[str, Any],
    events: list[Event],
    times: list[float],
    lateness: str = "1h",
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(per-event answers, batch answers) at each time (seconds), every event visible."""
    v = view(features, lateness=lateness)
    ev = normalize_events(v, frame([row(ts=at(sec), **f) for sec, f in events]))
    prog = ViewProgram(v.ir)
    state = prog.new_state()
    for seq, e in enumerate(ev.iter_rows(named=True)):
        prog.ingest(state, e, seq)
    per_event = [prog.query(state, us(t)) for t in times]
    return per_event, batch_rows(features, events, times, lateness)


def batch_rows(
    features: dict[str, Any], events: list[Event], times: list[float], lateness: str = "1h"
) -> list[tuple[Any, ...]]:
    v = view(features, lateness=lateness)
    ev = normalize_events(v, frame([row(ts=at(sec), **f) for sec, f in events]))
    q = pl.DataFrame(
        {"k": ["a"] * len(times), TS: [us(t) for t in times], ARRIVED: [len(events)] * len(times)},
        schema={"k": pl.String, TS: pl.Int64, ARRIVED: pl.Int64},
    )
    return BatchProgram(v.ir).features(ev.lazy(), q).select(list(features)).rows()


def check(feature: Any, events: list[Event], t: float, want: Any, lateness: str = "1h") -> None:
    (per_event,), (batch,) = both({"f": feature}, events, [t], lateness)
    assert same(per_event[0], want), f"per-event {per_event[0]!r}, expected {want!r}"
    assert same(batch[0], want), f"batch {batch[0]!r}, expected {want!r}"
    # and the parity harness over every query point of the log
    assert_parity(view({"f": feature}, lateness=lateness), frame([row(ts=at(s), **f) for s, f in events]))


def ev(sec: float, **fields: Any) -> Event:
    return sec, fields


# (name, feature, events, T, expected): each worked out by hand from the rule above
CASES: list[tuple[str, Any, list[Event], float, Any]] = [
    ("int: most frequent", lambda t: fp.mode(t.n), [ev(0, n=5), ev(1, n=7), ev(2, n=7)], 3, 7),
    ("int: tie to the smallest", lambda t: fp.mode(t.n),
     [ev(0, n=3), ev(1, n=1), ev(2, n=3), ev(3, n=1), ev(4, n=2)], 5, 1),
    ("int: tie among negatives and extremes", lambda t: fp.mode(t.n),
     [ev(0, n=2**63 - 1), ev(1, n=-(2**63)), ev(2, n=0)], 3, -(2**63)),
    ("int: one value", lambda t: fp.mode(t.n), [ev(0, n=-4)], 1, -4),
    ("float: tie to the smallest", lambda t: fp.mode(t.x),
     [ev(0, x=2.5), ev(1, x=-1e300), ev(2, x=math.inf), ev(3, x=-math.inf)], 4, -math.inf),
    ("float: NaN most frequent", lambda t: fp.mode(t.x), [ev(0, x=NAN), ev(1, x=NAN), ev(2, x=1.0)], 3, NAN),
    ("float: NaN loses a tie to a number", lambda t: fp.mode(t.x), [ev(0, x=NAN), ev(1, x=5.0)], 2, 5.0),
    ("float: NaN loses a tie to +inf", lambda t: fp.mode(t.x),
     [ev(0, x=NAN), ev(1, x=math.inf), ev(2, x=NAN), ev(3, x=math.inf)], 4, math.inf),
    ("float: all NaNs are one value", lambda t: fp.mode(t.x),
     [ev(0, x=NEG_NAN), ev(1, x=NAN), ev(2, x=1.0)], 3, NAN),
    ("float: a negative NaN alone leaves canonical", lambda t: fp.mode(t.x), [ev(0, x=NEG_NAN)], 1, NAN),
    ("float: -0.0 and 0.0 are one value", lambda t: fp.mode(t.x),
     [ev(0, x=-0.0), ev(1, x=0.0), ev(2, x=1.0), ev(3, x=1.0), ev(4, x=-0.0)], 5, 0.0),
    ("float: -0.0 alone is 0.0", lambda t: fp.mode(t.x), [ev(0, x=-0.0)], 1, 0.0),
    ("float: -0.0 and 0.0 counted together win", lambda t: fp.mode(t.x),
     [ev(0, x=-0.0), ev(1, x=0.0), ev(2, x=-1.0)], 3, 0.0),
    ("float: tie between 0.0 and -1.0", lambda t: fp.mode(t.x),
     [ev(0, x=-0.0), ev(1, x=0.0), ev(2, x=-1.0), ev(3, x=-1.0)], 4, -1.0),
    ("float: subnormals are distinct from 0", lambda t: fp.mode(t.x),
     [ev(0, x=5e-324), ev(1, x=0.0), ev(2, x=-5e-324)], 3, -5e-324),
    ("str: tie by code point, not canonical equivalence", lambda t: fp.mode(t.s),
     [ev(0, s="\u00e9"), ev(1, s="e\u0301"), ev(2, s="\u00e9"), ev(3, s="e\u0301"), ev(4, s="z")], 5, "e\u0301"),
    ("str: upper case before lower case", lambda t: fp.mode(t.s), [ev(0, s="a"), ev(1, s="B")], 2, "B"),
    ("str: BMP before astral (UTF-16 would differ)", lambda t: fp.mode(t.s),
     [ev(0, s="\U0001f642"), ev(1, s="\uffff")], 2, "\uffff"),
    ("str: empty string is a value", lambda t: fp.mode(t.s), [ev(0, s=""), ev(1, s="a"), ev(2, s=None)], 3, ""),
    ("str: most frequent unicode", lambda t: fp.mode(t.s),
     [ev(0, s="中国"), ev(1, s="a"), ev(2, s="中国"), ev(3, s=None), ev(4, s=None)], 5, "中国"),
    ("bool: tie to false", lambda t: fp.mode(t.b), [ev(0, b=True), ev(1, b=False)], 2, False),
    ("bool: true most frequent", lambda t: fp.mode(t.b), [ev(0, b=True), ev(1, b=False), ev(2, b=True)], 3, True),
    ("datetime: tie to the earliest", lambda t: fp.mode(t.ts),
     [ev(2), ev(1), ev(2), ev(1), ev(3)], 4, us(1)),
    ("nulls skipped", lambda t: fp.mode(t.n), [ev(0, n=None), ev(1, n=None), ev(2, n=None), ev(3, n=4)], 4, 4),
    ("only nulls: null", lambda t: fp.mode(t.x), [ev(0, x=None), ev(1, x=None)], 2, None),
    ("only nulls: default", lambda t: fp.mode(t.x, default=-1.5), [ev(0, x=None)], 1, -1.5),
    ("empty window: null", lambda t: fp.mode(t.s, window="5s"), [ev(0, s="a")], 60, None),
    ("empty window: default", lambda t: fp.mode(t.s, window="5s", default="?"), [ev(0, s="a")], 60, "?"),
    ("no event at all: default", lambda t: fp.mode(t.b, default=True), [], 1, True),
    ("where: only true conditions", lambda t: fp.mode(t.s, where=t.b),
     [ev(0, s="p", b=True), ev(1, s="q", b=None), ev(2, s="q", b=False), ev(3, s="q", b=True),
      ev(4, s="r", b=True)], 5, "p"),
    ("where: nothing passes", lambda t: fp.mode(t.n, where=t.b, default=0), [ev(0, n=1, b=False)], 1, 0),
    ("window: start inclusive", lambda t: fp.mode(t.n, window="10s"),
     [ev(0, n=1), ev(1, n=1), ev(10, n=2)], 10, 1),
    ("window: the old events have left", lambda t: fp.mode(t.n, window="10s"),
     [ev(0, n=1), ev(1, n=1), ev(10, n=2)], 11.5, 2),
    ("window: end exclusive", lambda t: fp.mode(t.n, window="10s"),
     [ev(0, n=1), ev(10, n=2), ev(10, n=2)], 10, 1),
    ("lifetime", lambda t: fp.mode(t.n), [ev(0, n=1), ev(1, n=1), ev(100, n=2)], 101, 1),
    ("hopped: start on the hop boundary", lambda t: fp.mode(t.n, window="10s", hop="5s"),
     [ev(4, n=1), ev(5, n=2), ev(6, n=2), ev(16, n=1)], 17, 2),  # start 5; sliding: 7, 1
    ("hopped: sliding would differ", lambda t: fp.mode(t.n, window="10s", hop="5s"),
     [ev(0, n=1), ev(4, n=1), ev(6, n=2), ev(12, n=3)], 14.5, 1),  # start 0; sliding: 4.5, 2
    ("out of order: windowed", lambda t: fp.mode(t.n, window="5s"),
     [ev(10, n=3), ev(11, n=4), ev(2, n=4), ev(1, n=4), ev(12, n=3)], 13, 3),
    ("out of order: lifetime", lambda t: fp.mode(t.n),
     [ev(10, n=3), ev(11, n=4), ev(2, n=4), ev(1, n=4), ev(12, n=3)], 13, 4),
]


@pytest.mark.parametrize(("feature", "events", "t", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hand_worked(feature: Any, events: list[Event], t: float, want: Any) -> None:
    check(feature, events, t, want)


def test_datetime_mode_reads_as_a_datetime() -> None:
    (per_event,), (batch,) = both({"f": lambda t: fp.mode(t.ts)}, [ev(3), ev(3), ev(1)], [4])
    assert per_event == batch == (us(3),)
    assert datetime.fromtimestamp(per_event[0] / US, BASE.tzinfo) == at(3)


def test_hopped_windows_merge_tiles() -> None:
    """lateness 1s: events behind the current hop leave the buffer for per-hop tiles, merged at
    query time; 10s window hopping every 5s. Worked by hand:
    at T = 31.5 the window starts at 30 - 10 = 20: events 20..31 (n 1 x4 at 20, 21, 22, 23,
    n 2 x4 at 24, 25, 26, 27, n 3 x4 at 28, 29, 30, 31): a three-way tie, 1 wins;
    at T = 35.5 it starts at 25: 2 x3 (25, 26, 27), 3 x4 (28..31), 4 x4 (32..35): 3."""
    events = [ev(20 + i, n=1 + i // 4) for i in range(16)]
    feature = {"f": lambda t: fp.mode(t.n, window="10s", hop="5s")}
    v = view(feature, lateness="1s")
    prog = ViewProgram(v.ir)
    state = prog.new_state()
    rows = normalize_events(v, frame([row(ts=at(s), **f) for s, f in events]))
    for seq, e in enumerate(rows.iter_rows(named=True)):
        prog.ingest(state, e, seq)
        if e["ts"] == us(31):
            assert state.tiles and state.tiles[0], "no tile: the test would not merge any"
            assert prog.query(state, us(31.5)) == (1,)
    assert prog.query(state, us(35.5)) == (3,)
    assert batch_rows(feature, events, [31.5, 35.5], lateness="1s") == [(1,), (3,)]
    assert_parity(v, frame([row(ts=at(s), **f) for s, f in events]))


def test_nan_counts_merge_across_state_bytes() -> None:
    """Two NaNs folded into the lifetime accumulator, then state to bytes and back, then one
    more NaN: three NaNs beat two 1.0s. (Counted as separate values, NaN x2 would tie 1.0 x2 and
    1.0 would win.) Also a hopped window whose NaNs sit in tiles and in the buffer."""
    feats = {
        "life": lambda t: fp.mode(t.x),
        "hop": lambda t: fp.mode(t.x, window="20s", hop="5s"),
    }
    v = view(feats, lateness="1s")
    prog = ViewProgram(v.ir)
    events = [ev(0, x=NAN), ev(1, x=NEG_NAN), ev(9, x=1.0), ev(10, x=1.0), ev(11, x=-0.0), ev(17, x=NAN)]
    rows = list(normalize_events(v, frame([row(ts=at(s), **f) for s, f in events])).iter_rows(named=True))
    state = prog.new_state()
    for seq, e in enumerate(rows[:5]):
        prog.ingest(state, e, seq)
    assert state.compacted[0] and state.tiles[0], "the NaNs should be folded already"
    state = prog.loads(prog.dumps(state))
    prog.ingest(state, rows[5], 5)
    state = prog.loads(prog.dumps(state))
    got = prog.query(state, us(17.5))
    # lifetime: NaN x3, 1.0 x2, 0.0 x1. hopped: start 15 - 20 = -5: the same events
    assert same(got[0], NAN) and same(got[1], NAN), got
    # at 25.5 the hopped window starts at 5: 1.0 x2, 0.0 x1, NaN x1 -> 1.0
    (_, hop) = prog.query(state, us(25.5))
    assert same(hop, 1.0)
    # the same answers from the batch plan
    batch = batch_rows(feats, events, [17.5, 25.5], lateness="1s")
    assert same(batch[0][0], NAN) and same(batch[0][1], NAN) and same(batch[1][1], 1.0)


def test_wire_form_is_sorted_value_count_pairs() -> None:
    from featurepipe.ir.aggs import KINDS

    kind = KINDS["mode"]
    acc = {2.0: 1, NAN: 3, -1.0: 2, 0.0: 1}
    wire = kind.to_wire(acc)
    assert repr(wire) == repr([[-1.0, 2], [0.0, 1], [2.0, 1], [NAN, 3]])
    back = kind.from_wire([[v, c] for v, c in wire])
    assert len(back) == 4 and sum(back.values()) == 7
    assert kind.to_wire({"b": 1, "a": 2, "é": 1}) == [["a", 2], ["b", 1], ["é", 1]]
    assert kind.to_wire({True: 1, False: 4}) == [[False, 4], [True, 1]]
    assert kind.to_wire({}) == []


def test_mode_result_type_is_the_input_type() -> None:
    v = view({
        "x": lambda t: fp.mode(t.x), "n": lambda t: fp.mode(t.n), "s": lambda t: fp.mode(t.s),
        "b": lambda t: fp.mode(t.b), "ts": lambda t: fp.mode(t.ts),
    })
    assert [str(f.expr.dtype) for f in v.ir.features] == ["float", "int", "str", "bool", "datetime"]
    with pytest.raises(DefinitionError, match="mode needs an input"):
        view({"f": lambda t: fp.mode(None)})


# ---- generated views and logs ------------------------------------------------------------------

ANY_INPUT = st.one_of(
    st.sampled_from([lambda t: t.x, lambda t: t.n, lambda t: t.s, lambda t: t.b, lambda t: t.ts]),
    E["float"], E["int"], E["str"], E["bool"],
    # few distinct values: many ties
    st.just(lambda t: (t.n % 3)), st.just(lambda t: t.x.round()), st.just(lambda t: t.s.slice(0, 1)),
)
WINDOWS = st.sampled_from([
    (None, None), ("1s", None), ("5s", None), ("30s", None), ("4s", "4s"), ("10s", "5s"), ("6s", "2s"),
])


@st.composite
def modes(draw: st.DrawFn) -> Any:
    arg = draw(ANY_INPUT)
    window, hop = draw(WINDOWS)
    where = draw(st.one_of(st.none(), E["bool"]))

    def build(t: Any) -> Any:
        kw: dict[str, Any] = {"window": window, "hop": hop}
        if where is not None:
            kw["where"] = where(t)
        return fp.mode(arg(t), **kw)

    return build


@settings(max_examples=scaled(150))
@given(features=st.lists(modes(), min_size=1, max_size=3), lateness=st.sampled_from(["1s", "10s", "1h"]), rows=event_logs())
def test_mode_per_event_and_batch_are_bit_identical(features: list[Any], lateness: str, rows: list[dict[str, Any]]) -> None:
    v = view({f"f{i}": g for i, g in enumerate(features)}, lateness=lateness)
    assert_parity(v, frame(rows))


def _naive_mode(values: list[Any]) -> Any:
    """A reference sharing nothing with featurepipe: canonicalize, count, sort."""
    canon = []
    for v in values:
        if v is None:
            continue
        if isinstance(v, float) and v != v:
            v = "NaN-marker"
        elif isinstance(v, float) and v == 0.0:
            v = 0.0
        canon.append(v)
    if not canon:
        return None
    counts: dict[Any, int] = {}
    for v in canon:
        counts[v] = counts.get(v, 0) + 1
    top = max(counts.values())
    tied = [v for v, c in counts.items() if c == top]
    numbers = [v for v in tied if v != "NaN-marker"]
    return min(numbers) if numbers else NAN


@settings(max_examples=scaled(60))
@given(rows=event_logs(), t=st.integers(0, 100))
def test_mode_matches_a_naive_count(rows: list[dict[str, Any]], t: int) -> None:
    """Lifetime and 10s-window modes of every input column against a plain count-and-sort."""
    cols = ["x", "n", "s", "b"]
    feats = {f"{c}{w or ''}": (lambda t, c=c, w=w: fp.mode(getattr(t, c), window=w)) for c in cols for w in (None, "10s")}
    v = view(feats)
    ev_ = normalize_events(v, frame(rows))
    key = rows[0]["k"] if rows else "a"
    q = pl.DataFrame({"k": [key], TS: [us(t)]}, schema={"k": pl.String, TS: pl.Int64})
    (batch,) = BatchProgram(v.ir).features(ev_.lazy(), q).select(list(feats)).rows()
    prog = ViewProgram(v.ir)
    state = prog.new_state()
    for seq, e in enumerate(ev_.iter_rows(named=True)):
        if e["k"] == key:
            prog.ingest(state, e, seq)
    per_event = prog.query(state, us(t))
    j = 0
    for c in cols:
        for w in (None, 10):
            seen = [
                r[c] for r in rows
                if r["k"] == key and r["ts"] < at(t) and (w is None or r["ts"] >= at(t - w))
            ]
            want = _naive_mode(seen)
            assert same(batch[j], want), (c, w, batch[j], want)
            assert same(per_event[j], want), (c, w, per_event[j], want)
            j += 1
