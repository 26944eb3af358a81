"""The aggregation kinds: the one place each kind is stated, for both backends.

Every kind is one ``AggKind`` object in ``KINDS``. It declares

- its typing rule (definition time) and its named accumulator fields;
- the per-event half: the *prepared* input (Python source), the empty accumulator, the fold
  of one event (Python source, inlined by ``compile.python_state`` into compaction and queries),
  the finalizer, and the msgpack wire form;
- the batch half: per-event prepared columns (Polars expressions), the accumulators over a
  contiguous event range (built from the batch compiler's range kernels, ``RangeKernels``),
  the same accumulators from explicit (query, event) pairs, and the finalizer as an expression;
- its line in ``featurepipe plan``.

Both compilers iterate ``KINDS``; nothing else switches on the kind. Every method is abstract, so
a kind that forgets one cannot be instantiated (and ``tests/test_completeness.py`` checks it).
The two halves of a kind sit side by side so their arithmetic can be read together; the rules
they implement are stated in docs/semantics.md and the scalar ones in ``featurepipe.kernels``.

Accumulator shapes (per-event; the batch columns carry the same names where they exist)::

    count           n
    sum, mean       [n, total, pos, neg, nan]    total: exact fixed-point (float) or int sum
    var, std        [n, s1, s2, flags]           s1/s2: fixed-point sums of x and x*x
    min, max        [n, best, nan]
    first, last     (ts, seq, value) or None
    count_distinct  set of keys
    mode, count_by  dict value -> count (floats canonical: 0.0 for -0.0, ``math.nan`` for NaN)
    last_k, first_k list of up to k (ts, seq, value), newest / oldest first
    last_distinct_k dict value -> (ts, seq) of its newest event, at most k values
"""

from __future__ import annotations

import dataclasses
import math
import operator
from abc import ABC, abstractmethod
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from functools import partial
from itertools import compress, repeat
from operator import itemgetter
from typing import Any, ClassVar, Protocol

import polars as pl

from featurepipe import kernels as k
from featurepipe.ir import sketch
from featurepipe.ir.nodes import Agg, Span
from featurepipe.ir.types import DType, list_of, map_of

I, F, D = DType.INT, DType.FLOAT, DType.DATETIME
F64, I64, I128 = pl.Float64, pl.Int64, pl.Int128

Window = Span  # (window_us, hop_us), hop 1 for a sliding window; None: lifetime
Finalizer = Callable[[Any], Any]
Col = Callable[[str], pl.Expr]  # an accumulator column of this aggregation, by local name


@dataclasses.dataclass(frozen=True)
class RecordFields:
    """Where a retained record (a tuple) holds what one aggregation folds: its time, its
    arrival sequence, its prepared input, and the bit of its ``where`` mask (None: no
    ``where``, every record passes). Used by ``AggKind.range_code``."""

    ts: int
    seq: int
    value: int | None  # None: every event's input is ``literal``, not kept in the record
    literal: str | None
    mask: int
    bit: int | None

    def value_of(self, r: str) -> str:
        """Python source: record ``r``'s prepared input."""
        if self.value is None:
            assert self.literal is not None
            return self.literal
        return f"{r}[{self.value}]"

    def passes(self, r: str) -> str | None:
        """Python source: whether record ``r`` passes the ``where`` (None: always)."""
        return None if self.bit is None else f"{r}[{self.mask}] & {self.bit}"

    def each(self, seg: str) -> str:
        """Python source: an iterator over the prepared input of every record of the list
        ``seg``, in order (C-level, like ``values``), whether or not it passes the ``where``."""
        if self.value is None:
            assert self.literal is not None
            return f"_repeat({self.literal}, len({seg}))"
        return f"map(_item({self.value}), {seg})"

    def passing(self, seg: str, terms: str) -> str:
        """Python source: ``terms`` (an iterator of numbers, one per record of ``seg``) with the
        records that fail the ``where`` counted as 0 (True/False times the term)."""
        if self.bit is None:
            return terms
        bits = f"map(_and, map(_item({self.mask}), {seg}), _repeat({self.bit}))"
        return f"map(_mul, {terms}, map(_truth, {bits}))"

    def values(self, lo: str, hi: str) -> str:
        """Python source: an iterator over the prepared inputs of the records ``buf[lo:hi]``
        that pass the ``where``, in buffer order, built from C-level iterators (``map``,
        ``itemgetter``, ``compress``: no bytecode per record). Names it uses: ``RANGE_NAMES``."""
        if self.value is None:
            assert self.literal is not None
            every = f"_repeat({self.literal}, {hi} - {lo})"
        else:
            every = f"map(_item({self.value}), buf[{lo}:{hi}])"
        if self.bit is None:
            return every
        masks = f"map(_and, map(_item({self.mask}), buf[{lo}:{hi}]), _repeat({self.bit}))"
        return f"_compress({every}, {masks})"


# the names ``RecordFields.values`` and the range code of the kinds use
RANGE_NAMES: dict[str, Any] = {
    "_item": itemgetter,
    "_bisect_left": bisect_left,
    "_bisect_right": bisect_right,
    "_and": operator.and_,
    "_repeat": repeat,
    "_compress": compress,
    "_not_none": partial(operator.is_not, None),
    "_mul": operator.mul,
    "_truth": operator.truth,
    "_or_zero": {None: 0}.get,  # _or_zero(p, p): p, or 0 for None (C-level)
    "_or_zeros": {None: (0, 0)}.get,
}


class RangeKernels(Protocol):
    """What the batch compiler offers a kind for queries whose visible events are the
    contiguous range [lo, hi) of the (entity, ts, seq)-sorted events, lo set by the window."""

    events: pl.DataFrame

    def range_sum(self, col: pl.Series, window: Window) -> pl.Series: ...

    def range_extreme(
        self, col: pl.Series, window: Window, smallest: bool, sentinel: Any
    ) -> pl.Series: ...

    def first_marked(self, mark: pl.Series, window: Window) -> pl.Series: ...

    def last_marked(self, mark: pl.Series, window: Window) -> pl.Series: ...

    def marked_values(
        self, mark: pl.Series, values: pl.Series, window: Window, k: int, newest: bool
    ) -> pl.Series:
        """Per query, the ``values`` of its k newest (newest first) or k oldest marked events,
        as a list."""
        ...

    def distinct_count(self, key: str, window: Window) -> pl.Series: ...

    def bucket_sums(
        self, window: Window, bucket: pl.Series, fields: dict[str, pl.Series], count: str
    ) -> pl.DataFrame | None:
        """(``__q``, ``bucket``, the sums of ``fields``) per query and bucket with a visible
        event (``fields[count] > 0``), ordered by query then bucket; None when the (query,
        event) pairs are less work (the caller takes them)."""
        ...

    def maps(self, frame: pl.DataFrame, value: pl.Expr) -> pl.Series:
        """Per query, ``frame``'s rows (``bucket_sums``) as a map {bucket: ``value``}."""
        ...

    def bucketed(
        self, window: Window, bucket: str, aggregations: dict[str, pl.Expr], value: pl.Expr
    ) -> pl.Series:
        """Per query, a map (list of {key, value} ordered by key) over its visible events
        whose column ``bucket`` is not null: ``aggregations`` per (query, bucket) group, then
        ``value`` computed from them."""
        ...

    def by_pairs(self, window: Window, aggregations: dict[str, pl.Expr]) -> dict[str, pl.Series]:
        """``aggregations`` (a kind's ``over_pairs``, reading its prepared columns and the
        event row ``__i``) over each query's events, evaluated as a group-by over explicit
        (query, event) pairs: for kinds without a range kernel. Cost: the total number of
        (query, event) pairs, not the number of queries. A query with no event gets nulls."""
        ...


def float_input(agg: Agg) -> bool:
    return agg.arg is not None and agg.arg.dtype is F


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise TypeError(msg)


def fixed_code(x: str) -> str:
    """Python source of ``kernels.to_fixed(x)``, inlined for the common in-range case."""
    big = repr(k.BIG)
    return f"(round({x} * {k.SCALE!r}) if -{big} < {x} < {big} else _k.to_fixed({x}))"


def fixed_expr(x: pl.Expr) -> tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr]:
    """(fixed-point Int128, is +big, is -big, is NaN) of a non-null float expression: the
    vectorized ``kernels.to_fixed``."""
    nan = x.is_nan()
    pos = ~nan & (x >= k.BIG)
    neg = ~nan & (x <= -k.BIG)
    ok = ~(nan | pos | neg)
    q = pl.when(ok).then((x * k.SCALE).round(0, mode="half_to_even")).otherwise(0.0).cast(I128)
    return q, pos, neg, nan


