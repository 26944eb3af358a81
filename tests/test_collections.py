"""List and map features: ``last_k``, ``first_k``, ``last_distinct_k`` (lists) and
``count_by`` (a map), as docs/semantics.md ("Lists and maps") states them.

Hand-worked values on both compilers (``ViewProgram.query`` and ``BatchProgram.features``), then
the parity harness over each case's every query point, state bytes with tiles, definition-time
refusals, generated logs against a naive reference that shares no code with featurepipe, and
lookups from a real Redis-protocol server (frames, dicts, the CLI's JSON and training sets).
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import featurepipe as fp
from featurepipe import load_definitions
from featurepipe.compile.python_state import ViewProgram
from featurepipe.errors import DefinitionError
from featurepipe.online.lookup import OnlineReader
from featurepipe.online.materialize import materialize
from featurepipe.online.redis_conn import connect
from featurepipe.parity.harness import normalize_events
from featurepipe.store import FeatureStore
from featurepipe.testing import assert_parity
from tests.schema import BASE, at, frame, row, scaled, view
from tests.test_mode import batch_rows, both, ev, us
from tests.test_parity_properties import event_logs

pytest_plugins = ["redis_server"]  # fixture redis_url

NAN = math.nan
NEG_NAN = struct.unpack("<d", struct.pack("<Q", 0xFFF8000000000000))[0]
QNAN = 0x7FF8000000000000
Event = tuple[float, dict[str, Any]]


def _bits(v: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", v))[0])


def same(got: Any, want: Any) -> bool:
    """Exact and in order: floats by IEEE bits (NaN: the quiet NaN), maps by their entry order
    (a batch map is a list of {key, value} entries), bools are not ints."""
    if want is None:
        return got is None
    if isinstance(want, dict):
        if isinstance(got, list):  # the batch frame's layout of a map
            got = {e["key"]: e["value"] for e in got}
        return (
            isinstance(got, dict)
            and list(got) == list(want)
            and all(same(got[k], want[k]) for k in want)
        )
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(same, got, want))
    if isinstance(want, float):
        return type(got) is float and _bits(got) == (QNAN if want != want else _bits(want))
    return type(got) is type(want) and got == want


def check(feature: Any, events: list[Event], t: float, want: Any, lateness: str = "1h") -> None:
    (per_event,), (batch,) = both({"f": feature}, events, [t], lateness)
    assert same(per_event[0], want), f"per-event {per_event[0]!r}, expected {want!r}"
    assert same(batch[0], want), f"batch {batch[0]!r}, expected {want!r}"
    log = frame([row(ts=at(s), **f) for s, f in events])
    assert_parity(view({"f": feature}, lateness=lateness), log)


# (name, feature, events in arrival order, T in seconds, expected): each worked out by hand
CASES: list[tuple[str, Any, list[Event], float, Any]] = [
    # -- last_k / first_k
    ("last_k: newest first", lambda t: fp.last_k(t.n, 3),
     [ev(0, n=1), ev(1, n=2), ev(2, n=3), ev(3, n=4)], 4, [4, 3, 2]),
    ("first_k: oldest first", lambda t: fp.first_k(t.n, 3),
     [ev(0, n=1), ev(1, n=2), ev(2, n=3), ev(3, n=4)], 4, [1, 2, 3]),
    ("last_k: fewer than k", lambda t: fp.last_k(t.n, 3), [ev(0, n=5)], 1, [5]),
    ("last_k: a tie in time goes to the later arrival", lambda t: fp.last_k(t.n, 2),
     [ev(1, n=1), ev(1, n=2), ev(0, n=9)], 2, [2, 1]),
    ("first_k: a tie in time goes to the earlier arrival", lambda t: fp.first_k(t.n, 2),
     [ev(1, n=1), ev(1, n=2), ev(2, n=9)], 3, [1, 2]),
    ("last_k: out of order", lambda t: fp.last_k(t.n, 2),
     [ev(5, n=5), ev(1, n=1), ev(3, n=3)], 6, [5, 3]),
    ("first_k: out of order", lambda t: fp.first_k(t.n, 2),
     [ev(5, n=5), ev(3, n=3), ev(1, n=1)], 6, [1, 3]),
    ("last_k: nulls skipped", lambda t: fp.last_k(t.n, 2),
     [ev(0, n=1), ev(1, n=None), ev(2, n=None)], 3, [1]),
    ("last_k: only nulls is null", lambda t: fp.last_k(t.n, 2), [ev(0, n=None)], 1, None),
    ("last_k: no event is null", lambda t: fp.last_k(t.n, 2), [], 1, None),
    ("last_k: window start inclusive, end exclusive", lambda t: fp.last_k(t.n, 5, window="10s"),
     [ev(0, n=1), ev(5, n=2), ev(10, n=3)], 10, [2, 1]),
    ("last_k: the old events have left", lambda t: fp.last_k(t.n, 5, window="10s"),
     [ev(0, n=1), ev(5, n=2), ev(12, n=3)], 12.5, [3, 2]),
    ("first_k: the old events have left", lambda t: fp.first_k(t.n, 1, window="10s"),
     [ev(0, n=1), ev(5, n=2), ev(12, n=3)], 12.5, [2]),
    ("last_k: empty window is null", lambda t: fp.last_k(t.n, 2, window="5s"), [ev(0, n=1)], 60, None),
    ("last_k: where", lambda t: fp.last_k(t.n, 3, where=t.b),
     [ev(0, n=1, b=True), ev(1, n=2, b=False), ev(2, n=3, b=None), ev(3, n=4, b=True)], 4, [4, 1]),
    ("last_k: -0.0 stays, NaN leaves quiet", lambda t: fp.last_k(t.x, 3),
     [ev(0, x=-0.0), ev(1, x=NEG_NAN), ev(2, x=0.0)], 3, [0.0, NAN, -0.0]),
    ("first_k: extreme ints", lambda t: fp.first_k(t.n, 2),
     [ev(0, n=2**63 - 1), ev(1, n=-(2**63))], 2, [2**63 - 1, -(2**63)]),
    ("last_k: unicode", lambda t: fp.last_k(t.s, 2),
     [ev(0, s="中国"), ev(1, s="🙂"), ev(2, s="")], 3, ["", "🙂"]),
    ("last_k: bools", lambda t: fp.last_k(t.b, 3),
     [ev(0, b=True), ev(1, b=False), ev(2, b=True)], 3, [True, False, True]),
    ("last_k: datetimes", lambda t: fp.last_k(t.ts, 2), [ev(0), ev(3), ev(1)], 4, [us(3), us(1)]),
    # 10s window hopping every 5s at 17: it starts at 15 - 10 = 5 (sliding: 7)
    ("last_k: hopped", lambda t: fp.last_k(t.n, 3, window="10s", hop="5s"),
     [ev(4, n=1), ev(5, n=2), ev(6, n=3), ev(16, n=4)], 17, [4, 3, 2]),
    ("first_k: hopped", lambda t: fp.first_k(t.n, 2, window="10s", hop="5s"),
     [ev(4, n=1), ev(5, n=2), ev(6, n=3), ev(16, n=4)], 17, [2, 3]),
    # -- last_distinct_k
    ("last_distinct_k: by each value's newest event", lambda t: fp.last_distinct_k(t.s, 2),
     [ev(0, s="a"), ev(1, s="b"), ev(2, s="a"), ev(3, s="c")], 4, ["c", "a"]),
    ("last_distinct_k: fewer distinct than k", lambda t: fp.last_distinct_k(t.s, 5),
     [ev(0, s="a"), ev(1, s="b"), ev(2, s="a")], 3, ["a", "b"]),
    ("last_distinct_k: out of order", lambda t: fp.last_distinct_k(t.s, 2),
     [ev(5, s="a"), ev(1, s="b"), ev(3, s="a"), ev(4, s="b")], 6, ["a", "b"]),
    # k = 2: a, b, c push a out; a comes back with a newer event
    ("last_distinct_k: a value pushed out comes back", lambda t: fp.last_distinct_k(t.s, 2),
     [ev(0, s="a"), ev(1, s="b"), ev(2, s="c"), ev(3, s="a")], 4, ["a", "c"]),
    # a late event older than the k kept ones changes nothing
    ("last_distinct_k: a late old value stays out", lambda t: fp.last_distinct_k(t.s, 2),
     [ev(0, s="a"), ev(1, s="b"), ev(2, s="c"), ev(0.5, s="d")], 3, ["c", "b"]),
    ("last_distinct_k: a late event of a kept value does not move it back",
     lambda t: fp.last_distinct_k(t.s, 2),
     [ev(1, s="a"), ev(2, s="b"), ev(0, s="b")], 3, ["b", "a"]),
    ("last_distinct_k: a tie in time goes to the later arrival", lambda t: fp.last_distinct_k(t.s, 2),
     [ev(1, s="a"), ev(1, s="b")], 2, ["b", "a"]),
    ("last_distinct_k: -0.0 is 0.0", lambda t: fp.last_distinct_k(t.x, 3),
     [ev(0, x=-0.0), ev(1, x=1.0), ev(2, x=0.0)], 3, [0.0, 1.0]),
    ("last_distinct_k: -0.0 alone is 0.0", lambda t: fp.last_distinct_k(t.x, 3), [ev(0, x=-0.0)], 1, [0.0]),
    ("last_distinct_k: all NaNs are one value", lambda t: fp.last_distinct_k(t.x, 3),
     [ev(0, x=NAN), ev(1, x=2.0), ev(2, x=NEG_NAN)], 3, [NAN, 2.0]),
    ("last_distinct_k: window", lambda t: fp.last_distinct_k(t.s, 3, window="10s"),
     [ev(0, s="a"), ev(5, s="b"), ev(11, s="a")], 11.5, ["a", "b"]),
    ("last_distinct_k: hopped", lambda t: fp.last_distinct_k(t.n, 3, window="10s", hop="5s"),
     [ev(4, n=1), ev(5, n=2), ev(6, n=2), ev(16, n=1)], 17, [1, 2]),
    ("last_distinct_k: where and nulls", lambda t: fp.last_distinct_k(t.s, 3, where=t.b),
     [ev(0, s="a", b=True), ev(1, s="b", b=False), ev(2, s=None, b=True)], 3, ["a"]),
    ("last_distinct_k: nothing passes", lambda t: fp.last_distinct_k(t.s, 3, where=t.b),
     [ev(0, s="a", b=False)], 1, None),
    # -- count_by
    ("count_by: count descending", lambda t: fp.count_by(t.s),
     [ev(0, s="b"), ev(1, s="a"), ev(2, s="a"), ev(3, s="c"), ev(4, s="b"), ev(5, s="a")], 6,
     {"a": 3, "b": 2, "c": 1}),
    ("count_by: top_k", lambda t: fp.count_by(t.s, top_k=2),
     [ev(0, s="b"), ev(1, s="a"), ev(2, s="a"), ev(3, s="c"), ev(4, s="b"), ev(5, s="a")], 6,
     {"a": 3, "b": 2}),
    ("count_by: a tie goes to the smaller value", lambda t: fp.count_by(t.s, top_k=1),
     [ev(0, s="b"), ev(1, s="a")], 2, {"a": 1}),
    ("count_by: ints, negatives first in a tie", lambda t: fp.count_by(t.n),
     [ev(0, n=5), ev(1, n=-1), ev(2, n=0), ev(3, n=5), ev(4, n=-1)], 5, {-1: 2, 5: 2, 0: 1}),
    ("count_by: false before true", lambda t: fp.count_by(t.b),
     [ev(0, b=True), ev(1, b=False)], 2, {False: 1, True: 1}),
    ("count_by: strings by code point", lambda t: fp.count_by(t.s),
     [ev(0, s="\U0001f642"), ev(1, s="\uffff"), ev(2, s="B"), ev(3, s="a")], 4,
     {"B": 1, "a": 1, "\uffff": 1, "\U0001f642": 1}),
    ("count_by: nulls skipped", lambda t: fp.count_by(t.s),
     [ev(0, s=None), ev(1, s="x"), ev(2, s=None)], 3, {"x": 1}),
    ("count_by: only nulls is null", lambda t: fp.count_by(t.s), [ev(0, s=None)], 1, None),
    ("count_by: empty window is null", lambda t: fp.count_by(t.n, window="5s"), [ev(0, n=1)], 60, None),
    ("count_by: where", lambda t: fp.count_by(t.s, where=t.b),
     [ev(0, s="a", b=True), ev(1, s="a", b=False), ev(2, s="b", b=True)], 3, {"a": 1, "b": 1}),
    ("count_by: window", lambda t: fp.count_by(t.n, window="10s"),
     [ev(0, n=1), ev(1, n=1), ev(5, n=2), ev(10.5, n=2)], 10.5, {1: 1, 2: 1}),
    ("count_by: hopped", lambda t: fp.count_by(t.n, window="10s", hop="5s"),
     [ev(4, n=1), ev(5, n=2), ev(6, n=2), ev(16, n=1)], 17, {2: 2, 1: 1}),
    ("count_by: out of order, lifetime", lambda t: fp.count_by(t.n, top_k=2),
     [ev(10, n=3), ev(11, n=4), ev(2, n=4), ev(1, n=4), ev(12, n=3), ev(0, n=7)], 13, {4: 3, 3: 2}),
]


@pytest.mark.parametrize(("feature", "events", "t", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hand_worked(feature: Any, events: list[Event], t: float, want: Any) -> None:
    check(feature, events, t, want)


def test_result_types_and_their_polars_columns() -> None:
    v = view({
        "lx": lambda t: fp.last_k(t.x, 2), "ln": lambda t: fp.first_k(t.n, 2),
        "ls": lambda t: fp.last_distinct_k(t.s, 2), "lb": lambda t: fp.last_k(t.b, 2),
        "lt": lambda t: fp.last_k(t.ts, 2), "cn": lambda t: fp.count_by(t.n),
        "cs": lambda t: fp.count_by(t.s), "cb": lambda t: fp.count_by(t.b),
    })
    assert [str(f.expr.dtype) for f in v.ir.features] == [
        "list[float]", "list[int]", "list[str]", "list[bool]", "list[datetime]",
        "map[int,int]", "map[str,int]", "map[bool,int]",
    ]


@pytest.mark.parametrize(
    ("feature", "message"),
    [
        (lambda t: fp.last_k(t.n, 0), "k=0 must be an integer from 1 to 10000"),
        (lambda t: fp.last_k(t.n, True), "k=True must be an integer"),
        (lambda t: fp.first_k(t.n, 10_001), "k=10001 must be an integer"),
        (lambda t: fp.last_distinct_k(t.n, 2.0), "k=2.0 must be an integer"),
        (lambda t: fp.count_by(t.s, top_k=0), "top_k=0 must be an integer"),
        (lambda t: fp.count_by(t.x), "count_by needs an int, str or bool input"),
        (lambda t: fp.count_by(t.ts), "count_by needs an int, str or bool input"),
        (lambda t: fp.last_k(t.n, 2) + 1, "list and map features are served as they are"),
        (lambda t: fp.last_k(t.s, 2) == "a", "list and map features are served as they are"),
        (lambda t: fp.coalesce(fp.count_by(t.s), fp.count_by(t.s)), "list and map features"),
        (lambda t: fp.mode(fp.last_k(t.n, 2)), "aggregations cannot be nested"),
    ],
)
def test_refused_at_definition_time(feature: Any, message: str) -> None:
    with pytest.raises(DefinitionError, match=message.replace("(", r"\(").replace(".", r"\.")):
        view({"f": feature})


def test_a_derived_feature_may_ask_whether_a_list_is_null() -> None:
    feats = {
        "recent": lambda t: fp.last_k(t.n, 2, window="5s"),
        "none_recent": fp.feature("recent").is_null(),
    }
    per_event, batch = both(feats, [ev(0, n=1)], [1, 60])
    assert per_event == batch == [([1], False), (None, True)]


def test_list_and_map_state_survives_bytes_and_tiles() -> None:
    """lateness 1s: events behind the current hop leave the buffer for per-hop tiles; the state
    goes to bytes and back between events. Worked by hand, 10s window hopping every 5s:
    at T = 31.5 it starts at 30 - 10 = 20: n = 20..31 -> last 3 [31, 30, 29], first 2 [20, 21],
    counts of n % 3 over 20..31: 0 (21, 24, 27, 30), 1 (22, 25, 28, 31), 2 (20, 23, 26, 29): 4 each;
    lifetime last_distinct_k(n % 3, 2) at 31.5: 31 % 3 = 1 newest, then 30 % 3 = 0."""
    feats = {
        "last3": lambda t: fp.last_k(t.n, 3, window="10s", hop="5s"),
        "first2": lambda t: fp.first_k(t.n, 2, window="10s", hop="5s"),
        "counts": lambda t: fp.count_by(t.n % 3, window="10s", hop="5s"),
        "mods": lambda t: fp.last_distinct_k(t.n % 3, 2),
        "first_ever": lambda t: fp.first_k(t.n, 2),
    }
    events = [ev(s, n=s) for s in range(12, 32)]
    v = view(feats, lateness="1s")
    prog = ViewProgram(v.ir)
    state = prog.new_state()
    rows = normalize_events(v, frame([row(ts=at(s), **f) for s, f in events]))
    for seq, e in enumerate(rows.iter_rows(named=True)):
        prog.ingest(state, e, seq)
        state = prog.loads(prog.dumps(state))
    assert state.tiles and state.tiles[0], "no tile: the test would not merge any"
    want = ([31, 30, 29], [20, 21], {0: 4, 1: 4, 2: 4}, [1, 0], [12, 13])
    got = prog.query(state, us(31.5))
    assert all(same(g, w) for g, w in zip(got, want, strict=True)), got
    (batch,) = batch_rows(feats, events, [31.5], lateness="1s")
    assert all(same(g, w) for g, w in zip(batch, want, strict=True)), batch
    assert_parity(v, frame([row(ts=at(s), **f) for s, f in events]))


def test_wire_forms_are_deterministic() -> None:
    from featurepipe.ir.aggs import KINDS

    last = KINDS["last_k"]
    assert last.to_wire([(5, 1, "x"), (3, 0, "y")]) == [(5, 1, "x"), (3, 0, "y")]
    assert last.from_wire([[5, 1, "x"], [3, 0, "y"]]) == [(5, 1, "x"), (3, 0, "y")]
    distinct = KINDS["last_distinct_k"]
    # by (ts, seq), whatever the dict's order
    assert distinct.to_wire({"b": (2, 0), "a": (1, 5)}) == [["a", 1, 5], ["b", 2, 0]]
    assert distinct.to_wire({"a": (1, 5), "b": (2, 0)}) == [["a", 1, 5], ["b", 2, 0]]


# ---- generated logs against a naive reference -----------------------------------------------


def _canon(v: Any) -> Any:
    if isinstance(v, float) and v != v:
        return "NaN"
    if isinstance(v, float) and v == 0.0:
        return 0.0
    return v


def _naive(kind: str, k: int, events: list[tuple[int, int, Any]]) -> Any:
    """Sort, slice, count: the spec read literally, over (ts, arrival, value) of the window's
    events with a non-null value. Shares no code with featurepipe."""
    ordered = sorted(events, key=lambda e: (e[0], e[1]))
    values = [v for _, _, v in ordered]
    if not values:
        return None
    if kind == "last_k":
        return [NAN if v != v else v for v in values[::-1][:k]]
    if kind == "first_k":
        return [NAN if v != v else v for v in values[:k]]
    if kind == "last_distinct_k":
        seen: list[Any] = []
        for v in values[::-1]:
            if _canon(v) not in [_canon(s) for s in seen]:
                seen.append(v)
        return [NAN if v != v else (0.0 if v == 0.0 and isinstance(v, float) else v) for v in seen[:k]]
    counts: dict[Any, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    entries = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return dict(entries[:k])


@settings(max_examples=scaled(150), deadline=None)
@given(
    rows=event_logs(),
    kind=st.sampled_from(["last_k", "first_k", "last_distinct_k", "count_by"]),
    field=st.sampled_from(["x", "n", "s", "b"]),
    k=st.integers(1, 4),
    window=st.sampled_from([None, 5, 30]),
    t=st.floats(0, 100).map(lambda v: round(v, 3)),
)
def test_generated_logs_match_a_naive_reference(
    rows: list[dict[str, Any]], kind: str, field: str, k: int, window: int | None, t: float
) -> None:
    if kind == "count_by" and field == "x":
        field = "n"
    opts: dict[str, Any] = {"window": None if window is None else f"{window}s"}
    if kind == "count_by":
        opts["top_k"] = k
    else:
        opts["k"] = k
    feats = {"f": lambda e: getattr(fp, kind)(getattr(e, field), **opts)}
    events = [((r["ts"] - BASE).total_seconds(), {field: r[field]}) for r in rows]
    # the naive side: the events before t (and in the window), by (ts, arrival)
    tq = us(t)
    visible = [
        (us(s), i, f[field])
        for i, (s, f) in enumerate(events)
        if f[field] is not None and us(s) < tq and (window is None or us(s) >= tq - window * 1_000_000)
    ]
    want = _naive(kind, k, visible)
    (per_event,), (batch,) = both(feats, events, [t])
    assert same(per_event[0], want), (per_event[0], want)
    assert same(batch[0], want), (batch[0], want)


# ---- online: a real Redis-protocol server ---------------------------------------------------

DEFS = """
from datetime import datetime

