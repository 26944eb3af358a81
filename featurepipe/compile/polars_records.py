"""The per-event row stage as one Polars plan: ``ViewProgram``'s records, vectorized.

A record is ``(ts, seq, mask, p...)`` (``python_state.REC_*``): the event time, its arrival
rank, the bits of the aggregations whose ``where`` holds, and the aggregations' distinct
prepared inputs (``AggKind.prepare_code``; ``ViewProgram.slots``). ``record_plan`` computes
the same values, of the same Python types once read back with ``RecordPlan.records``, from the
batch row compiler (``polars_rows.translate``); ``PREPARED`` has one entry per kind, beside its
``prepare_code``.

Where a record's Python value is not a column value (a fixed-point sum saturated to a flag
string, an int whose square exceeds a float's exact range) or its bits are not certain to
survive (any NaN), the plan marks the row inexact, and the caller computes that row with
``ViewProgram``'s row function. A view with a kind that has no entry, or a ``by=`` bucket,
gets no plan (``None``): the caller replays every event. ``tests/test_materialize_records.py``
holds every entry to the row function on generated events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from featurepipe.compile.polars_aggs import SEQ
from featurepipe.compile.polars_rows import translate
from featurepipe.compile.python_state import REC_INPUTS, REC_MASK, REC_SEQ, REC_TS
from featurepipe.ir import aggs as kinds
from featurepipe.ir import nodes as ir
from featurepipe.ir.aggs import fixed_expr, float_input, kind_of

EXACT = "__exact"
# a value (or the two halves of a pair) and the rows where the plan's value is not the row
# function's (None: every row is)
Prepared = tuple[pl.Expr | tuple[pl.Expr, pl.Expr], pl.Expr | None]
MAX_MASK_BITS = 62  # the mask is an Int64 column
EXACT_INT_SQUARE = 2**26  # |v| below it: v * v and v * 2**40 are exact in binary64


def _identity(agg: ir.Agg, v: pl.Expr) -> Prepared:
    return v, _nan(v) if float_input(agg) else None


def _nan(v: pl.Expr) -> pl.Expr:
    return v.is_nan().fill_null(False)


def _canonical_zero(agg: ir.Agg, v: pl.Expr) -> Prepared:
    """``v + 0.0 if v == 0.0 else v`` for a float input: -0.0 is 0.0."""
    if not float_input(agg):
        return v, None
    return pl.when(v == 0.0).then(pl.lit(0.0)).otherwise(v), _nan(v)


def _fixed(agg: ir.Agg, v: pl.Expr) -> Prepared:
    """``kernels.to_fixed`` of a float input (ints are summed as they are)."""
    if not float_input(agg):
        return v, None
    q, pos, neg, nan = fixed_expr(v)
    return pl.when(v.is_not_null()).then(q), (pos | neg | nan).fill_null(False)


def _fixed_pair(agg: ir.Agg, v: pl.Expr) -> Prepared:
    """``(to_fixed(v), to_fixed(v * v))``, as two columns (a list column reads back slowly)."""
    x = v.cast(pl.Float64)
    q, pos, neg, nan = fixed_expr(x)
    q2, pos2, neg2, nan2 = fixed_expr(x * x)
    inexact = pos | neg | nan | pos2 | neg2 | nan2
    if not float_input(agg):  # the row function squares the int exactly, then rounds
        inexact = inexact | (v.abs() >= EXACT_INT_SQUARE)
    valid = v.is_not_null()
    return (pl.when(valid).then(q), pl.when(valid).then(q2)), inexact.fill_null(False)


def _as_float(agg: ir.Agg, v: pl.Expr) -> Prepared:
    x = v.cast(pl.Float64)
    return x, _nan(x)


# kind -> the Polars form of its prepare_code; kinds absent here (the sketch's bucket keys,
# count_by, by= buckets) are replayed per event
PREPARED: dict[type[kinds.AggKind], Callable[[ir.Agg, pl.Expr], Prepared]] = {
    kinds.Count: _identity,
    kinds.Sum: _fixed,
    kinds.Mean: _fixed,
    kinds.DecayedSum: _as_float,
    kinds.Var: _fixed_pair,
    kinds.Std: _fixed_pair,
    kinds.Min: _canonical_zero,
    kinds.Max: _canonical_zero,
    kinds.First: _identity,
    kinds.Last: _identity,
    kinds.LastK: _identity,
    kinds.FirstK: _identity,
    kinds.CountDistinct: _canonical_zero,  # a NaN key ("nan") is inexact: the row function's
    kinds.Mode: _canonical_zero,
    kinds.LastDistinctK: _canonical_zero,
}


@dataclass(frozen=True)
class RecordPlan:
    """``columns``: ts, seq, mask, each aggregation's prepared input (``__p<i>``), then the
    second halves of pairs (``__q<i>``); ``picks``: the columns a record holds, in record
    order (``ViewProgram.slots``: a shared input once, a constant one not at all); ``pairs``:
    (record position, column of the second half); ``exact``: whether the row's record is the
    row function's (else compute that row with it)."""

    columns: tuple[pl.Expr, ...]
    picks: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]
    exact: pl.Expr

    @property
    def names(self) -> list[str]:
        """The columns' names, in order."""
        return [c.meta.output_name() for c in self.columns]

    def records(self, frame: pl.DataFrame) -> list[tuple[Any, ...]]:
        """The records of ``frame`` (``columns`` computed): one tuple per row."""
        lists = [frame.to_series(i).to_list() for i in self.picks]
        for at, second in self.pairs:
            halves = frame.to_series(second).to_list()
            lists[at] = [
                None if a is None else (a, b) for a, b in zip(lists[at], halves, strict=True)
            ]
        return list(zip(*lists, strict=True))