class AggKind(ABC):
    """One aggregation kind, both backends. Subclasses fill in every abstract method."""

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]  # named per-event accumulator fields ("" for a scalar)
    plan: ClassVar[str]  # the batch kernel, as `featurepipe plan` prints it

    def at(self, acc: str, field: str) -> str:
        """Python source reading accumulator field ``field`` of ``acc``."""
        return f"{acc}[{self.fields.index(field)}]"

    # -- definition time ----------------------------------------------------------------------
    @abstractmethod
    def result_type(self, arg: DType | None) -> DType:
        """The output dtype for an input of dtype ``arg``; ``TypeError`` when refused."""

    # -- per-event -----------------------------------------------------------------------------
    def prepare_code(self, agg: Agg, v: str) -> str:
        """Python source turning a raw input value ``v`` into what the fold consumes."""
        return v

    @abstractmethod
    def empty(self, agg: Agg) -> Any:
        """The empty accumulator; its ``repr`` must rebuild it (it is inlined in code)."""

    @abstractmethod
    def fold_code(self, agg: Agg, acc: str, value: str, ts: str, seq: str) -> list[str]:
        """Python statements folding one event (prepared ``value``, passing ``where``) into
        the accumulator variable ``acc``. Order-independent: events arrive in any order."""

    def range_code(
        self, agg: Agg, acc: str, rec: RecordFields, lo: str, hi: str
    ) -> list[str] | None:
        """Python statements folding, at once, the events ``buf[lo:hi]`` of a buffer sorted by
        ts (ties in any order) into ``acc``: the accumulator ``fold_code`` over each of them
        would give. None (the default): the query folds the kind event by event."""
        return None

    def prefix_terms(self, agg: Agg, rec: RecordFields, seg: str) -> list[tuple[int, str]] | None:
        """For kinds whose accumulator over a range of events is a sum of per-event integer
        terms: (accumulator field index, or -1 for a scalar accumulator; Python source of an
        iterator over the term of each record of the list ``seg``, 0 for records that do not
        count), for each summed field. The query keeps running sums of these terms over the
        buffer (``compile.python_state.Prefix``), so that a window's accumulator is two
        lookups whatever the window holds. A term that is not an int (a saturation flag) must
        make the running sum raise ``TypeError``; the query then folds that aggregation with
        ``bulk_code``. None (the default): no running sums."""
        return None

    def lifetime_code(
        self, agg: Agg, out: str, acc: str, rec: RecordFields, hi: str
    ) -> list[str] | None:
        """Python statements setting ``out`` to the finalized value (``finalizer``; None for
        nothing to aggregate) of the lifetime accumulator ``acc`` (not to be mutated) with the
        events ``buf[0:hi]`` folded in, without copying ``acc``: for kinds whose accumulator
        grows with the entity's whole history (a copy per query would cost that history).
        None (the default): the query copies ``acc`` and folds the events into the copy."""
        return None

    def bulk_code(
        self, agg: Agg, acc: str, rec: RecordFields, lo: str, hi: str
    ) -> list[str] | None:
        """Python statements folding the events ``buf[lo:hi]`` into ``acc`` as ``fold_code``
        over each of them would, with C-level iterators over the whole range
        (``RecordFields.values``, ``sum``, ``set.update``, ``min``): no bytecode per event, but
        a fixed cost per call, so the query takes it for windows holding many events. None
        (the default): event by event."""
        return None

    def namespace(self, agg: Agg) -> dict[str, Any]:
        """Names the generated fold code uses beyond ``_k`` (the scalar kernels)."""
        return {}

    def merge_code(self, agg: Agg, acc: str, other: str) -> list[str]:
        """Python statements merging the accumulator ``other`` (of other events; not to be
        mutated) into the accumulator variable ``acc``, with the result folding both event
        sets would give. Hopped windows keep older events pre-aggregated per hop (tiles) and
        merge them at query time; a kind without it is refused with ``hop=``."""
        raise NotImplementedError

    @property
    def mergeable(self) -> bool:
        # a fold that reads the query time has no merge: tiles are folded without one
        return type(self).merge_code is not AggKind.merge_code and not self.needs_query_time

    @abstractmethod
    def copy(self, acc: Any) -> Any:
        """A copy of ``acc`` the fold may mutate without touching the original."""

    def copy_code(self, acc: str) -> str | None:
        """Python source of ``copy`` applied to ``acc``, inlined in the generated query; None:
        the query calls ``copy``. Defined beside ``copy``, by the class that defines it."""
        return None

    @abstractmethod
    def finalizer(self, agg: Agg) -> Finalizer:
        """Accumulator -> value (None when there is nothing to aggregate; the caller applies
        the declared default)."""

    def finalize_code(self, agg: Agg, acc: str) -> str | None:
        """Python source of ``finalizer(agg)`` applied to ``acc``, inlined in the generated
        query; None: the query calls the finalizer. Defined beside ``finalizer``."""
        return None

    def to_wire(self, acc: Any) -> Any:
        """The msgpack form of ``acc``: deterministic, so equal states give equal bytes."""
        return acc

    def summed(self, agg: Agg) -> tuple[str, ...] | None:
        """The accumulator fields when each is a plain sum over the events (and one of them,
        ``n``, counts them): such a kind computes per bucket from prefix sums
        (``RangeKernels.bucket_sums``); None otherwise."""
        return None

    # True for a kind whose fold reads the query time ``t`` (generated into the query only): it
    # needs a window and no hop (compaction and tiles fold without a query time)
    needs_query_time: ClassVar[bool] = False

    # True when a stored (compacted) accumulator is one object that folding only ever adds to,
    # so its size tells whether it changed: its wire form is then reused while the object and
    # its size stay the same (a large distinct set is not re-sorted at every commit).
    grows_in_place: ClassVar[bool] = False

    def from_wire(self, obj: Any) -> Any:
        return obj

    def from_wire_code(self, obj: str) -> str | None:
        """Python source of ``from_wire`` applied to ``obj``, inlined where states are loaded;
        None: ``from_wire`` is called. Defined beside ``from_wire``."""
        return None

    # -- batch ---------------------------------------------------------------------------------
    @abstractmethod
    def columns(
        self, agg: Agg, v: pl.Expr, inc: pl.Expr, valid: pl.Expr, out: pl.DataType
    ) -> dict[str, pl.Expr]:
        """Per-event prepared columns. ``v`` the input, ``inc`` the ``where`` flag, ``valid``
        = inc and input not null, ``out`` the Polars type of the result."""

    @abstractmethod
    def over_range(
        self, agg: Agg, col: Callable[[str], pl.Series], kr: RangeKernels
    ) -> dict[str, pl.Series]:
        """Accumulator columns for every query from the range kernels; ``col`` reads a
        prepared column of this aggregation."""

    def by_pairs(
        self, agg: Agg, col: Callable[[str], pl.Series], kr: RangeKernels
    ) -> dict[str, pl.Series]:
        """``over_range`` for a kind without a range kernel: its ``over_pairs`` over explicit
        (query, event) pairs (``RangeKernels.by_pairs``)."""
        exprs = self.over_pairs(agg, lambda n: pl.col(col(n).name), pl.col("__i"))
        return kr.by_pairs(agg.span, exprs)

    @abstractmethod
    def over_pairs(self, agg: Agg, col: Col, index: pl.Expr) -> dict[str, pl.Expr]:
        """The same accumulators as aggregations over a query's group of visible events
        (``index``: the event's row in the sorted events)."""

    @abstractmethod
    def empty_pairs(self, agg: Agg, col: Col) -> list[pl.Expr]:
        """Fill of the accumulator columns for queries with no visible event."""

    # True when ``over_range`` reads only kernels that can leave out given events of a range
    # (``distinct_count``): a query with late events in its range is answered with them left
    # out, instead of from (query, event) pairs.
    skips: ClassVar[bool] = False

    def merge_ranges(self, agg: Agg, col: Col) -> dict[str, pl.Expr] | None:
        """The accumulators of a union of disjoint event ranges, as aggregations over the
        ranges' own accumulators (``over_range`` of each, grouped by query, the oldest range
        first); None when
        ``over_range`` reads more than the range bounds (the query time) or its accumulators
        do not combine. A query that must not see a few late events of its range is answered
        from the ranges between them; a kind without this takes the (query, event) pairs."""
        return None

    def resolve(
        self, agg: Agg, col: Col, events: pl.DataFrame, raw: pl.DataFrame
    ) -> dict[str, pl.Series]:
        """Columns computed after both query paths are merged (e.g. a value by its index)."""
        return {}

    @abstractmethod
    def finalize_expr(self, agg: Agg, col: Col) -> pl.Expr:
        """Accumulator columns -> value, the same arithmetic as ``finalizer``."""


# ---- count ---------------------------------------------------------------------------------


class Count(AggKind):
    name = "count"
    fields = ("",)
    plan = "exact prefix-sum difference"

    def result_type(self, arg: DType | None) -> DType:
        return I

    def empty(self, agg: Agg) -> Any:
        return 0

    def fold_code(self, agg: Agg, acc: str, value: str, ts: str, seq: str) -> list[str]:
        return [f"if {value} is not None: {acc} += 1"]

    def range_code(
        self, agg: Agg, acc: str, rec: RecordFields, lo: str, hi: str
    ) -> list[str] | None:
        if agg.arg is None and rec.bit is None:  # every event counts
            return [f"{acc} += {hi} - {lo}"]
        return None

    def bulk_code(
        self, agg: Agg, acc: str, rec: RecordFields, lo: str, hi: str
    ) -> list[str] | None:
        return [f"{acc} += sum(map(_not_none, {rec.values(lo, hi)}))"]  # True for count()

    def prefix_terms(self, agg: Agg, rec: RecordFields, seg: str) -> list[tuple[int, str]] | None:
        return [(-1, rec.passing(seg, f"map(_not_none, {rec.each(seg)})"))]

    def merge_code(self, agg: Agg, acc: str, other: str) -> list[str]:
        return [f"{acc} += {other}"]

    def copy(self, acc: Any) -> Any:
        return acc

    def finalizer(self, agg: Agg) -> Finalizer:
        return lambda acc: acc

    def copy_code(self, acc: str) -> str | None:
        return acc

    def finalize_code(self, agg: Agg, acc: str) -> str | None:
        return acc

    def columns(
        self, agg: Agg, v: pl.Expr, inc: pl.Expr, valid: pl.Expr, out: pl.DataType
    ) -> dict[str, pl.Expr]:
        return {"n": valid.cast(I64)}

    def over_range(
        self, agg: Agg, col: Callable[[str], pl.Series], kr: RangeKernels
    ) -> dict[str, pl.Series]:
        return {"n": kr.range_sum(col("n"), agg.span)}

    def summed(self, agg: Agg) -> tuple[str, ...] | None:
        return ("n",)

    def over_pairs(self, agg: Agg, col: Col, index: pl.Expr) -> dict[str, pl.Expr]:
        return {"n": col("n").sum()}

    def empty_pairs(self, agg: Agg, col: Col) -> list[pl.Expr]:
        return [col("n").fill_null(0)]

    def merge_ranges(self, agg: Agg, col: Col) -> dict[str, pl.Expr] | None:
        return {"n": col("n").sum()}

    def finalize_expr(self, agg: Agg, col: Col) -> pl.Expr:
        return col("n").cast(I64)


