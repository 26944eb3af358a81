"""The aggregation registry is the only place a kind is stated: a kind written here, in a test,
and registered in ``KINDS`` is compiled by both backends without touching either compiler, and
both agree with a naive reference that shares no code with them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurepipe import kernels
from featurepipe.compile.polars_aggs import ARRIVED, SEQ, TS, BatchProgram
from featurepipe.compile.python_state import ViewProgram
from featurepipe.errors import UnsupportedOperationError
from featurepipe.ir import aggs
from featurepipe.ir import nodes as ir
from featurepipe.ir.aggs import KINDS, AggKind, Finalizer, RangeKernels
from featurepipe.ir.types import DType
from tests.schema import scaled

I64 = pl.Int64


class AnyTrue(AggKind):
    """True when some visible event has a true input; null when none has a non-null input."""

    name = "any_true"
    fields = ("n", "hits")
    plan = "prefix-sum difference of true inputs"

    def result_type(self, arg: DType | None) -> DType:
        if arg is not DType.BOOL:
            raise TypeError(f"any_true needs a bool input, got {arg}")
        return DType.BOOL

    def empty(self, agg: ir.Agg) -> Any:
        return [0, 0]

    def fold_code(self, agg: ir.Agg, acc: str, value: str, ts: str, seq: str) -> list[str]:
        return [
            f"p = {value}",
            "if p is not None:",
            f"    {self.at(acc, 'n')} += 1",
            f"    if p: {self.at(acc, 'hits')} += 1",
        ]

    def copy(self, acc: Any) -> Any:
        return list(acc)

    def finalizer(self, agg: ir.Agg) -> Finalizer:
        return lambda acc: None if acc[0] == 0 else acc[1] > 0

    def columns(
        self, agg: ir.Agg, v: pl.Expr, inc: pl.Expr, valid: pl.Expr, out: pl.DataType
    ) -> dict[str, pl.Expr]:
        return {"n": valid.cast(I64), "hits": (valid & v).fill_null(False).cast(I64)}

    def over_range(
        self, agg: ir.Agg, col: Callable[[str], pl.Series], kr: RangeKernels
    ) -> dict[str, pl.Series]:
        return {f: kr.range_sum(col(f), agg.span) for f in self.fields}

    def over_pairs(self, agg: ir.Agg, col: aggs.Col, index: pl.Expr) -> dict[str, pl.Expr]:
        return {f: col(f).sum() for f in self.fields}

    def empty_pairs(self, agg: ir.Agg, col: aggs.Col) -> list[pl.Expr]:
        return [col(f).fill_null(0) for f in self.fields]

    def finalize_expr(self, agg: ir.Agg, col: aggs.Col) -> pl.Expr:
        return pl.when(col("n") == 0).then(None).otherwise(col("hits") > 0)


WINDOW = 10


@contextmanager
def registered() -> Iterator[None]:
    aggs.KINDS["any_true"] = AnyTrue()
    try:
        yield
    finally:
        del aggs.KINDS["any_true"]


def _view() -> ir.ViewIR:
    flag = ir.Field(DType.BOOL, name="flag")
    windowed = ir.Agg(DType.BOOL, kind="any_true", arg=flag, window_us=WINDOW)
    lifetime = ir.Agg(DType.BOOL, kind="any_true", arg=flag, default=False)
    return ir.ViewIR(
        name="v",
        entity="e",
        entity_key="k",
        source="s",
        timestamp="ts",
        fields=(("k", DType.STR), ("ts", DType.DATETIME), ("flag", DType.BOOL)),
        features=(ir.Feature("w", windowed), ir.Feature("life", lifetime)),
        lateness_us=1_000,
    )


def _naive(events: list[tuple[str, int, bool | None]], key: str, t: int) -> tuple[Any, Any]:
    def any_true(ts_from: int | None) -> bool | None:
        seen = [
            f
            for k, ts, f in events
            if k == key and ts < t and (ts_from is None or ts >= ts_from) and f is not None
        ]
        return any(seen) if seen else None

    life = any_true(None)
    return any_true(t - WINDOW), False if life is None else life


events_strategy = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 40), st.none() | st.booleans()),
    max_size=30,
)


@settings(max_examples=scaled(60), deadline=None)
@given(events=events_strategy, queries=st.lists(st.integers(0, 60), min_size=1, max_size=6))
def test_a_kind_declared_outside_the_compilers_runs_on_both(
    events: list[tuple[str, int, bool | None]], queries: list[int]
) -> None:
    with registered():
        _check(events, queries)


def _check(events: list[tuple[str, int, bool | None]], queries: list[int]) -> None:
    view = _view()
    frame = pl.DataFrame(
        {
            "k": [e[0] for e in events],
            TS: [e[1] for e in events],
            "ts": [e[1] for e in events],
            SEQ: list(range(len(events))),
            "flag": [e[2] for e in events],
        },
        schema={"k": pl.String, TS: I64, "ts": I64, SEQ: I64, "flag": pl.Boolean},
    )
    q = pl.DataFrame(
        {"k": ["a", "b"] * len(queries), TS: [t for t in queries for _ in "ab"]},
        schema={"k": pl.String, TS: I64},
    )
    # every query sees every event: arrival after the last one
    q = q.with_columns(pl.lit(len(events), I64).alias(ARRIVED))
    batch = BatchProgram(view).features(frame.lazy(), q).select("w", "life").rows()
    reference = BatchProgram(view, reference=True).features(frame.lazy(), q)
    assert reference.select("w", "life").rows() == batch

    prog = ViewProgram(view)
    states = {k: prog.new_state() for k in "ab"}
    for seq, (k, ts, flag) in enumerate(events):
        prog.ingest(states[k], {"k": k, "ts": ts, "flag": flag}, seq)
    expected = [_naive(events, k, t) for k, t in q.select("k", TS).rows()]
    stream = []
    for k, t in q.select("k", TS).rows():
        state = states[k]
        stream.append(prog.query(state, t) if prog.can_answer(state, t) else None)
    for got_batch, got_stream, want in zip(batch, stream, expected, strict=True):
        assert got_batch == want
        if got_stream is not None:  # older than the lateness horizon: refused, not wrong
            assert got_stream == want


def test_an_unregistered_kind_is_not_compiled() -> None:
    with pytest.raises(KeyError, match="any_true"):
        ViewProgram(_view())


@settings(max_examples=300)
@given(
    st.sets(
        st.one_of(
            st.text(max_size=3),
            st.integers(-5, 5),
            st.floats(allow_nan=True, allow_infinity=True),
            st.booleans(),
        ),
        max_size=12,
    )
    | st.sets(st.text(max_size=3), max_size=40)
    | st.sets(st.floats(allow_nan=True), max_size=20)
)
def test_distinct_wire_order_is_type_name_then_value(acc: set[object]) -> None:
    """The distinct set's wire form (its state bytes) is the values sorted by (type name,
    value), whatever shortcut to_wire takes; reference: a plain keyed sort."""
    wire = KINDS["count_distinct"].to_wire(acc)
    assert repr(wire) == repr(sorted(acc, key=lambda v: (type(v).__name__, v)))


def test_a_kind_without_merge_is_refused_a_hop() -> None:
    """Hopped windows keep older events merged per hop: a kind that states no merge gets a
    clear refusal when its view is compiled, not a silently different answer."""
    flag = ir.Field(DType.BOOL, name="flag")
    hopped = ir.Agg(DType.BOOL, kind="any_true", arg=flag, window_us=WINDOW, hop_us=WINDOW // 2)
    view = dataclasses.replace(_view(), features=(ir.Feature("h", hopped),))
    with (
        registered(),
        pytest.raises(UnsupportedOperationError, match="hop= is not offered for any_true"),
    ):
        ViewProgram(view)
    # every built-in kind merges, but those whose fold reads the query time (refused a hop)
    assert {name for name, kind in KINDS.items() if not kind.mergeable} == {"decayed_sum"}


def _owner(cls: type, name: str) -> type:
    return next(c for c in cls.__mro__ if name in vars(c))


@pytest.mark.parametrize("method", ["copy", "finalizer", "from_wire"])
def test_inlined_code_is_defined_beside_the_method_it_inlines(method: str) -> None:
    """``copy_code``, ``finalize_code`` and ``from_wire_code`` are the source of ``copy``,
    ``finalizer`` and ``from_wire``: a kind that overrides the method but inherits the code
    would run its parent's behaviour in the generated query. Each code comes from the class
    that defines the method, or is the base class's None (the method is called)."""
    code = {"copy": "copy_code", "finalizer": "finalize_code", "from_wire": "from_wire_code"}[
        method
    ]
    for kind in {type(k) for k in KINDS.values()}:
        assert _owner(kind, code) in (_owner(kind, method), AggKind), (kind, method)