def record_plan(view: ir.ViewIR, slots: Sequence[int | None]) -> RecordPlan | None:
    """The records of ``view`` as Polars expressions over its events (fields by name, the
    arrival rank as ``__seq``, datetimes as epoch micros), or None when a kind has no entry.
    ``slots``: ``ViewProgram.slots``, the record position of each aggregation's input."""
    aggs = view.aggs
    if len(aggs) > MAX_MASK_BITS:
        return None

    def leaf(n: ir.Node) -> pl.Expr | None:
        return pl.col(n.name) if isinstance(n, ir.Field) else None

    values: list[pl.Expr] = []
    seconds: list[pl.Expr] = []
    pairs: list[tuple[int, int]] = []
    picks: dict[int, int] = {}  # record position -> column: the first aggregation of a slot
    inexact: list[pl.Expr] = []
    mask_terms: list[pl.Expr] = []
    for i, agg in enumerate(aggs):
        prepare = PREPARED.get(type(kind_of(agg)))
        if prepare is None or agg.by is not None:
            return None
        v = pl.lit(True) if agg.arg is None else translate(agg.arg, leaf)
        value, off = prepare(agg, v)
        slot = slots[i]
        opens = slot if slot is not None and slot not in picks else None  # a slot's first use
        if opens is not None:
            picks[opens] = REC_INPUTS + i
        if isinstance(value, tuple):
            value, second = value
            if opens is not None:
                pairs.append((opens, REC_INPUTS + len(aggs) + len(seconds)))
            seconds.append(second.alias(f"__q{i}"))
        values.append(value.alias(f"__p{i}"))
        if off is not None:
            inexact.append(off)
        bit = pl.lit(1 << i, pl.Int64)
        if agg.where is None:
            mask_terms.append(bit)
        else:
            holds = translate(agg.where, leaf).fill_null(False)
            mask_terms.append(pl.when(holds).then(bit).otherwise(pl.lit(0, pl.Int64)))
    mask = pl.sum_horizontal(mask_terms) if mask_terms else pl.lit(0, pl.Int64)
    columns = (
        pl.col(view.timestamp).alias("__ts"),
        pl.col(SEQ).alias("__rseq"),
        _every_row(mask.cast(pl.Int64)).alias("__mask"),
        *(_every_row(v) for v in values),
        *(_every_row(v) for v in seconds),
    )
    exact = ~pl.any_horizontal(inexact) if inexact else pl.lit(True)
    order = (REC_TS, REC_SEQ, REC_MASK, *(picks[p] for p in sorted(picks)))
    if sorted(picks) != list(range(REC_INPUTS, REC_INPUTS + len(picks))):
        raise AssertionError(f"view '{view.name}': record slots {slots} leave a gap")
    return RecordPlan(columns, order, tuple(pairs), _every_row(exact).alias(EXACT))


def _every_row(e: pl.Expr) -> pl.Expr:
    """``e`` with one value per row, always: Polars (2.1, in-memory engine) returns one value
    for an expression whose every row takes a literal branch (``lit(0.0) < when(b).then(1.0)
    .otherwise(x)`` with b true throughout), which a frame of several rows then refuses."""
    return pl.when(pl.repeat(True, pl.len())).then(e)


# -- lifetime accumulators ------------------------------------------------------------------------
# kind -> an entity's lifetime accumulator over its records behind the horizon (exact rows, in
# (ts, seq) order), as ``ViewProgram``'s compaction folds them: Polars aggregations over the
# entity's group, and the function turning their columns (one value per entity) into the
# accumulators. Only kinds whose fold is order-free (``python_state.ORDER_FREE_FOLDS``) are
# folded this way.
Accumulate = tuple[list[pl.Expr], Callable[[list[list[Any]]], list[Any]]]


def _count_acc(agg: ir.Agg, i: int, ok: pl.Expr) -> Accumulate:
    return [(ok & _p(i).is_not_null()).sum()], lambda c: c[0]


def _sum_acc(agg: ir.Agg, i: int, ok: pl.Expr) -> Accumulate:
    valid = ok & _p(i).is_not_null()
    total = _p(i).filter(valid).cast(pl.Int128).sum()
    # n, total, pos, neg, nan
    return [valid.sum(), total], lambda c: [[n, t, 0, 0, 0] for n, t in zip(*c, strict=True)]