# ---- sum / mean: exact sums (fixed point for floats) ----------------------------------------


class Sum(AggKind):
    name = "sum"
    fields = ("n", "total", "pos", "neg", "nan")
    plan = "exact Int128 prefix-sum difference"
    # the saturation flag of kernels.to_fixed -> the field counting it
    _saturation: ClassVar[dict[str, str]] = {"+": "pos", "-": "neg", "nan": "nan"}

    def result_type(self, arg: DType | None) -> DType:
        _need(arg is not None and arg.is_numeric, f"{self.name} needs a numeric input, got {arg}")
        assert arg is not None
        return arg

    def prepare_code(self, agg: Agg, v: str) -> str:
        return f"(None if {v} is None else {fixed_code(v)})" if float_input(agg) else v

    def empty(self, agg: Agg) -> Any:
        return [0, 0, 0, 0, 0]

    def namespace(self, agg: Agg) -> dict[str, Any]:
        return {"_SATURATION": {f: self.fields.index(n) for f, n in self._saturation.items()}}

    def fold_code(self, agg: Agg, acc: str, value: str, ts: str, seq: str) -> list[str]:
        return [
            f"p = {value}",
            "if p is not None:",
            f"    {self.at(acc, 'n')} += 1",
            f"    if type(p) is int: {self.at(acc, 'total')} += p",
            f"    else: {acc}[_SATURATION[p]] += 1",  # a float input's saturation flag
        ]

    def bulk_code(
        self, agg: Agg, acc: str, rec: RecordFields, lo: str, hi: str
    ) -> list[str] | None:
        # exact integers: one sum() in any order is the fold's total; a saturation flag (a
        # str) among the values makes sum() raise before anything is added, and the values
        # are then folded one by one
        v = f"v_{acc}"
        return [
            f"{v} = list(filter(_not_none, {rec.values(lo, hi)}))",
            f"{self.at(acc, 'n')} += len({v})",
            "try:",
            f"    {self.at(acc, 'total')} += sum({v})",
            "except TypeError:",
            f"    for p in {v}:",
            f"        if type(p) is int: {self.at(acc, 'total')} += p",
            f"        else: {acc}[_SATURATION[p]] += 1",
        ]

    def prefix_terms(self, agg: Agg, rec: RecordFields, seg: str) -> list[tuple[int, str]] | None:
        if self.needs_query_time:  # a term weighed by its age at T: no running sum
            return None
        each = rec.each(seg)
        return [
            (self.fields.index("n"), rec.passing(seg, f"map(_not_none, {each})")),
            # a saturation flag (a str) stays a str: the running sum raises TypeError
            (self.fields.index("total"), rec.passing(seg, f"map(_or_zero, {each}, {each})")),
        ]

    def merge_code(self, agg: Agg, acc: str, other: str) -> list[str]:
        return [f"{acc}[{j}] += {other}[{j}]" for j in range(len(self.fields))]

    def copy(self, acc: Any) -> Any:
        return list(acc)

    def copy_code(self, acc: str) -> str | None:
        return f"list({acc})"

    def finalize_code(self, agg: Agg, acc: str) -> str | None:
        n, total = self.at(acc, "n"), self.at(acc, "total")
        if self.fixed_point(agg):
            flags = ", ".join(self.at(acc, f) for f in ("pos", "neg", "nan"))
            s = f"_k.finalize_float_sum({total}, {flags})"
            value = f"{s} / float({n})" if self.name == "mean" else s
        elif self.name == "mean":
            value = f"float({total}) / float({n})"
        else:
            value = f"({total} if {k.INT_MIN} <= {total} <= {k.INT_MAX} else None)"
        return f"(None if {n} == 0 else {value})"

    def finalizer(self, agg: Agg) -> Finalizer:
        is_float, is_mean = self.fixed_point(agg), self.name == "mean"

        def finish(acc: Any) -> Any:
            n, total, pos, neg, nan = acc
            if n == 0:
                return None
            if is_float:
                s = k.finalize_float_sum(total, pos, neg, nan)
            elif not is_mean:
                return total if k.INT_MIN <= total <= k.INT_MAX else None
            else:
                s = float(total)
            return s / float(n) if is_mean else s

        return finish

    def columns(
        self, agg: Agg, v: pl.Expr, inc: pl.Expr, valid: pl.Expr, out: pl.DataType
    ) -> dict[str, pl.Expr]:
        if not float_input(agg):
            return {
                "n": valid.cast(I64),
                "total": pl.when(valid).then(v.cast(I128)).otherwise(0).cast(I128),
            }
        q, pos, neg, nan = fixed_expr(v)
        return {
            "n": valid.cast(I64),
            "total": pl.when(valid).then(q).otherwise(0).cast(I128),
            "pos": (valid & pos).cast(I64),
            "neg": (valid & neg).cast(I64),
            "nan": (valid & nan).cast(I64),
        }

    def fixed_point(self, agg: Agg) -> bool:
        """Whether the total is a fixed-point sum of floats (with saturation counts), not an
        exact integer sum."""
        return float_input(agg)

    def _summed(self, agg: Agg) -> tuple[str, ...]:
        return self.fields if self.fixed_point(agg) else ("n", "total")

    def summed(self, agg: Agg) -> tuple[str, ...] | None:
        return None if self.needs_query_time else self._summed(agg)

    def over_range(
        self, agg: Agg, col: Callable[[str], pl.Series], kr: RangeKernels
    ) -> dict[str, pl.Series]:
        return {f: kr.range_sum(col(f), agg.span) for f in self._summed(agg)}

    def over_pairs(self, agg: Agg, col: Col, index: pl.Expr) -> dict[str, pl.Expr]:
        return {f: col(f).sum() for f in self._summed(agg)}

    def merge_ranges(self, agg: Agg, col: Col) -> dict[str, pl.Expr] | None:
        if self.needs_query_time:  # each term weighed by its age at T: not from the bounds
            return None
        return {f: col(f).sum() for f in self._summed(agg)}

    def empty_pairs(self, agg: Agg, col: Col) -> list[pl.Expr]:
        return [col(f).fill_null(0) for f in self._summed(agg)]

    def finalize_expr(self, agg: Agg, col: Col) -> pl.Expr:
        n, total = col("n"), col("total")
        if self.fixed_point(agg):
            pos, neg, nan = col("pos"), col("neg"), col("nan")
            base = (
                pl.when((nan > 0) | ((pos > 0) & (neg > 0)))
                .then(float("nan"))
                .when(pos > 0)
                .then(math.inf)
                .when(neg > 0)
                .then(-math.inf)
                .otherwise(total.cast(F64) * k.INV_SCALE)
            )
        elif self.name == "sum":
            in_range = (total >= k.INT_MIN) & (total <= k.INT_MAX)
            base = pl.when(in_range).then(total).otherwise(None).cast(I64)
        else:
            base = total.cast(F64)
        if self.name == "mean":
            base = base / n.cast(F64)
        return pl.when(n == 0).then(None).otherwise(base)


class DecayedSum(Sum):
    """sum of x * 2**(-(T - ts) / half_life) over the window, each term held in fixed point
    (docs/semantics.md): the weight depends on the query time T, so the fold runs at query time
    only; a window is required and hops are refused (tiles have no T)."""

    name = "decayed_sum"
    plan = "exact Int128 sums of fixed-point weighted terms over (query, event) pairs"
    needs_query_time = True

    def result_type(self, arg: DType | None) -> DType:
        _need(arg is not None and arg.is_numeric, f"{self.name} needs a numeric input, got {arg}")
        return F

    def fixed_point(self, agg: Agg) -> bool:
        return True  # weighted terms are floats, whatever the input

    def prepare_code(self, agg: Agg, v: str) -> str:
        return f"(None if {v} is None else float({v}))"

    def namespace(self, agg: Agg) -> dict[str, Any]:
        return {**super().namespace(agg), "_decayed": k.decayed_fixed}

    def fold_code(self, agg: Agg, acc: str, value: str, ts: str, seq: str) -> list[str]:
        h = float(agg.param("half_life_us"))
        return [
            f"p = {value}",
            "if p is not None:",
            f"    {self.at(acc, 'n')} += 1",
            f"    p = _decayed(p, t - {ts}, {h!r})",  # t: the query time (aggregate's argument)
            f"    if type(p) is int: {self.at(acc, 'total')} += p",
            f"    else: {acc}[_SATURATION[p]] += 1",
        ]

    def bulk_code(
        self, agg: Agg, acc: str, rec: RecordFields, lo: str, hi: str
    ) -> list[str] | None:
        return None  # each term's weight reads its own ts: event by event

    def columns(
        self, agg: Agg, v: pl.Expr, inc: pl.Expr, valid: pl.Expr, out: pl.DataType
    ) -> dict[str, pl.Expr]:
        return {"x": pl.when(valid).then(v.cast(F64)).otherwise(None), "ts": pl.col("__ts")}

    def over_range(
        self, agg: Agg, col: Callable[[str], pl.Series], kr: RangeKernels
    ) -> dict[str, pl.Series]:
        return self.by_pairs(agg, col, kr)

    def over_pairs(self, agg: Agg, col: Col, index: pl.Expr) -> dict[str, pl.Expr]:
        x = col("x")
        age = (pl.col("__t") - col("ts")).cast(F64)  # the query time of the pair (QUERY_T)
        # the half-life as a column: Polars turns a division by a literal into a multiplication
        # by its reciprocal, which is not IEEE division (the per-event path divides)
        half_life = pl.int_range(pl.len()).cast(F64) * 0.0 + float(agg.param("half_life_us"))
        weight = pl.lit(2.0, F64).pow(-(age / half_life))
        q, pos, neg, nan = fixed_expr(x * weight)
        valid = x.is_not_null()
        return {
            "n": valid.sum().cast(I64),
            "total": pl.when(valid).then(q).otherwise(0).cast(I128).sum(),
            "pos": (valid & pos).sum().cast(I64),
            "neg": (valid & neg).sum().cast(I64),
            "nan": (valid & nan).sum().cast(I64),
        }