from pydantic import BaseModel

import featurepipe as fp


class Tx(BaseModel):
    user_id: str
    amount: float | None
    country: str | None
    ts: datetime


tx = fp.Source("list_tx", schema=Tx, timestamp="ts", batch=fp.ParquetSource("data/tx/"))
user = fp.Entity("user", key="user_id")


@fp.feature_view(entity=user, source=tx, lateness="1h")
def recent(t):
    return {
        "last_amounts": fp.last_k(t.amount, 2),
        "first_countries": fp.first_k(t.country, 2, window="1d"),
        "countries": fp.last_distinct_k(t.country, 3),
        "country_counts": fp.count_by(t.country, window="1d", hop="1h"),
        "last_times": fp.last_k(t.ts, 2),
        "n": fp.count(),
    }
"""
T0 = datetime(2026, 3, 1, tzinfo=UTC)
UNTIL = T0 + timedelta(hours=1)
TX = {
    "user_id": ["u1", "u1", "u2", "u1", "u1"],
    "amount": [10.0, -0.0, 4.0, None, 30.5],
    "country": ["US", "FR", None, "US", "DE"],
    "ts": [T0 + timedelta(minutes=m) for m in (10, 20, 25, 30, 40)],
}
# by hand, at UNTIL: u1's events 10 (10.0 US), 20 (-0.0 FR), 30 (null US), 40 (30.5 DE)
U1 = {
    "last_amounts": [30.5, -0.0],
    "first_countries": ["US", "FR"],
    "countries": ["DE", "US", "FR"],
    "country_counts": {"US": 2, "DE": 1, "FR": 1},
    "last_times": [T0 + timedelta(minutes=40), T0 + timedelta(minutes=30)],
    "n": 4,
}
U2 = {  # one event, null country
    "last_amounts": [4.0], "first_countries": None, "countries": None, "country_counts": None,
    "last_times": [T0 + timedelta(minutes=25)], "n": 1,
}


@pytest.fixture(scope="module")
def repo(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("collections")
    (root / "feature_defs").mkdir()
    (root / "feature_defs" / "recent.py").write_text(DEFS)
    (root / "data" / "tx").mkdir(parents=True)
    pl.DataFrame(
        TX,
        schema={"user_id": pl.String, "amount": pl.Float64, "country": pl.String,
                "ts": pl.Datetime("us", "UTC")},
    ).write_parquet(root / "data" / "tx" / "part-0.parquet")
    prefix = f"fptest-lists-{uuid.uuid4().hex[:12]}"
    client = connect(redis_url)
    materialize(load_definitions(root / "feature_defs").view("recent"), UNTIL, client, root=root, prefix=prefix)
    try:
        yield root, prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def _as_python(row: dict[str, Any]) -> dict[str, Any]:
    """Epoch micros of a list of datetimes as datetimes (how a frame shows them)."""
    out = dict(row)
    if out.get("last_times") is not None and isinstance(out["last_times"][0], int):
        out["last_times"] = [datetime.fromtimestamp(v / 1e6, UTC) for v in out["last_times"]]
    return out


def test_lookups_serve_lists_and_maps(repo: tuple[Path, str], redis_url: str) -> None:
    root, prefix = repo
    store = FeatureStore(root, redis_url=redis_url, prefix=prefix)
    df = store.get_online_features({"user_id": ["u1", "u2", "u3"]}, ["recent"], at=UNTIL)
    assert df.schema["last_amounts"] == pl.List(pl.Float64)
    assert df.schema["last_times"] == pl.List(pl.Datetime("us", "UTC"))
    assert df.schema["country_counts"] == pl.List(pl.Struct({"key": pl.String, "value": pl.Int64}))
    rows = df.to_dicts()
    for got, want in zip(rows[:2], [U1, U2], strict=True):
        for name, value in want.items():
            assert same(got[name], value), (name, got[name], value)
    assert rows[2]["recent_found"] is False and rows[2]["last_amounts"] is None
    # the same from the dict form (maps as dicts, datetimes as epoch micros)
    reader = OnlineReader(connect(redis_url), [store.definitions.view("recent")], prefix)
    (u1,) = reader.read(["u1"], {"recent": list(U1)}, at_us=int(UNTIL.timestamp()) * 1_000_000)
    u1 = _as_python(u1)
    assert all(same(u1[n], v) for n, v in U1.items()), u1


def test_training_set_lists_and_maps_equal_the_lookup(repo: tuple[Path, str], redis_url: str) -> None:
    root, prefix = repo
    store = FeatureStore(root, redis_url=redis_url, prefix=prefix)
    labels = pl.DataFrame({"user_id": ["u1", "u2"], "event_timestamp": [UNTIL, UNTIL]})
    train = store.get_historical_features(labels, ["recent"])
    online = store.get_online_features({"user_id": ["u1", "u2"]}, ["recent"], at=UNTIL)
    for name in U1:
        assert train.schema[name] == online.schema[name], name
        for got, want in zip(train[name].to_list(), [U1[name], U2[name]], strict=True):
            assert same(got, want), (name, got, want)


def test_cli_get_shows_maps_as_json_objects(repo: tuple[Path, str], redis_url: str) -> None:
    root, prefix = repo
    env = {**os.environ, "COLUMNS": "250"}
    out = subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", "get", "--entity", "user_id=u1", "--features",
         "recent", "--at", "2026-03-01T01:00:00Z", "--json", "--repo", str(root),
         "--redis-url", redis_url, "--prefix", prefix],
        cwd=root, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (got,) = json.loads(out.stdout)
    assert got["country_counts"] == {"US": 2, "DE": 1, "FR": 1}
    assert list(got["country_counts"]) == ["US", "DE", "FR"]
    assert got["countries"] == ["DE", "US", "FR"] and got["last_amounts"] == [30.5, -0.0]
    table = subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", "get", "--entity", "user_id=u1", "--features",
         "recent", "--at", "2026-03-01T01:00:00Z", "--repo", str(root),
         "--redis-url", redis_url, "--prefix", prefix],
        cwd=root, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "{'US': 2, 'DE': 1, 'FR': 1}" in table.stdout


# ---- by=: bucketed aggregations (maps) ----------------------------------------------------------

BUCKET_CASES: list[tuple[str, Any, list[Event], float, Any]] = [
    ("count by: ordered by bucket", lambda t: fp.count(by=t.s),
     [ev(0, s="b"), ev(1, s="a"), ev(2, s="b"), ev(3, s=None)], 4, {"a": 1, "b": 2}),
    ("count of a field by: nulls of the field skipped", lambda t: fp.count(t.x, by=t.s),
     [ev(0, s="a", x=None), ev(1, s="a", x=1.0), ev(2, s="b", x=None)], 3, {"a": 1}),
    ("sum by: exact per bucket", lambda t: fp.sum(t.x, by=t.s),
     [ev(0, s="a", x=0.1), ev(1, s="b", x=5.0), ev(2, s="a", x=0.2), ev(3, s="a", x=0.3)], 4,
     {"a": 0.6000000000003638, "b": 5.0}),  # docs/semantics.md: fixed-point 0.1 + 0.2 + 0.3
    ("sum of ints by bool", lambda t: fp.sum(t.n, by=t.b),
     [ev(0, n=2, b=True), ev(1, n=-7, b=False), ev(2, n=3, b=True), ev(3, n=1, b=None)], 4,
     {False: -7, True: 5}),
    ("mean by int buckets, negatives first", lambda t: fp.mean(t.x, by=t.n),
     [ev(0, n=3, x=1.0), ev(1, n=-1, x=2.0), ev(2, n=3, x=4.0)], 3, {-1: 2.0, 3: 2.5}),
    ("max by, NaN in one bucket only", lambda t: fp.max(t.x, by=t.s),
     [ev(0, s="a", x=NAN), ev(1, s="b", x=-1.0), ev(2, s="a", x=5.0)], 3, {"a": NAN, "b": -1.0}),
    ("min by, -0.0 is 0.0", lambda t: fp.min(t.x, by=t.s), [ev(0, s="z", x=-0.0)], 1, {"z": 0.0}),
    ("var by: null below two values", lambda t: fp.var(t.x, by=t.s),
     [ev(0, s="a", x=1.0), ev(1, s="a", x=3.0), ev(2, s="b", x=1.0)], 3, {"a": 2.0, "b": None}),
    ("sum by with where", lambda t: fp.sum(t.n, by=t.s, where=t.b),
     [ev(0, s="a", n=1, b=True), ev(1, s="b", n=2, b=False), ev(2, s="a", n=4, b=None)], 3, {"a": 1}),
    ("count by: no bucket at all is null", lambda t: fp.count(by=t.s), [ev(0, s=None)], 1, None),
    ("count by: empty window is null", lambda t: fp.count(by=t.s, window="5s"), [ev(0, s="a")], 60, None),
    ("sum by, window", lambda t: fp.sum(t.n, by=t.s, window="10s"),
     [ev(0, s="a", n=1), ev(5, s="a", n=2), ev(12, s="b", n=4)], 12.5, {"a": 2, "b": 4}),
    # 10s window hopping every 5s at 17: it starts at 5 (sliding: 7)
    ("count by, hopped", lambda t: fp.count(by=t.s, window="10s", hop="5s"),
     [ev(4, s="a"), ev(5, s="a"), ev(6, s="b"), ev(16, s="a")], 17, {"a": 2, "b": 1}),
    # floor modulo (docs/semantics.md): -1 % 2 is 1
    ("by a derived bucket", lambda t: fp.count(by=t.n % 2),
     [ev(0, n=3), ev(1, n=4), ev(2, n=5), ev(3, n=-1)], 4, {0: 1, 1: 3}),
]


@pytest.mark.parametrize(
    ("feature", "events", "t", "want"), [c[1:] for c in BUCKET_CASES], ids=[c[0] for c in BUCKET_CASES]
)
def test_bucketed_hand_worked(feature: Any, events: list[Event], t: float, want: Any) -> None:
    check(feature, events, t, want)


@pytest.mark.parametrize(
    ("feature", "message"),
    [
        (lambda t: fp.count(by=t.x), "by= needs an int, str or bool expression"),
        (lambda t: fp.sum(t.n, by=t.ts), "by= needs an int, str or bool expression"),
        (lambda t: fp.sum(t.n, by=t.s, default=0), "takes no default"),
        (lambda t: fp.sum(t.n, by=t.s) * 2, "list and map features are served as they are"),
    ],
)
def test_bucketed_refusals(feature: Any, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        view({"f": feature})


def test_by_is_refused_where_not_offered() -> None:
    from featurepipe.dsl.expr import _agg

    with pytest.raises(fp.UnsupportedOperationError, match="by= is offered for count, sum"):
        view({"f": lambda t: _agg("first", t.n, None, None, None, None, t.s)})


def test_bucketed_tiles_are_not_changed_by_queries() -> None:
    """Tiles (lateness 1s, 10s window hopping every 5s) hold per-bucket sums; a query merges
    them into its own map and must not change them: the same query twice gives the same map,
    without the state going to bytes in between. The buffer holds only bucket False (the events
    at 30 and 31), so bucket True comes from two tiles (20..24, 25..29), merged one into the
    other. By hand at T = 31.5 (window from 20): {False: 2, True: 10}."""
    feats = {"sums": lambda t: fp.sum(t.n, by=t.x < 29.5, window="10s", hop="5s")}
    events = [ev(s, n=1, x=float(s)) for s in range(12, 32)]
    v = view(feats, lateness="1s")
    prog = ViewProgram(v.ir)
    state = prog.new_state()
    for seq, e in enumerate(normalize_events(v, frame([row(ts=at(s), **f) for s, f in events])).iter_rows(named=True)):
        prog.ingest(state, e, seq)
    assert state.tiles and len(state.tiles[0]) >= 2, "need several tiles holding the same buckets"
    first = prog.query(state, us(31.5))
    again = prog.query(state, us(31.5))
    assert first == again == ({False: 2, True: 10},)
    (batch,) = batch_rows(feats, events, [31.5], lateness="1s")
    assert same(batch[0], {False: 2, True: 10})


def test_a_caller_changing_a_served_list_does_not_change_the_next_answer(
    repo: tuple[Path, str], redis_url: str
) -> None:
    """Lookups keep recent answers (the answer cache); the lists and maps a caller receives are
    its own: mutating them must not alter what the next lookup serves."""
    root, prefix = repo
    view = load_definitions(root / "feature_defs").view("recent")
    reader = OnlineReader(connect(redis_url), [view], prefix)
    at_us = int(UNTIL.timestamp()) * 1_000_000
    names = ["last_amounts", "countries"]
    (first,) = reader.read(["u1"], {"recent": names}, at_us=at_us)
    first["last_amounts"].append(999.0)
    first["countries"].clear()
    (again,) = reader.read(["u1"], {"recent": names}, at_us=at_us)
    assert reader.cache is not None and reader.cache.reused >= 1, "the second read must be a cache hit"
    assert same(again["last_amounts"], [30.5, -0.0]) and again["countries"] == ["DE", "US", "FR"]
    again["last_amounts"].clear()
    (third,) = reader.read(["u1"], {"recent": names}, at_us=at_us)
    assert same(third["last_amounts"], [30.5, -0.0])


@pytest.mark.parametrize("path", ["prefix sums", "pairs"])
def test_bucket_kernels_agree_with_the_per_event_path(path: str) -> None:
    """The batch plan computes per-bucket sums from prefix sums per (entity, bucket), unless
    the (query, event) pairs are less work (many distinct values in short windows). Each path
    is forced by the data here and held to the per-event path at every query point: few
    buckets over a lifetime (prefix sums), or a new value every 2 s in a 1 s window (pairs)."""
    if path == "prefix sums":
        events = [ev(i * 0.5, s="ab"[i % 2], n=i) for i in range(60)]
        feats = {
            "c": lambda t: fp.count_by(t.s), "s": lambda t: fp.sum(t.n, by=t.s),
            "v": lambda t: fp.var(t.n, by=t.s, window="10s"), "m": lambda t: fp.mean(t.n, by=t.s),
        }
    else:
        events = [ev(i * 2.0, s=f"v{i}", n=i) for i in range(40)]
        feats = {
            "c": lambda t: fp.count_by(t.s, window="1s"), "s": lambda t: fp.sum(t.n, by=t.s, window="1s"),
            "v": lambda t: fp.var(t.n, by=t.s, window="1s"), "m": lambda t: fp.mean(t.n, by=t.s, window="1s"),
        }
    log = frame([row(ts=at(s), **f) for s, f in events])
    report = assert_parity(view(feats), log)
    assert report.queries >= len(events)
    (got,) = batch_rows(feats, events, [events[-1][0] + 0.25])
    want_sum = (
        {"a": sum(range(0, 60, 2)), "b": sum(range(1, 60, 2))} if path == "prefix sums"
        else {"v39": 39}
    )
    assert same(got[1], want_sum), got


def test_two_rows_of_one_entity_have_their_own_lists(repo: tuple[Path, str], redis_url: str) -> None:
    root, prefix = repo
    view = load_definitions(root / "feature_defs").view("recent")
    reader = OnlineReader(connect(redis_url), [view], prefix)
    at_us = int(UNTIL.timestamp()) * 1_000_000
    rows = reader.read_keyed({"user_id": ["u1", "u1"]}, {"recent": ["last_amounts", "country_counts"]}, at_us=at_us)
    rows[0]["last_amounts"].append(1.0)
    rows[0]["country_counts"].clear()
    assert same(rows[1]["last_amounts"], [30.5, -0.0])
    assert rows[1]["country_counts"] == {"US": 2, "DE": 1, "FR": 1}


def test_by_gives_maps_of_numbers_only() -> None:
    with pytest.raises(fp.UnsupportedOperationError, match="max of a datetime input per bucket"):
        view({"f": lambda t: fp.max(t.ts, by=t.s)})
