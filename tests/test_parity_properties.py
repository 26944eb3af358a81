"""Differential tests: random expression trees x random event logs, batch vs per-event.

Generated logs have nulls, equal timestamps, out-of-order arrival, unicode, +-1e300, subnormals,
infinities, -0.0 and empty windows. Any differing bit fails the test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from unittest.mock import patch

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

import featurepipe as fp
from featurepipe.compile import python_state
from featurepipe.compile.python_state import ViewProgram
from featurepipe.dsl.expr import Expr
from featurepipe.testing import assert_parity
from tests.schema import at, frame, scaled, view

FLOATS = st.one_of(
    st.none(),
    st.sampled_from([0.0, -0.0, 1e300, -1e300, 5e-324, -5e-324, 2.2250738585072014e-308,
                     math.inf, -math.inf, math.nan, 0.1, -2.5, 2.5, 1e16, 4.5e15]),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(min_value=-1000, max_value=1000).map(lambda v: round(v, 2)),
)
INTS = st.one_of(
    st.none(),
    st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 2**62, 7, -7, 100]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-50, max_value=50),
)
TEXT = st.one_of(
    st.none(),
    st.sampled_from(["", "a", "US", " Web ", "ǅİß", "ΑΣ", "中国", "straße", "\t x\n", "e\u0301",
                     "\ua7cc", "A\U00010d50", "ꟍ"]),
    st.text(max_size=6),
)
BOOLS = st.one_of(st.none(), st.booleans())

lit_float = st.sampled_from([0.0, -0.0, 1.5, -3.0, 1e300, 1e-310, math.inf, math.nan, 100.0])
lit_int = st.sampled_from([0, 1, -1, 3, 7, -100, 2**62, -(2**63)])
lit_text = st.sampled_from(["", "a", "S", "中", "ß", " "])

Gen = Callable[[Any], Expr]  # a function of the symbolic row t


def _unary(inner: st.SearchStrategy[Gen], f: Callable[[Expr], Expr]) -> st.SearchStrategy[Gen]:
    return inner.map(lambda g: lambda t: f(g(t)))


def _binary(a: st.SearchStrategy[Gen], b: st.SearchStrategy[Gen], f: Callable[[Expr, Expr], Expr]) -> st.SearchStrategy[Gen]:
    return st.tuples(a, b).map(lambda p: lambda t: f(p[0](t), p[1](t)))


def exprs() -> dict[str, st.SearchStrategy[Gen]]:
    leaf_f = st.one_of(st.just(lambda t: t.x), lit_float.map(lambda v: lambda t: fp.lit(v)))
    leaf_i = st.one_of(st.just(lambda t: t.n), lit_int.map(lambda v: lambda t: fp.lit(v)))
    leaf_s = st.one_of(st.just(lambda t: t.s), lit_text.map(lambda v: lambda t: fp.lit(v)))
    leaf_b = st.one_of(st.just(lambda t: t.b), st.just(lambda t: t.x.is_null()))
    leaf_d = st.just(lambda t: t.ts)

    def extend(children: st.SearchStrategy[tuple[Gen, Gen, Gen, Gen]]) -> st.SearchStrategy[tuple[Gen, Gen, Gen, Gen]]:
        f = children.map(lambda c: c[0])
        i = children.map(lambda c: c[1])
        s = children.map(lambda c: c[2])
        b = children.map(lambda c: c[3])
        new_f = st.one_of(
            _binary(f, f, lambda a, c: a + c), _binary(f, f, lambda a, c: a - c),
            _binary(f, f, lambda a, c: a * c), _binary(f, f, lambda a, c: a / c),
            _binary(f, f, lambda a, c: a // c), _binary(f, f, lambda a, c: a % c),
            _binary(f, i, lambda a, c: a + c), _binary(i, i, lambda a, c: a / c),
            _unary(f, lambda a: -a), _unary(f, lambda a: a.abs()),
            _unary(f, lambda a: a.round()), _unary(f, lambda a: a.round(2)),
            _unary(f, lambda a: a.floor()), _unary(f, lambda a: a.ceil()),
            _unary(f, lambda a: a.sqrt()), _unary(f, lambda a: a.log()),
            _unary(f, lambda a: a.log1p()), _unary(f, lambda a: a.exp()),
            _unary(i, lambda a: a.sqrt()),
            _unary(f, lambda a: a.clip(-1.5, 100.0)), _unary(f, lambda a: a.fill_null(-0.0)),
            _unary(i, lambda a: a.cast("float")), _unary(b, lambda a: a.cast("float")),
            st.tuples(b, f, f).map(lambda p: lambda t: fp.when(p[0](t)).then(p[1](t)).otherwise(p[2](t))),
            _binary(f, f, lambda a, c: fp.coalesce(a, c)),
        )
        new_i = st.one_of(
            _binary(i, i, lambda a, c: a + c), _binary(i, i, lambda a, c: a - c),
            _binary(i, i, lambda a, c: a * c), _binary(i, i, lambda a, c: a // c),
            _binary(i, i, lambda a, c: a % c), _unary(i, lambda a: -a), _unary(i, lambda a: a.abs()),
            _unary(i, lambda a: a.clip(-5, 5)), _unary(i, lambda a: a.fill_null(0)),
            _unary(f, lambda a: a.cast("int")), _unary(b, lambda a: a.cast("int")),
            _unary(s, lambda a: a.len()),
            _unary(s, lambda a: fp.encode(a, vocabulary=["a", "US", "中国", ""])),
            _unary(i, lambda a: fp.encode(a, vocabulary=[0, 1, 7])),
            _unary(s, lambda a: fp.hash_bucket(a, 7)), _unary(i, lambda a: fp.hash_bucket(a, 5)),
            _unary(f, lambda a: fp.bucketize(a, [-1.0, 0.0, 10.0, 1e300])),
            _unary(i, lambda a: fp.bucketize(a, [0, 5])),
            leaf_d.map(lambda g: lambda t: g(t).hour()), leaf_d.map(lambda g: lambda t: g(t).minute()),
            leaf_d.map(lambda g: lambda t: g(t).day_of_week()), leaf_d.map(lambda g: lambda t: g(t).day()),
            leaf_d.map(lambda g: lambda t: g(t).month()), leaf_d.map(lambda g: lambda t: g(t).year()),
            leaf_d.map(lambda g: lambda t: g(t).epoch_seconds()),
            leaf_d.map(lambda g: lambda t: g(t).truncate("7s").cast("int")),
            st.tuples(b, i, i).map(lambda p: lambda t: fp.when(p[0](t)).then(p[1](t)).otherwise(p[2](t))),
        )
        new_s = st.one_of(
            _unary(s, lambda a: a.lower()), _unary(s, lambda a: a.upper()),
            _unary(s, lambda a: a.strip()), _unary(s, lambda a: a.slice(1, 2)),
            _unary(s, lambda a: a.slice(0)), _binary(s, s, lambda a, c: a.concat(c)),
            _unary(i, lambda a: a.cast("str")), _unary(s, lambda a: a.fill_null("∅")),
            _binary(s, s, lambda a, c: fp.coalesce(a, c)),
        )
        new_b = st.one_of(
            _binary(f, f, lambda a, c: a == c), _binary(f, f, lambda a, c: a < c),
            _binary(f, f, lambda a, c: a >= c), _binary(f, i, lambda a, c: a != c),
            _binary(i, i, lambda a, c: a <= c), _binary(s, s, lambda a, c: a > c),
            _binary(s, s, lambda a, c: a == c),
            _binary(b, b, lambda a, c: a & c), _binary(b, b, lambda a, c: a | c),
            _unary(b, lambda a: ~a), _unary(f, lambda a: a.is_null()),
            _unary(s, lambda a: a.contains("a")), _unary(s, lambda a: a.startswith("U")),
            _unary(s, lambda a: a.endswith("")), _unary(i, lambda a: a.cast("bool")),
            _unary(b, lambda a: a.fill_null(False)),
        )
        return st.tuples(new_f | f, new_i | i, new_s | s, new_b | b)

    trees = st.recursive(st.tuples(leaf_f, leaf_i, leaf_s, leaf_b), extend, max_leaves=6)
    return {
        "float": trees.map(lambda c: c[0]),
        "int": trees.map(lambda c: c[1]),
        "str": trees.map(lambda c: c[2]),
        "bool": trees.map(lambda c: c[3]),
    }


E = exprs()
# (window, hop): sliding, and hopped windows (tails in hops of the given size)
WINDOWS = st.sampled_from([
    (None, None), ("1s", None), ("5s", None), ("30s", None), ("2m", None),
    ("4s", "4s"), ("6s", "2s"), ("30s", "10s"), ("2m", "1m"), ("3s", "1s"),
])
NUMERIC = st.one_of(E["float"], E["int"])
AGG_INPUT = {
    "sum": NUMERIC, "mean": NUMERIC, "var": NUMERIC, "std": NUMERIC,
    "min": NUMERIC, "max": NUMERIC,
    "first": st.one_of(E["float"], E["int"], E["str"], E["bool"]),
    "last": st.one_of(E["float"], E["int"], E["str"], E["bool"]),
    "count_distinct": st.one_of(E["float"], E["int"], E["str"], E["bool"]),
    "mode": st.one_of(E["float"], E["int"], E["str"], E["bool"], st.just(lambda t: t.ts)),
    "count": st.one_of(st.none(), E["float"], E["str"]),
    "last_k": st.one_of(E["float"], E["int"], E["str"], E["bool"], st.just(lambda t: t.ts)),
    "first_k": st.one_of(E["float"], E["int"], E["str"], E["bool"], st.just(lambda t: t.ts)),
    "last_distinct_k": st.one_of(E["float"], E["int"], E["str"], E["bool"]),
    "count_by": st.one_of(E["int"], E["str"], E["bool"]),
}
# the kinds' own options: k of the list kinds, top_k of count_by (None: every value)
KIND_OPTIONS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "last_k": st.builds(dict, k=st.integers(1, 4)),
    "first_k": st.builds(dict, k=st.integers(1, 4)),
    "last_distinct_k": st.builds(dict, k=st.integers(1, 4)),
    "count_by": st.builds(dict, top_k=st.one_of(st.none(), st.integers(1, 3))),
}
# by=: the additive kinds per bucket (a map); few distinct buckets, nulls among them
BUCKETS = st.one_of(
    st.sampled_from([lambda t: t.s, lambda t: t.b, lambda t: t.n % 3, lambda t: t.s.slice(0, 1)]),
    E["int"], E["str"], E["bool"],
)
for _kind in ("count", "sum", "mean", "min", "max", "var", "std"):
    KIND_OPTIONS[_kind] = st.one_of(st.just({}), st.builds(dict, by=BUCKETS))


@st.composite
def aggregations(draw: st.DrawFn) -> Gen:
    kind = draw(st.sampled_from(sorted(AGG_INPUT)))
    arg = draw(AGG_INPUT[kind])
    window, hop = draw(WINDOWS)
    where = draw(st.one_of(st.none(), E["bool"]))
    options = draw(KIND_OPTIONS.get(kind, st.just({})))
    fn = getattr(fp, kind)

    def build(t: Any) -> Expr:
        kw: dict[str, Any] = {"window": window, "hop": hop}
        kw.update({k: (v(t) if callable(v) else v) for k, v in options.items()})
        if where is not None:
            kw["where"] = where(t)
        if kind == "count":
            return fn(None if arg is None else arg(t), **kw)
        return fn(arg(t), **kw)

    return build


@st.composite
def event_logs(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(min_value=0, max_value=30))
    keys = draw(st.lists(st.sampled_from(["a", "b", "ключ", "🙂"]), min_size=1, max_size=3, unique=True))
    rows = []
    for _ in range(n):
        rows.append({
            "k": draw(st.sampled_from(keys)),
            "x": draw(FLOATS),
            "n": draw(INTS),
            "s": draw(TEXT),
            "b": draw(BOOLS),
            # whole and fractional seconds in a small range: many ties, windows edges hit exactly
            "ts": at(draw(st.one_of(st.integers(0, 90), st.floats(0, 90).map(lambda v: round(v, 3))))),
        })
    # arrival order: mostly sorted by time, with some events arriving late
    rows.sort(key=lambda r: r["ts"])
    swaps = draw(st.lists(st.tuples(st.integers(0, max(n - 1, 0)), st.integers(0, max(n - 1, 0))), max_size=6))
    for i, j in swaps:
        if n:
            rows[i], rows[j] = rows[j], rows[i]
    return rows


@settings(max_examples=scaled(300))
@given(
    features=st.lists(aggregations(), min_size=1, max_size=4),
    derived=st.booleans(),
    lateness=st.sampled_from(["1s", "10s", "1h"]),
    rows=event_logs(),
)
def test_random_views_random_logs_are_bit_identical(
    features: list[Gen], derived: bool, lateness: str, rows: list[dict[str, Any]]
) -> None:
    outputs: dict[str, Any] = {f"f{i}": g for i, g in enumerate(features)}
    if derived:
        outputs["d_count_ratio"] = lambda t: fp.count(window="5s") / (fp.count() + 1)
        outputs["d_ref"] = fp.feature("f0").is_null()
    v = view(outputs, lateness=lateness)
    assert_parity(v, frame(rows))


@settings(max_examples=scaled(200))
@given(
    features=st.lists(aggregations(), min_size=1, max_size=4),
    lateness=st.sampled_from(["1s", "10s", "1h"]),
    rows=event_logs(),
)
def test_bulk_folds_are_bit_identical(features: list[Gen], lateness: str, rows: list[dict[str, Any]]) -> None:
    """The same views with every window of the query folded by the kinds' bulk code
    (``AggKind.bulk_code``: C-level iterators), which the default takes only from
    ``BULK_FROM`` events on, more than these logs put in a window; empty windows too."""
    v = view({f"f{i}": g for i, g in enumerate(features)}, lateness=lateness)
    with patch.object(python_state, "BULK_FROM", 0):
        assert ViewProgram(v.ir).bulk_from == 0
        assert_parity(v, frame(rows))


@settings(max_examples=scaled(200))
@given(expr=st.one_of(E["float"], E["int"], E["str"], E["bool"]), rows=event_logs())
def test_row_expressions_are_bit_identical(expr: Gen, rows: list[dict[str, Any]]) -> None:
    """Every row-level op, seen through last() so each event's value is compared."""
    v = view({"value": lambda t: fp.last(expr(t)), "n": lambda t: fp.count(window="1s")})
    assert_parity(v, frame(rows))