class Mean(Sum):
    name = "mean"
    plan = "exact Int128 prefix-sum difference / count"

    def result_type(self, arg: DType | None) -> DType:
        super().result_type(arg)
        return F


# ---- var / std: exact sums of x and x*x, one fixed finalization -----------------------------


class Var(AggKind):
    name = "var"
    fields = ("n", "s1", "s2", "flags")
    plan = "exact Int128 prefix sums of x and x*x"

    def result_type(self, arg: DType | None) -> DType:
        _need(arg is not None and arg.is_numeric, f"{self.name} needs a numeric input, got {arg}")
        return F

    def prepare_code(self, agg: Agg, v: str) -> str:
        return f"(None if {v} is None else ({fixed_code(v)}, _k.to_fixed({v} * {v})))"

    def empty(self, agg: Agg) -> Any:
        return [0, 0, 0, 0]

    def fold_code(self, agg: Agg, acc: str, value: str, ts: str, seq: str) -> list[str]:
        return [
            f"p = {value}",
            "if p is not None:",
            f"    {self.at(acc, 'n')} += 1",
            "    if type(p[0]) is int and type(p[1]) is int:",
            f"        {self.at(acc, 's1')} += p[0]",
            f"        {self.at(acc, 's2')} += p[1]",
            f"    else: {self.at(acc, 'flags')} += 1",  # NaN or a saturated x or x*x
        ]

    def bulk_code(
        self, agg: Agg, acc: str, rec: RecordFields, lo: str, hi: str
    ) -> list[str] | None:
        # as Sum.bulk_code, for the pairs (x, x*x): a flag in either makes a sum() raise
        v, s1, s2 = (f"{n}_{acc}" for n in ("v", "s1", "s2"))
        return [
            f"{v} = list(filter(_not_none, {rec.values(lo, hi)}))",
            f"{self.at(acc, 'n')} += len({v})",
            "try:",
            f"    {s1} = sum(map(_item(0), {v}))",
            f"    {s2} = sum(map(_item(1), {v}))",
            "except TypeError:",
            f"    {s1} = {s2} = 0",
            f"    for p in {v}:",
            "        if type(p[0]) is int and type(p[1]) is int:",
            f"            {s1} += p[0]",
            f"            {s2} += p[1]",
            f"        else: {self.at(acc, 'flags')} += 1",
            f"{self.at(acc, 's1')} += {s1}",
            f"{self.at(acc, 's2')} += {s2}",
        ]

    def prefix_terms(self, agg: Agg, rec: RecordFields, seg: str) -> list[tuple[int, str]] | None:
        each = rec.each(seg)
        pairs = f"map(_or_zeros, {each}, {each})"  # (x, x*x), (0, 0) for a null
        return [
            (self.fields.index("n"), rec.passing(seg, f"map(_not_none, {each})")),
            (self.fields.index("s1"), rec.passing(seg, f"map(_item(0), {pairs})")),
            (self.fields.index("s2"), rec.passing(seg, f"map(_item(1), {pairs})")),
        ]

    def merge_code(self, agg: Agg, acc: str, other: str) -> list[str]:
        return [f"{acc}[{j}] += {other}[{j}]" for j in range(len(self.fields))]

    def copy(self, acc: Any) -> Any:
        return list(acc)

    def copy_code(self, acc: str) -> str | None:
        return f"list({acc})"

    def finalizer(self, agg: Agg) -> Finalizer:
        is_std = self.name == "std"

        def finish(acc: Any) -> Any:
            n, s1, s2, flags = acc
            return k.finalize_moment(n, s1, s2, flags, is_std)

        return finish

    def finalize_code(self, agg: Agg, acc: str) -> str | None:
        n, s1, s2, flags = (self.at(acc, f) for f in self.fields)
        # kernels.finalize_var's null for one value or none, without a call
        moment = f"_k.finalize_moment({n}, {s1}, {s2}, {flags}, {self.name == 'std'})"
        return f"(None if {n} <= 1 else {moment})"

    def columns(
        self, agg: Agg, v: pl.Expr, inc: pl.Expr, valid: pl.Expr, out: pl.DataType
    ) -> dict[str, pl.Expr]:
        q1, p1, n1, x1 = fixed_expr(v)
        q2, p2, n2, x2 = fixed_expr(v * v)
        return {
            "n": valid.cast(I64),
            "s1": pl.when(valid).then(q1).otherwise(0).cast(I128),
            "s2": pl.when(valid).then(q2).otherwise(0).cast(I128),
            "flags": (valid & (p1 | n1 | x1 | p2 | n2 | x2)).cast(I64),
        }

    def over_range(
        self, agg: Agg, col: Callable[[str], pl.Series], kr: RangeKernels
    ) -> dict[str, pl.Series]:
        return {f: kr.range_sum(col(f), agg.span) for f in self.fields}

    def summed(self, agg: Agg) -> tuple[str, ...] | None:
        return self.fields

    def over_pairs(self, agg: Agg, col: Col, index: pl.Expr) -> dict[str, pl.Expr]:
        return {f: col(f).sum() for f in self.fields}

    def merge_ranges(self, agg: Agg, col: Col) -> dict[str, pl.Expr] | None:
        return {f: col(f).sum() for f in self.fields}

    def empty_pairs(self, agg: Agg, col: Col) -> list[pl.Expr]:
        return [col(f).fill_null(0) for f in self.fields]

    def finalize_expr(self, agg: Agg, col: Col) -> pl.Expr:
        n = col("n")
        nf = n.cast(F64)
        s1 = col("s1").cast(F64) * k.INV_SCALE
        s2 = col("s2").cast(F64) * k.INV_SCALE
        m2 = s2 - s1 * (s1 / nf)  # the operation sequence of kernels.finalize_var
        m2 = pl.when(m2.is_nan() | (m2 <= 0.0)).then(0.0).otherwise(m2)
        var = (
            pl.when(n <= 1)
            .then(None)
            .when(col("flags") > 0)
            .then(float("nan"))
            .otherwise(m2 / (n - 1).cast(F64))
        )
        return var if self.name == "var" else var.sqrt()


class Std(Var):
    name = "std"


# ---- min / max -------------------------------------------------------------------------------