def _var_acc(agg: ir.Agg, i: int, ok: pl.Expr) -> Accumulate:
    valid = ok & _p(i).is_not_null()
    sums = [pl.col(f"__{h}{i}").filter(valid).cast(pl.Int128).sum() for h in "pq"]
    # n, s1, s2, flags
    return [valid.sum(), *sums], lambda c: [[n, a, b, 0] for n, a, b in zip(*c, strict=True)]


def _extreme_acc(smallest: bool) -> Callable[[ir.Agg, int, pl.Expr], Accumulate]:
    def acc(agg: ir.Agg, i: int, ok: pl.Expr) -> Accumulate:
        valid = ok & _p(i).is_not_null()
        kept = _p(i).filter(valid)
        best = kept.min() if smallest else kept.max()
        # n, best, nan
        return [valid.sum(), best], lambda c: [[n, b, 0] for n, b in zip(*c, strict=True)]

    return acc


def _pick_acc(last: bool) -> Callable[[ir.Agg, int, pl.Expr], Accumulate]:
    def acc(agg: ir.Agg, i: int, ok: pl.Expr) -> Accumulate:
        # a null input counts: first/last pick the event, then its value
        picked = [c.filter(ok).last() if last else c.filter(ok).first() for c in _event(i)]
        return picked, lambda c: [
            None if t is None else (t, q, v) for t, q, v in zip(*c, strict=True)
        ]

    return acc


def _distinct_acc(agg: ir.Agg, i: int, ok: pl.Expr) -> Accumulate:
    values = _p(i).filter(ok & _p(i).is_not_null()).unique()
    return [values], lambda c: [set(v) for v in c[0]]


def _k_acc(newest: bool) -> Callable[[ir.Agg, int, pl.Expr], Accumulate]:
    def acc(agg: ir.Agg, i: int, ok: pl.Expr) -> Accumulate:
        n = int(agg.param("k"))
        rows = [c.filter(ok & _p(i).is_not_null()) for c in _event(i)]
        kept = [r.tail(n).reverse() if newest else r.head(n) for r in rows]
        return kept, lambda c: [list(zip(*e, strict=True)) for e in zip(*c, strict=True)]

    return acc


def _p(i: int) -> pl.Expr:
    return pl.col(f"__p{i}")


def _event(i: int) -> list[pl.Expr]:
    return [pl.col("__ts"), pl.col("__rseq"), _p(i)]


ACCUMULATED: dict[type[kinds.AggKind], Callable[[ir.Agg, int, pl.Expr], Accumulate]] = {
    kinds.Count: _count_acc,
    kinds.Sum: _sum_acc,
    kinds.Mean: _sum_acc,
    kinds.Var: _var_acc,
    kinds.Std: _var_acc,
    kinds.Min: _extreme_acc(smallest=True),
    kinds.Max: _extreme_acc(smallest=False),
    kinds.First: _pick_acc(last=False),
    kinds.Last: _pick_acc(last=True),
    kinds.CountDistinct: _distinct_acc,
    kinds.LastK: _k_acc(newest=True),
    kinds.FirstK: _k_acc(newest=False),
}


@dataclass(frozen=True)
class Accumulation:
    """``aggregations``: Polars aggregations (``__c<j>``) of an entity's exact records behind
    its horizon (a group of ``RecordPlan.columns``, in (ts, seq) order); ``indices``: the
    aggregations whose lifetime accumulators ``accumulators`` builds from them."""

    aggregations: tuple[pl.Expr, ...]
    indices: tuple[int, ...]
    parts: tuple[tuple[int, int, Callable[[list[list[Any]]], list[Any]]], ...]

    def accumulators(self, frame: pl.DataFrame) -> list[tuple[Any, ...]]:
        """Per row of ``frame`` (the aggregations' columns), its accumulators in ``indices``
        order."""
        columns = [frame.get_column(f"__c{j}").to_list() for j in range(len(self.aggregations))]
        built = [make(columns[start : start + n]) for start, n, make in self.parts]
        return list(zip(*built, strict=True)) if built else [()] * frame.height


def accumulation(view: ir.ViewIR, lifetime: list[int]) -> Accumulation | None:
    """The lifetime aggregations ``lifetime`` (indices into ``view.aggs``) folded in Polars,
    or None when a kind has no entry."""
    exprs: list[pl.Expr] = []
    parts: list[tuple[int, int, Callable[[list[list[Any]]], list[Any]]]] = []
    for i in lifetime:
        agg = view.aggs[i]
        accumulate = ACCUMULATED.get(type(kind_of(agg)))
        if accumulate is None:
            return None
        ok = pl.lit(True) if agg.where is None else (pl.col("__mask") & (1 << i)) != 0
        aggregations, make = accumulate(agg, i, ok)
        parts.append((len(exprs), len(aggregations), make))
        exprs += [e.alias(f"__c{len(exprs) + j}") for j, e in enumerate(aggregations)]
    return Accumulation(tuple(exprs), tuple(lifetime), tuple(parts))