@pytest.mark.parametrize(
    "acc",
    [
        None,
        [3, 1, 2],
        (5, 2, "v"),
        {1, "a"},
        7,
        [2, 7.5, 0],  # min/max: a best, no NaN
        [0, None, 0],
        [3, 5 * 2**40 + 1, 0, 0, 0],  # sum/mean: an exact fixed-point total
        [2, 2**63, 0, 0, 0],  # an int total beyond int64
        [2, 0, 1, 0, 0],  # a saturated +inf term
        [2, 0, 1, 1, 0],
        [0, 0, 0, 0, 0],
    ],
)
def test_inlined_code_computes_what_the_method_does(acc: Any) -> None:
    """Each inlined code, evaluated, equals its method on accumulators of its shape."""
    for kind, arg in [(type(k), t) for k in KINDS.values() for t in (DType.FLOAT, DType.INT)]:
        k = kind()
        agg = ir.Agg(dtype=arg, kind=kind.name, arg=ir.Field(dtype=arg, name="x"))
        pairs: list[tuple[str | None, Callable[[], Callable[[Any], Any]]]] = [
            (k.copy_code("acc"), lambda k=k: k.copy),
            (k.finalize_code(agg, "acc"), lambda k=k, agg=agg: k.finalizer(agg)),
            (k.from_wire_code("acc"), lambda k=k: k.from_wire),
        ]
        for code, method in pairs:
            if code is None:
                continue
            try:
                want = method()(acc)
            except (TypeError, IndexError, KeyError, ValueError):
                continue  # not an accumulator of this kind's shape
            # the names the generated query gives inlined code: the kernels, one NaN
            got = eval(code, {"_k": kernels, "_NAN": math.nan}, {"acc": acc})
            assert repr(got) == repr(want) and type(got) is type(want), (kind, code, acc)