class Min(AggKind):
    name = "min"
    fields = ("n", "best", "nan")
    plan = "sparse-table range minimum"
    smallest = True

    def result_type(self, arg: DType | None) -> DType:
        _need(arg in (I, F, D), f"{self.name} needs an int, float or datetime input, got {arg}")
        assert arg is not None
        return arg

    def prepare_code(self, agg: Agg, v: str) -> str:
        if float_input(agg):  # -0.0 and 0.0 are one value: canonical 0.0
            return f"(None if {v} is None else ({v} + 0.0 if {v} == 0.0 else {v}))"
        return v

    def empty(self, agg: Agg) -> Any:
        return [0, None, 0]

    def fold_code(self, agg: Agg, acc: str, value: str, ts: str, seq: str) -> list[str]:
        better = "<" if self.smallest else ">"
        best = self.at(acc, "best")
        return [
            f"p = {value}",
            "if p is not None:",
            f"    {self.at(acc, 'n')} += 1",
            f"    if p != p: {self.at(acc, 'nan')} += 1",
            f"    elif {best} is None or p {better} {best}: {best} = p",
        ]

    def bulk_code(
        self, agg: Agg, acc: str, rec: RecordFields, lo: str, hi: str
    ) -> list[str] | None:
        # min()/max() of the non-NaN values is the fold's best: equal values are one value
        # once prepared (-0.0 is 0.0), so which of them is kept does not matter
        v, f, b = (f"{n}_{acc}" for n in ("v", "f", "b"))
        best = self.at(acc, "best")
        lines = [
            f"{v} = list(filter(_not_none, {rec.values(lo, hi)}))",
            f"{self.at(acc, 'n')} += len({v})",
        ]
        if float_input(agg):
            lines += [
                f"{f} = [p for p in {v} if p == p]",
                f"{self.at(acc, 'nan')} += len({v}) - len({f})",
            ]
        else:
            f = v
        better = "<" if self.smallest else ">"
        return [
            *lines,
            f"if {f}:",
            f"    {b} = {'min' if self.smallest else 'max'}({f})",
            f"    if {best} is None or {b} {better} {best}: {best} = {b}",
        ]

    def merge_code(self, agg: Agg, acc: str, other: str) -> list[str]:
        better = "<" if self.smallest else ">"
        n, best, nan = (self.fields.index(f) for f in ("n", "best", "nan"))
        return [
            f"{acc}[{n}] += {other}[{n}]",
            f"{acc}[{nan}] += {other}[{nan}]",
            f"if {other}[{best}] is not None and "
            f"({acc}[{best}] is None or {other}[{best}] {better} {acc}[{best}]): "
            f"{acc}[{best}] = {other}[{best}]",
        ]

    def copy(self, acc: Any) -> Any:
        return list(acc)

    def copy_code(self, acc: str) -> str | None:
        return f"list({acc})"

    def finalizer(self, agg: Agg) -> Finalizer:
        def finish(acc: Any) -> Any:
            n, best, nan = acc
            if n == 0:
                return None
            return math.nan if nan else best

        return finish

    def finalize_code(self, agg: Agg, acc: str) -> str | None:
        n, best, nan = (self.at(acc, f) for f in ("n", "best", "nan"))
        return f"(None if {n} == 0 else (_NAN if {nan} else {best}))"

    def _sentinel(self, agg: Agg) -> pl.Expr:
        """The value an empty range yields: never better than a real input."""
        if float_input(agg):
            return pl.lit(math.inf if self.smallest else -math.inf, F64)
        return pl.lit(k.INT_MAX if self.smallest else k.INT_MIN, I64)

    def columns(
        self, agg: Agg, v: pl.Expr, inc: pl.Expr, valid: pl.Expr, out: pl.DataType
    ) -> dict[str, pl.Expr]:
        sentinel = self._sentinel(agg)
        if float_input(agg):
            canon = pl.when(v == 0.0).then(0.0).otherwise(v)
            nan = valid & v.is_nan()
            best = pl.when(valid & ~v.is_nan()).then(canon).otherwise(sentinel)
        else:
            nan = pl.lit(False)
            best = pl.when(valid).then(v).otherwise(sentinel)
        return {"n": valid.cast(I64), "nan": nan.cast(I64), "best": best.cast(out)}

    def over_range(
        self, agg: Agg, col: Callable[[str], pl.Series], kr: RangeKernels
    ) -> dict[str, pl.Series]:
        w = agg.span
        sentinel = pl.select(self._sentinel(agg)).item()
        return {
            "n": kr.range_sum(col("n"), w),
            "nan": kr.range_sum(col("nan"), w),
            "best": kr.range_extreme(col("best"), w, self.smallest, sentinel),
        }

    def over_pairs(self, agg: Agg, col: Col, index: pl.Expr) -> dict[str, pl.Expr]:
        best = col("best").min() if self.smallest else col("best").max()
        return {"n": col("n").sum(), "nan": col("nan").sum(), "best": best}

    def merge_ranges(self, agg: Agg, col: Col) -> dict[str, pl.Expr] | None:
        best = col("best").min() if self.smallest else col("best").max()
        return {"n": col("n").sum(), "nan": col("nan").sum(), "best": best}

    def empty_pairs(self, agg: Agg, col: Col) -> list[pl.Expr]:
        return [
            col("n").fill_null(0),
            col("nan").fill_null(0),
            col("best").fill_null(self._sentinel(agg)),
        ]

    def finalize_expr(self, agg: Agg, col: Col) -> pl.Expr:
        n = col("n")
        if float_input(agg):
            return (
                pl.when(n == 0)
                .then(None)
                .when(col("nan") > 0)
                .then(float("nan"))
                .otherwise(col("best"))
            )
        return pl.when(n == 0).then(None).otherwise(col("best"))


class Max(Min):
    name = "max"
    plan = "sparse-table range maximum"
    smallest = False


# ---- first / last: the value of the earliest / latest event by (ts, arrival seq) ------------


class First(AggKind):
    name = "first"
    fields = ("ts", "seq", "value")
    plan = "backward-filled event index"
    earliest = True

    def result_type(self, arg: DType | None) -> DType:
        _need(arg is not None, f"{self.name} needs an input")
        assert arg is not None
        return arg

    def empty(self, agg: Agg) -> Any:
        return None

    def fold_code(self, agg: Agg, acc: str, value: str, ts: str, seq: str) -> list[str]:
        before = "<" if self.earliest else ">"
        # a null input counts: first/last pick the event, then its value (docs/semantics.md)
        # (ts, seq) compared field by field: no tuples built per event
        return [
            f"if {acc} is None or {ts} {before} {acc}[0] or "
            f"({ts} == {acc}[0] and {seq} {before} {acc}[1]): "
            f"{acc} = ({ts}, {seq}, {value})"
        ]

    def range_code(
        self, agg: Agg, acc: str, rec: RecordFields, lo: str, hi: str
    ) -> list[str] | None:
        r = f"r_{acc}"
        return [*self.pick_code(rec, lo, hi, r), f"if {r} is not None:"] + [
            f"    {ln}" for ln in self.picked_code(agg, acc, rec, r)
        ]

    def pick_code(self, rec: RecordFields, lo: str, hi: str, r: str) -> list[str]:
        """Python statements setting ``r`` to the record this kind picks among ``buf[lo:hi]``
        (passing the ``where``; None if none does). It depends on the window, the ``where``
        and the direction only, so aggregations of one window share it (``ViewProgram``)."""
        # the buffer is sorted by ts: the pick is among the passing events of the smallest
        # (largest) ts, found from that end (usually one event)
        j, k, q = (f"{n}_{r}" for n in "jkq")
        passes = rec.passes(f"buf[{j}]")
        tie = rec.passes(q)
        if self.earliest:
            start, inside, sign, before = lo, f"< {hi}", "+", "<"
        else:
            start, inside, sign, before = f"{hi} - 1", f">= {lo}", "-", ">"
        step = f"{sign}= 1"
        better = f"{q}[{rec.seq}] {before} {r}[{rec.seq}]"
        if tie is not None:
            better = f"{tie} and {better}"
        lines = [f"{r} = None", f"{j} = {start}"]
        if passes is not None:
            lines.append(f"while {j} {inside} and not ({passes}): {j} {step}")
        walk = [
            f"    {k} = {j} {sign} 1",
            f"    while {k} {inside} and buf[{k}][{rec.ts}] == {r}[{rec.ts}]:",
            f"        {q} = buf[{k}]",
            f"        if {better}: {r} = {q}",
            f"        {k} {step}",
        ]
        if tie is None:
            # no ``where``: a run of ties (bursts of events in one microsecond) found by
            # bisection and its smallest (largest) seq by min (max), C-level; the same record
            # the walk picks (the first of equal seqs in its direction)
            ts, seq = f"_item({rec.ts})", f"_item({rec.seq})"
            if self.earliest:
                nxt = f"{j} + 1"
                run = f"buf[{j}:_bisect_right(buf, {r}[{rec.ts}], {j}, {hi}, key={ts})]"
                best = f"min({run}, key={seq})"
            else:
                nxt = f"{j} - 1"
                run = f"buf[_bisect_left(buf, {r}[{rec.ts}], {lo}, {j}, key={ts}):{j} + 1]"
                best = f"max(reversed({run}), key={seq})"
            walk = [
                f"    if {nxt} {inside} and buf[{nxt}][{rec.ts}] == {r}[{rec.ts}]:",
                f"        {r} = {best}",
            ]
        return [*lines, f"if {j} {inside}:", f"    {r} = buf[{j}]", *walk]

    def picked_code(self, agg: Agg, acc: str, rec: RecordFields, r: str) -> list[str]:
        """Python statements folding the picked record ``r`` (not None) like any event."""
        return self.fold_code(agg, acc, rec.value_of(r), f"{r}[{rec.ts}]", f"{r}[{rec.seq}]")

    def merge_code(self, agg: Agg, acc: str, other: str) -> list[str]:
        before = "<" if self.earliest else ">"
        return [
            f"if {other} is not None and ({acc} is None or {other}[0] {before} {acc}[0] or "
            f"({other}[0] == {acc}[0] and {other}[1] {before} {acc}[1])): {acc} = {other}"
        ]

    def copy(self, acc: Any) -> Any:
        return acc

    def finalizer(self, agg: Agg) -> Finalizer:
        return lambda acc: None if acc is None else acc[2]

    def from_wire(self, obj: Any) -> Any:
        return None if obj is None else tuple(obj)

    def copy_code(self, acc: str) -> str | None:
        return acc

    def finalize_code(self, agg: Agg, acc: str) -> str | None:
        return f"(None if {acc} is None else {acc}[2])"

    def from_wire_code(self, obj: str) -> str | None:
        return f"(None if {obj} is None else tuple({obj}))"

    def columns(
        self, agg: Agg, v: pl.Expr, inc: pl.Expr, valid: pl.Expr, out: pl.DataType
    ) -> dict[str, pl.Expr]:
        return {"inc": inc, "value": v.cast(out)}

    def over_range(
        self, agg: Agg, col: Callable[[str], pl.Series], kr: RangeKernels
    ) -> dict[str, pl.Series]:
        pick = kr.first_marked if self.earliest else kr.last_marked
        return {"idx": pick(col("inc"), agg.span)}

    def over_pairs(self, agg: Agg, col: Col, index: pl.Expr) -> dict[str, pl.Expr]:
        marked = index.filter(col("inc"))
        return {"idx": marked.min() if self.earliest else marked.max()}

    def merge_ranges(self, agg: Agg, col: Col) -> dict[str, pl.Expr] | None:
        # the ranges are in (ts, seq) order, so the first (last) event of the union is the
        # smallest (largest) row any range picked; min/max skip the ranges that picked none
        return {"idx": col("idx").min() if self.earliest else col("idx").max()}

    def empty_pairs(self, agg: Agg, col: Col) -> list[pl.Expr]:
        return []  # no event: a null index, a null value

    def resolve(
        self, agg: Agg, col: Col, events: pl.DataFrame, raw: pl.DataFrame
    ) -> dict[str, pl.Series]:
        values = events.select(col("value")).to_series()
        if events.height == 0:
            return {"val": pl.Series([None] * raw.height, dtype=values.dtype)}
        return {"val": values.gather(raw.select(col("idx")).to_series())}

    def finalize_expr(self, agg: Agg, col: Col) -> pl.Expr:
        return col("val")