@settings(max_examples=scaled(30))
@given(rows=event_logs())
def test_example_view_on_generated_logs(rows: list[dict[str, Any]]) -> None:
    def spend(t: Any) -> dict[str, Any]:
        amount = t.x.fill_null(0.0)
        return {
            "c1": fp.count(window="5s"),
            "s": fp.sum(amount, window="30s", default=0.0),
            "m": fp.mean(t.x, window="2m"),
            "sd": fp.std(t.x, window="2m"),
            "mx": fp.max(t.n),
            "cd": fp.count_distinct(t.s, window="30s"),
            "l": fp.last(t.s.fill_null("UNKNOWN")),
            "f": fp.first(t.ts, window="30s"),
        }

    v = view({k: (lambda t, k=k: spend(t)[k]) for k in ["c1", "s", "m", "sd", "mx", "cd", "l", "f"]})
    report = assert_parity(v, frame(rows))
    # every event replayed, every feature compared, at least one query per entity after the log
    assert report.events == len(rows)
    assert [f.name for f in report.features] == ["c1", "s", "m", "sd", "mx", "cd", "l", "f"]
    assert report.queries >= len({r["k"] for r in rows})


def test_window_edges_are_end_exclusive_and_start_inclusive() -> None:
    rows = [{"k": "a", "x": 1.0, "n": 1, "s": "p", "b": True, "ts": at(0)},
            {"k": "a", "x": 2.0, "n": 2, "s": "q", "b": True, "ts": at(10)}]
    v = view({"c": lambda t: fp.count(window="10s"), "s": lambda t: fp.sum(t.x, window="10s")})
    report = assert_parity(v, frame(rows))
    assert report.queries > 0
    from featurepipe.compile.polars_aggs import TS, BatchProgram
    from featurepipe.compile.python_state import ViewProgram
    from featurepipe.parity.harness import normalize_events

    prog = ViewProgram(v.ir)
    state = prog.new_state()
    for seq, ev in enumerate(normalize_events(v, frame(rows)).iter_rows(named=True)):
        prog.ingest(state, ev, seq)
    us = 1_000_000
    t0 = int(at(0).timestamp()) * us
    assert prog.query(state, t0) == (0, None)  # the event at T is not seen (end-exclusive)
    assert prog.query(state, t0 + 1) == (1, 1.0)
    assert prog.query(state, t0 + 10 * us) == (1, 1.0)  # T-w <= ts: the event at 0 is in, 10 is not
    assert prog.query(state, t0 + 10 * us + 1) == (1, 2.0)  # 0 has left, 10 is in
    assert prog.query(state, t0 + 20 * us + 1) == (0, None)  # nothing stale: empty window
    # the batch plan at the same instants, with the window length spelled as a timedelta
    vt = view({"c": lambda t: fp.count(window=timedelta(seconds=10)),
               "s": lambda t: fp.sum(t.x, window=timedelta(seconds=10))})
    assert vt.fingerprint == v.fingerprint
    times = [t0, t0 + 1, t0 + 10 * us, t0 + 10 * us + 1, t0 + 20 * us + 1]
    queries = pl.DataFrame({"k": ["a"] * len(times), TS: times}, schema={"k": pl.String, TS: pl.Int64})
    batch = BatchProgram(vt.ir).features(normalize_events(vt, frame(rows)).lazy(), queries)
    assert batch.select("c", "s").rows() == [(0, None), (1, 1.0), (1, 1.0), (1, 2.0), (0, None)]