class Last(First):
    name = "last"
    plan = "forward-filled event index"
    earliest = False


# ---- count_distinct --------------------------------------------------------------------------


def _wire_order(v: Any) -> tuple[str, Any]:
    return (type(v).__name__, v)


class CountDistinct(AggKind):
    name = "count_distinct"
    fields = ("",)
    plan = "first-occurrence prefix sum (lifetime) / next-occurrence binary search (window)"

    def result_type(self, arg: DType | None) -> DType:
        _need(arg is not None, f"{self.name} needs an input")
        return I

    def prepare_code(self, agg: Agg, v: str) -> str:
        if float_input(agg):  # all NaNs are one value, -0.0 is 0.0
            return f"(None if {v} is None else _k.distinct_key({v}))"
        return v

    def empty(self, agg: Agg) -> Any:
        return set()

    def fold_code(self, agg: Agg, acc: str, value: str, ts: str, seq: str) -> list[str]:
        return [f"p = {value}", f"if p is not None: {acc}.add(p)"]

    def bulk_code(
        self, agg: Agg, acc: str, rec: RecordFields, lo: str, hi: str
    ) -> list[str] | None:
        return [f"{acc}.update(filter(_not_none, {rec.values(lo, hi)}))"]

    def lifetime_code(
        self, agg: Agg, out: str, acc: str, rec: RecordFields, hi: str
    ) -> list[str] | None:
        # |acc | S| = |acc| + |S - acc|: the values of the buffer's events the set lacks,
        # found by C-level set operations, instead of a copy of the whole history's set; a
        # null among them is not counted (the set never holds one: ``fold_code``)
        return [
            f"{out} = set({rec.values('0', hi)}) - {acc}",
            f"{out} = len({acc}) + len({out}) - (None in {out})",
        ]

    def merge_code(self, agg: Agg, acc: str, other: str) -> list[str]:
        return [f"{acc} |= {other}"]

    def copy(self, acc: Any) -> Any:
        return set(acc)

    def finalizer(self, agg: Agg) -> Finalizer:
        return len

    def copy_code(self, acc: str) -> str | None:
        return f"set({acc})"

    def finalize_code(self, agg: Agg, acc: str) -> str | None:
        return f"len({acc})"

    grows_in_place = True  # a set: fold only adds

    def to_wire(self, acc: Any) -> Any:
        # Values of one type sort alike by value and by (type name, value), without the keys.
        # A sort that succeeds with a str first holds only str: any other type beside a str
        # would have been compared with one, which raises.
        try:
            out = sorted(acc)
        except TypeError:
            return sorted(acc, key=_wire_order)
        if not out or type(out[0]) is str or len(set(map(type, out))) == 1:
            return out
        return sorted(acc, key=_wire_order)

    def from_wire(self, obj: Any) -> Any:
        return set(obj)

    def from_wire_code(self, obj: str) -> str | None:
        return f"set({obj})"

    def columns(
        self, agg: Agg, v: pl.Expr, inc: pl.Expr, valid: pl.Expr, out: pl.DataType
    ) -> dict[str, pl.Expr]:
        if float_input(agg):
            v = pl.when(v.is_nan()).then(float("nan")).when(v == 0.0).then(0.0).otherwise(v)
        return {"key": pl.when(valid).then(v).otherwise(None)}

    skips = True

    def over_range(
        self, agg: Agg, col: Callable[[str], pl.Series], kr: RangeKernels
    ) -> dict[str, pl.Series]:
        return {"n": kr.distinct_count(col("key").name, agg.span)}

    def over_pairs(self, agg: Agg, col: Col, index: pl.Expr) -> dict[str, pl.Expr]:
        return {"n": col("key").drop_nulls().n_unique().cast(I64)}

    def empty_pairs(self, agg: Agg, col: Col) -> list[pl.Expr]:
        return [col("n").fill_null(0)]

    def finalize_expr(self, agg: Agg, col: Col) -> pl.Expr:
        return col("n").cast(I64)


# ---- mode: the most frequent non-null value, ties to the smallest ----------------------------

# The one NaN a mode accumulator holds as a key: a dict finds a NaN key only by identity (NaN !=
# NaN), so every NaN is replaced by this object before it is counted. Boxed in a tuple for the
# generated code's namespace, which must compare equal to itself (a bare NaN does not).
_MODE_NAN = (math.nan,)


def _float_order(v: float) -> tuple[int, float]:
    """The total order on canonical floats: numbers ascending, then NaN (Polars' order)."""
    return (1, 0.0) if v != v else (0, v)


def _same(v: Any) -> Any:
    return v


class Mode(AggKind):
    name = "mode"
    fields = ("",)
    plan = "group aggregation over (query, event) pairs: most frequent value, ties to the smallest"

    def result_type(self, arg: DType | None) -> DType:
        _need(
            arg in (I, F, DType.STR, DType.BOOL, D),
            f"{self.name} needs an int, float, str, bool or datetime input, got {arg}",
        )
        assert arg is not None
        return arg

    def prepare_code(self, agg: Agg, v: str) -> str:
        if float_input(agg):  # -0.0 and 0.0 are one value: 0.0 (the fold makes NaNs one)
            return f"(None if {v} is None else ({v} + 0.0 if {v} == 0.0 else {v}))"
        return v

    def empty(self, agg: Agg) -> Any:
        return {}

    grows_in_place = False  # a count changes without the dict's size changing

    def namespace(self, agg: Agg) -> dict[str, Any]:
        return {"_MODE_NAN": _MODE_NAN} if float_input(agg) else {}

    def fold_code(self, agg: Agg, acc: str, value: str, ts: str, seq: str) -> list[str]:
        lines = [f"p = {value}", "if p is not None:"]
        if float_input(agg):  # records decoded from bytes hold NaNs of their own
            lines.append("    if p != p: p = _MODE_NAN[0]")
        lines.append(f"    {acc}[p] = {acc}.get(p, 0) + 1")
        return lines

    def merge_code(self, agg: Agg, acc: str, other: str) -> list[str]:
        # both hold canonical keys (fold and from_wire make them so)
        return [f"for _mv, _mc in {other}.items(): {acc}[_mv] = {acc}.get(_mv, 0) + _mc"]

    def copy(self, acc: Any) -> Any:
        return dict(acc)

    def finalizer(self, agg: Agg) -> Finalizer:
        order = _float_order if float_input(agg) else _same

        def finish(acc: Any) -> Any:
            if not acc:
                return None
            top = max(acc.values())
            best = min((v for v, c in acc.items() if c == top), key=order)
            return math.nan if best != best else best

        return finish

    def to_wire(self, acc: Any) -> Any:
        # one input type per aggregation: its values sort by the value order
        order = _float_order if any(type(v) is float for v in acc) else _same
        return [[v, c] for v, c in sorted(acc.items(), key=lambda vc: order(vc[0]))]

    def from_wire(self, obj: Any) -> Any:
        return {(_MODE_NAN[0] if v != v else v): c for v, c in obj}

    def columns(
        self, agg: Agg, v: pl.Expr, inc: pl.Expr, valid: pl.Expr, out: pl.DataType
    ) -> dict[str, pl.Expr]:
        if float_input(agg):
            v = pl.when(v.is_nan()).then(float("nan")).when(v == 0.0).then(0.0).otherwise(v)
        return {"value": pl.when(valid).then(v).otherwise(None).cast(out)}

    def over_range(
        self, agg: Agg, col: Callable[[str], pl.Series], kr: RangeKernels
    ) -> dict[str, pl.Series]:
        return self.by_pairs(agg, col, kr)

    def over_pairs(self, agg: Agg, col: Col, index: pl.Expr) -> dict[str, pl.Expr]:
        # every most frequent value, then the smallest in Polars' sort order: NaN after every
        # number, strings by UTF-8 bytes (= code points), false before true
        return {"mode": col("value").drop_nulls().mode().sort().first()}

    def empty_pairs(self, agg: Agg, col: Col) -> list[pl.Expr]:
        return []  # no event: a null mode

    def finalize_expr(self, agg: Agg, col: Col) -> pl.Expr:
        return col("mode")


# ---- approx_percentile: a log-scale sketch (featurepipe.ir.sketch) -----------------------------


class ApproxPercentile(AggKind):
    name = "approx_percentile"
    fields = ("",)
    plan = "nearest rank over sketch buckets of (query, event) pairs"

    def result_type(self, arg: DType | None) -> DType:
        _need(arg is not None and arg.is_numeric, f"{self.name} needs a numeric input, got {arg}")
        return F

    def prepare_code(self, agg: Agg, v: str) -> str:
        return f"(None if {v} is None else _k.sketch_bucket(float({v})))"

    def empty(self, agg: Agg) -> Any:
        return {}

    def fold_code(self, agg: Agg, acc: str, value: str, ts: str, seq: str) -> list[str]:
        return [f"p = {value}", f"if p is not None: {acc}[p] = {acc}.get(p, 0) + 1"]

    def merge_code(self, agg: Agg, acc: str, other: str) -> list[str]:
        return [f"for _b, _c in {other}.items(): {acc}[_b] = {acc}.get(_b, 0) + _c"]

    def copy(self, acc: Any) -> Any:
        return dict(acc)

    def finalizer(self, agg: Agg) -> Finalizer:
        q = float(agg.param("q"))

        def finish(acc: Any) -> Any:
            if not acc:
                return None
            wanted = sketch.rank(q, sum(acc.values()))
            seen = 0
            for key in sorted(acc):
                seen += acc[key]
                if seen >= wanted:
                    return sketch.representative(key)
            raise AssertionError("rank beyond the counts")  # ceil(q * n) <= n for q <= 1

        return finish

    def to_wire(self, acc: Any) -> Any:
        return [[key, acc[key]] for key in sorted(acc)]

    def from_wire(self, obj: Any) -> Any:
        return {key: count for key, count in obj}

    def columns(
        self, agg: Agg, v: pl.Expr, inc: pl.Expr, valid: pl.Expr, out: pl.DataType
    ) -> dict[str, pl.Expr]:
        return {"key": pl.when(valid).then(sketch.bucket_expr(v.cast(F64))).otherwise(None)}

    def over_range(
        self, agg: Agg, col: Callable[[str], pl.Series], kr: RangeKernels
    ) -> dict[str, pl.Series]:
        return self.by_pairs(agg, col, kr)

    def over_pairs(self, agg: Agg, col: Col, index: pl.Expr) -> dict[str, pl.Expr]:
        keys = col("key").drop_nulls()
        n = keys.len().cast(F64)
        # sketch.rank: ceil(q * n) in binary64 (as the Python float product), at least 1
        rank = (pl.lit(float(agg.param("q")), F64) * n).ceil().cast(I64).clip(lower_bound=1)
        return {"key": keys.sort().get(rank - 1, null_on_oob=True)}

    def empty_pairs(self, agg: Agg, col: Col) -> list[pl.Expr]:
        return []  # no event: a null key, a null value

    def finalize_expr(self, agg: Agg, col: Col) -> pl.Expr:
        return sketch.representative_expr(col("key"))


# ---- last_k / first_k / last_distinct_k: lists of values by (ts, arrival seq) ----------------

_LISTABLE = (I, F, DType.BOOL, DType.STR, D)


class LastK(AggKind):
    """The values of the k newest events with a non-null input, newest first. The accumulator
    keeps those k events as (ts, seq, value), sorted newest first: a later event can only push
    one out, so k of them answer exactly whatever arrives next, in any order."""

    name = "last_k"
    fields = ("",)
    plan = "ranks among the non-null events: the k before the range's end"
    newest = True

    def result_type(self, arg: DType | None) -> DType:
        _need(arg in _LISTABLE, f"{self.name} needs a scalar input, got {arg}")
        assert arg is not None
        return list_of(arg)

    def empty(self, agg: Agg) -> Any:
        return []

    def fold_code(self, agg: Agg, acc: str, value: str, ts: str, seq: str) -> list[str]:
        n = int(agg.param("k"))
        beats = ">" if self.newest else "<"  # than the last kept: newer (last_k), older (first_k)
        return [
            f"p = {value}",
            f"if p is not None and (len({acc}) < {n} or {ts} {beats} {acc}[-1][0] or "
            f"({ts} == {acc}[-1][0] and {seq} {beats} {acc}[-1][1])):",
            # beating the first kept too (the usual case: the buffer is folded in time order):
            # in front; else in its place. (ts, seq) is unique per event, so the sort never
            # compares two values
            f"    if not {acc} or {ts} {beats} {acc}[0][0] or "
            f"({ts} == {acc}[0][0] and {seq} {beats} {acc}[0][1]):",
            f"        {acc}.insert(0, ({ts}, {seq}, p))",
            "    else:",
            f"        {acc}.append(({ts}, {seq}, p))",
            f"        {acc}.sort(reverse={self.newest})",
            f"    del {acc}[{n}:]",
        ]

    def merge_code(self, agg: Agg, acc: str, other: str) -> list[str]:
        n = int(agg.param("k"))
        return [
            f"if {other}:",
            f"    {acc} = sorted([*{acc}, *{other}], reverse={self.newest})[:{n}]",
        ]

    def copy(self, acc: Any) -> Any:
        return list(acc)

    def copy_code(self, acc: str) -> str | None:
        return f"list({acc})"

    def finalizer(self, agg: Agg) -> Finalizer:
        return lambda acc: [e[2] for e in acc] if acc else None

    def from_wire(self, obj: Any) -> Any:
        return [tuple(e) for e in obj]

    def columns(
        self, agg: Agg, v: pl.Expr, inc: pl.Expr, valid: pl.Expr, out: pl.DataType
    ) -> dict[str, pl.Expr]:
        return {"ok": valid, "value": v.cast(out.inner)}  # type: ignore[attr-defined]

    def over_range(
        self, agg: Agg, col: Callable[[str], pl.Series], kr: RangeKernels
    ) -> dict[str, pl.Series]:
        n, values = int(agg.param("k")), col("value")
        return {"values": kr.marked_values(col("ok"), values, agg.span, n, self.newest)}

    def over_pairs(self, agg: Agg, col: Col, index: pl.Expr) -> dict[str, pl.Expr]:
        n = int(agg.param("k"))
        ordered = col("value").sort_by(index).filter(col("ok").sort_by(index))
        return {"values": ordered.tail(n).reverse() if self.newest else ordered.head(n)}

    def merge_ranges(self, agg: Agg, col: Col) -> dict[str, pl.Expr] | None:
        # the ranges come oldest first, each list in the kind's order (newest first for
        # last_k); its values are never null (only valid inputs are kept), so the nulls an
        # empty list explodes into are dropped
        lists = col("values").reverse() if self.newest else col("values")
        return {"values": lists.explode().drop_nulls().head(int(agg.param("k")))}

    def empty_pairs(self, agg: Agg, col: Col) -> list[pl.Expr]:
        return []  # no event: null

    def finalize_expr(self, agg: Agg, col: Col) -> pl.Expr:
        values = col("values")
        return _null_if_empty(values)


class FirstK(LastK):
    name = "first_k"
    plan = "ranks among the non-null events: the k from the range's start"
    newest = False


class LastDistinctK(AggKind):
    """The k most recently seen distinct non-null values, newest first (floats canonical: one
    NaN, 0.0 for -0.0). Exact with k values kept: a value's newest event only moves forward,
    so a value pushed out by k newer ones can only come back with an event of its own."""

    name = "last_distinct_k"
    fields = ("",)
    plan = "k newest distinct non-null values over (query, event) pairs"

    def result_type(self, arg: DType | None) -> DType:
        _need(arg in _LISTABLE, f"{self.name} needs a scalar input, got {arg}")
        assert arg is not None
        return list_of(arg)

    def prepare_code(self, agg: Agg, v: str) -> str:
        return Mode().prepare_code(agg, v)

    def empty(self, agg: Agg) -> Any:
        return {}

    def namespace(self, agg: Agg) -> dict[str, Any]:
        return {"_MODE_NAN": _MODE_NAN, "_newest_distinct": _newest_distinct}

    def fold_code(self, agg: Agg, acc: str, value: str, ts: str, seq: str) -> list[str]:
        lines = [f"p = {value}", "if p is not None:"]
        if float_input(agg):  # one NaN key (a dict finds NaN keys by identity only)
            lines.append("    if p != p: p = _MODE_NAN[0]")
        lines.append(f"    _newest_distinct({acc}, p, ({ts}, {seq}), {int(agg.param('k'))})")
        return lines

    def merge_code(self, agg: Agg, acc: str, other: str) -> list[str]:
        n = int(agg.param("k"))
        return [f"for _dv, _dt in {other}.items(): _newest_distinct({acc}, _dv, _dt, {n})"]

    def copy(self, acc: Any) -> Any:
        return dict(acc)

    def finalizer(self, agg: Agg) -> Finalizer:
        def finish(acc: Any) -> Any:
            if not acc:
                return None
            newest_first = sorted(acc.items(), key=lambda vt: vt[1], reverse=True)
            return [math.nan if v != v else v for v, _ in newest_first]

        return finish

    def to_wire(self, acc: Any) -> Any:
        # by (ts, seq), unique per event: deterministic without comparing values
        return [[v, ts, seq] for v, (ts, seq) in sorted(acc.items(), key=lambda vt: vt[1])]

    def from_wire(self, obj: Any) -> Any:
        return {(_MODE_NAN[0] if v != v else v): (ts, seq) for v, ts, seq in obj}

    def columns(
        self, agg: Agg, v: pl.Expr, inc: pl.Expr, valid: pl.Expr, out: pl.DataType
    ) -> dict[str, pl.Expr]:
        if float_input(agg):
            v = pl.when(v.is_nan()).then(float("nan")).when(v == 0.0).then(0.0).otherwise(v)
        return {"value": pl.when(valid).then(v).otherwise(None).cast(out.inner)}  # type: ignore[attr-defined]

    def over_range(
        self, agg: Agg, col: Callable[[str], pl.Series], kr: RangeKernels
    ) -> dict[str, pl.Series]:
        return self.by_pairs(agg, col, kr)

    def over_pairs(self, agg: Agg, col: Col, index: pl.Expr) -> dict[str, pl.Expr]:
        newest_first = col("value").sort_by(index, descending=True).drop_nulls()
        # unique keeps each value's first row: its newest event (all NaNs are one value)
        return {"values": newest_first.unique(maintain_order=True).head(int(agg.param("k")))}

    def empty_pairs(self, agg: Agg, col: Col) -> list[pl.Expr]:
        return []

    def finalize_expr(self, agg: Agg, col: Col) -> pl.Expr:
        values = col("values")
        return _null_if_empty(values)


def _null_if_empty(values: pl.Expr) -> pl.Expr:
    """A list or map column with no entry as null (the kinds' "nothing to aggregate")."""
    return pl.when(values.list.len() > 0).then(values).otherwise(None)


def _newest_distinct(acc: dict[Any, tuple[int, int]], v: Any, at: tuple[int, int], k: int) -> None:
    """Fold value ``v`` seen at ``at`` = (ts, seq) into ``acc`` (value -> newest (ts, seq)),
    keeping the k values seen most recently."""
    old = acc.get(v)
    if old is not None:
        if at > old:
            acc[v] = at
    elif len(acc) < k:
        acc[v] = at
    else:
        oldest = min(acc, key=acc.__getitem__)
        if at > acc[oldest]:
            del acc[oldest]
            acc[v] = at


# ---- count_by: counts per value (Chronon's bucketed count) -----------------------------------


class CountBy(Mode):
    """Per distinct non-null value, its number of events: a map ordered by count descending,
    then value ascending; ``top_k`` keeps the first k entries. The accumulator is mode's."""

    name = "count_by"
    plan = (
        "prefix counts per (entity, value), or value counts over (query, event) pairs when "
        "fewer; ordered by count then value"
    )

    def result_type(self, arg: DType | None) -> DType:
        _need(
            arg in (I, DType.STR, DType.BOOL),
            f"{self.name} needs an int, str or bool input (the map's keys), got {arg}",
        )
        assert arg is not None
        return map_of(arg)

    def _top(self, agg: Agg) -> int | None:
        top = dict(agg.params or ()).get("top_k")  # absent: every value
        return top if isinstance(top, int) else None

    def finalizer(self, agg: Agg) -> Finalizer:
        top = self._top(agg)

        def finish(acc: Any) -> Any:
            if not acc:
                return None
            ordered = sorted(acc.items(), key=lambda vc: (-vc[1], vc[0]))
            return dict(ordered if top is None else ordered[:top])

        return finish

    def columns(
        self, agg: Agg, v: pl.Expr, inc: pl.Expr, valid: pl.Expr, out: pl.DataType
    ) -> dict[str, pl.Expr]:
        key = out.inner.fields[0].dtype  # type: ignore[attr-defined]  # list of {key, value}
        return {"value": pl.when(valid).then(v).otherwise(None).cast(key)}

    def over_range(
        self, agg: Agg, col: Callable[[str], pl.Series], kr: RangeKernels
    ) -> dict[str, pl.Series]:
        # a count per (entity, value) from prefix sums; finalize_expr orders and cuts it
        value = col("value")
        n = value.is_not_null().cast(I64).alias("n")
        sums = kr.bucket_sums(agg.span, value, {"n": n}, "n")
        if sums is None:  # many distinct values in short windows: the pairs are less work
            return self.by_pairs(agg, col, kr)
        return {"counts": kr.maps(sums, pl.col("n"))}

    def over_pairs(self, agg: Agg, col: Col, index: pl.Expr) -> dict[str, pl.Expr]:
        counts = col("value").drop_nulls().value_counts(name="value")
        return {"counts": counts.struct.rename_fields(["key", "value"])}

    def finalize_expr(self, agg: Agg, col: Col) -> pl.Expr:
        e = pl.element()
        key, count = e.struct.field("key"), e.struct.field("value")
        ordered = e.sort_by([count, key], descending=[True, False])
        top = self._top(agg)
        counts = col("counts").list.eval(ordered if top is None else ordered.head(top))
        return _null_if_empty(counts)


KINDS: dict[str, AggKind] = {
    kind.name: kind
    for kind in (
        Count(),
        Sum(),
        Mean(),
        Var(),
        Std(),
        Min(),
        Max(),
        First(),
        Last(),
        CountDistinct(),
        Mode(),
        ApproxPercentile(),
        DecayedSum(),
        LastK(),
        FirstK(),
        LastDistinctK(),
        CountBy(),
    )
}


# ---- by=: any additive kind per bucket value, as a map (Chronon's bucketed aggregations) -----


class Bucketed(AggKind):
    """``kind(x, by=b)``: the base kind's accumulator per value of ``b`` (int, str or bool), a
    map {bucket: value} ordered by bucket; events with a null bucket are skipped. Every method
    runs the base kind's code per bucket: the base's prepared value travels as (bucket, value),
    its fold and merge are applied to the bucket's accumulator, its finalizer to each. The batch
    plan groups (query, event) pairs by (query, bucket) and applies the base kind's pair
    aggregations and finalization (``RangeKernels.bucketed``)."""

    fields = ("",)

    def __init__(self, base: AggKind) -> None:
        self.base = base
        self.name = base.name  # type: ignore[misc]
        self.plan = (  # type: ignore[misc]
            "per (query, bucket) over (query, event) pairs, then the kind's finalization"
        )

    def inner(self, agg: Agg) -> Agg:
        """The base kind's aggregation: the map's value type, no bucket."""
        return dataclasses.replace(agg, dtype=agg.dtype.map_value, by=None)

    def result_type(self, arg: DType | None) -> DType:
        raise AssertionError("typed by dsl.definitions._bucketed")

    def prepare_code(self, agg: Agg, v: str) -> str:
        return self.base.prepare_code(self.inner(agg), v)  # compile.python_state adds the bucket

    def empty(self, agg: Agg) -> Any:
        return {}

    def namespace(self, agg: Agg) -> dict[str, Any]:
        return {**self.base.namespace(self.inner(agg)), f"_bucket_copy_{self.name}": self.base.copy}

    def fold_code(self, agg: Agg, acc: str, value: str, ts: str, seq: str) -> list[str]:
        inner = self.inner(agg)
        empty = repr(self.base.empty(inner))  # a literal: a fresh accumulator each time
        fold = self.base.fold_code(inner, "_ba", "_bp[1]", ts, seq)
        return [
            f"_bp = {value}",
            "if _bp is not None:",
            f"    _ba = {acc}.get(_bp[0])",
            f"    if _ba is None: _ba = {empty}",
            *(f"    {line}" for line in fold),
            f"    {acc}[_bp[0]] = _ba",
        ]

    def merge_code(self, agg: Agg, acc: str, other: str) -> list[str]:
        merge = self.base.merge_code(self.inner(agg), "_ba", "_bo")
        return [
            f"for _bk, _bo in {other}.items():",
            f"    _ba = {acc}.get(_bk)",
            f"    if _ba is None: {acc}[_bk] = _bucket_copy_{self.name}(_bo)",
            "    else:",
            *(f"        {line}" for line in merge),
            f"        {acc}[_bk] = _ba",
        ]

    @property
    def mergeable(self) -> bool:
        return self.base.mergeable

    def copy(self, acc: Any) -> Any:
        return {b: self.base.copy(a) for b, a in acc.items()}

    def finalizer(self, agg: Agg) -> Finalizer:
        finish = self.base.finalizer(self.inner(agg))
        return lambda acc: {b: finish(acc[b]) for b in sorted(acc)} if acc else None

    def to_wire(self, acc: Any) -> Any:
        return [[b, self.base.to_wire(acc[b])] for b in sorted(acc)]

    def from_wire(self, obj: Any) -> Any:
        return {b: self.base.from_wire(a) for b, a in obj}

    def columns(
        self, agg: Agg, v: pl.Expr, inc: pl.Expr, valid: pl.Expr, out: pl.DataType
    ) -> dict[str, pl.Expr]:
        value = out.inner.fields[1].dtype  # type: ignore[attr-defined]  # list of {key, value}
        return self.base.columns(self.inner(agg), v, inc, valid, value)

    def parts(self, agg: Agg, col: Col) -> tuple[dict[str, pl.Expr], pl.Expr]:
        """The base kind's pair aggregations, named by the columns its finalization reads,
        and that finalization."""
        inner = self.inner(agg)
        pairs = self.base.over_pairs(inner, col, pl.col("__i"))
        named = {col(name).meta.output_name(): e for name, e in pairs.items()}
        return named, self.base.finalize_expr(inner, col)

    def over_range(
        self, agg: Agg, col: Callable[[str], pl.Series], kr: RangeKernels
    ) -> dict[str, pl.Series]:
        inner = self.inner(agg)
        summed = self.base.summed(inner)
        if summed is not None:  # sums per (entity, bucket): prefix sums, no pairs
            fields = {col(f).name: col(f) for f in summed}
            sums = kr.bucket_sums(agg.span, col("bucket"), fields, col("n").name)
            if sums is not None:
                value = self.base.finalize_expr(inner, lambda n: pl.col(col(n).name))
                return {"map": kr.maps(sums, value)}
        aggregations, value = self.parts(agg, lambda n: pl.col(col(n).name))
        return {"map": kr.bucketed(agg.span, col("bucket").name, aggregations, value)}

    def over_pairs(self, agg: Agg, col: Col, index: pl.Expr) -> dict[str, pl.Expr]:
        raise AssertionError("bucketed: grouped by (query, bucket), see RangeKernels.bucketed")

    def empty_pairs(self, agg: Agg, col: Col) -> list[pl.Expr]:
        return []  # no event: a null map

    def finalize_expr(self, agg: Agg, col: Col) -> pl.Expr:
        entries = col("map")
        return _null_if_empty(entries)


_BUCKETED: dict[str, Bucketed] = {}


def kind_of(agg: Agg) -> AggKind:
    """The kind that computes ``agg``: its registered kind, per bucket when it has ``by``."""
    base = KINDS[agg.kind]
    if agg.by is None:
        return base
    if agg.kind not in _BUCKETED:
        _BUCKETED[agg.kind] = Bucketed(base)
    return _BUCKETED[agg.kind]
