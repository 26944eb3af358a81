"""Batch compiler, row level: IR expressions -> Polars expressions.

One entry per operation in ``TRANSLATIONS``; compare with ``python_rows.TEMPLATES``. Datetimes are
int64 epoch microseconds here too. Polars propagates nulls through every op below except the
null-aware ones (fill_null, coalesce, when, is_null, Kleene and/or, encode).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl
import xxhash

from featurepipe import kernels as k
from featurepipe.ir import nodes as ir
from featurepipe.ir.types import DType, list_of, map_of

I, F, B, S, D = DType.INT, DType.FLOAT, DType.BOOL, DType.STR, DType.DATETIME

_SCALARS: dict[DType, pl.DataType] = {
    I: pl.Int64(),
    F: pl.Float64(),
    B: pl.Boolean(),
    S: pl.String(),
    D: pl.Int64(),  # epoch microseconds; converted to Datetime only at the output edge
}
# A map is Arrow's layout of one: a list of {key, value} entries, in the map's order (the
# Python side's dict order: docs/semantics.md states it per kind).
PL_TYPES: dict[DType, pl.DataType] = {
    **_SCALARS,
    **{list_of(t): pl.List(_SCALARS[t]) for t in (I, F, B, S, D)},
    **{
        map_of(t, v): pl.List(pl.Struct({"key": _SCALARS[t], "value": _SCALARS[v]}))
        for t in (I, S, B)
        for v in (I, F)
    },
}
UTC_US = pl.Datetime("us", "UTC")


def edge_type(dtype: DType) -> pl.DataType:
    """The Polars type a user sees for ``dtype`` (datetimes as UTC Datetimes, not micros)."""
    if dtype is D:
        return UTC_US
    if dtype is DType.LIST_DATETIME:
        return pl.List(UTC_US)
    return PL_TYPES[dtype]


def to_series(name: str, values: Sequence[Any], dtype: DType) -> pl.Series:
    """Per-event values (dicts for maps) as a column of ``PL_TYPES[dtype]``."""
    if dtype.is_map:
        values = [map_entries(v) for v in values]
    return pl.Series(name, values, dtype=PL_TYPES[dtype], strict=True)


def map_entries(value: dict[Any, Any] | None) -> list[dict[str, Any]] | None:
    """A map value in its column form: a list of {key, value} entries, in order."""
    return None if value is None else [{"key": a, "value": b} for a, b in value.items()]


def map_value(entries: list[dict[str, Any]] | None) -> dict[Any, Any] | None:
    """A map column's value (list of {key, value} entries) as the dict it stands for."""
    return None if entries is None else {e["key"]: e["value"] for e in entries}


def is_map_column(t: pl.DataType) -> bool:
    """Whether a Polars column type is the layout of a map (a list of {key, value})."""
    inner = getattr(t, "inner", None)
    return isinstance(inner, pl.Struct) and [f.name for f in inner.fields] == ["key", "value"]


Translation = Callable[[ir.Call, list[pl.Expr]], pl.Expr]


def _by_type(int_f: Callable[..., pl.Expr], float_f: Callable[..., pl.Expr]) -> Translation:
    return lambda n, a: (float_f if n.dtype is F else int_f)(*a)


def _divisor(node: ir.Call, b: pl.Expr) -> pl.Expr:
    """Polars divides by a *scalar* by multiplying with its reciprocal, which is not correctly
    rounded (7.0 / 3.0 would differ from IEEE division in the last bit). A literal divisor is
    therefore rebuilt as a genuine column (``0.0 * row_index + c``; ``-0.0 * row_index`` for
    c = -0.0), which takes the exact element-wise path. A broadcast literal is not enough:
    Polars keeps it as a scalar column. Nor is any other divisor safe: one that evaluates to
    a single value on every row (``when(...).then(3.0)`` with every row on that branch,
    ``coalesce(null, 3.0)``, a clip at its bound) comes back as a scalar too, so it is made a
    column by adding ``-0.0 * row_index`` (x + -0.0 is x for every x, -0.0 and NaN included)."""
    lit = node.args[1]
    if isinstance(lit, ir.Literal):
        return _full_column(lit.value)
    return b + pl.int_range(pl.len()).cast(pl.Float64) * -0.0


def _full_column(c: float | None) -> pl.Expr:
    index = pl.int_range(pl.len()).cast(pl.Float64)
    if c is None:
        return pl.lit(None, pl.Float64)
    if c == 0.0 and str(c).startswith("-"):
        return index * -0.0
    return index * 0.0 + pl.lit(c, pl.Float64)


def _fdiv(node: ir.Call, a: list[pl.Expr]) -> pl.Expr:
    return a[0] / _divisor(node, a[1])


def _float_operands(node: ir.Call, a: list[pl.Expr]) -> list[pl.Expr]:
    """Float literals as genuine columns: Polars simplifies ``x + 0.0`` and ``x - (-0.0)`` to
    ``x``, which is not IEEE for x = -0.0 (the sum is +0.0). Element-wise kernels are exact."""
    if node.dtype is not F:
        return a
    return [
        _full_column(arg.value) if isinstance(arg, ir.Literal) and arg.value is not None else e
        for arg, e in zip(node.args, a, strict=True)
    ]


def _fmod(node: ir.Call, a: list[pl.Expr]) -> pl.Expr:
    """a - b * floor(a / b) (kernels.fmod), a literal ``a`` as a column: Polars would turn
    ``0.0 - y`` into ``-y``, which is -0.0 where IEEE subtraction gives +0.0."""
    x, y = _float_operands(node, a)
    return x - y * _fdiv(node, [x, y]).floor()


def _arith(op: Callable[[pl.Expr, pl.Expr], pl.Expr]) -> Translation:
    def t(node: ir.Call, a: list[pl.Expr]) -> pl.Expr:
        x, y = _float_operands(node, a)
        return op(x, y)

    return t


def _cast(node: ir.Call, a: list[pl.Expr]) -> pl.Expr:
    src, to = node.args[0].dtype, node.dtype
    if src is to or (src, to) == (D, I):
        return a[0]
    if (src, to) == (F, I):
        return a[0].cast(pl.Int64, strict=False)
    return a[0].cast(PL_TYPES[to])


def _clip(node: ir.Call, a: list[pl.Expr]) -> pl.Expr:
    x = a[0]
    lo = pl.lit(node.param("lower"), PL_TYPES[node.dtype])
    hi = pl.lit(node.param("upper"), PL_TYPES[node.dtype])
    out = pl.when(x < lo).then(lo).when(x > hi).then(hi).otherwise(x)
    if node.dtype is F:
        out = pl.when(x.is_nan()).then(x).otherwise(out)
    return out


def _round(node: ir.Call, a: list[pl.Expr]) -> pl.Expr:
    s = 10.0 ** int(node.param("decimals"))
    # divide by a full column, not a scalar: see _divisor
    return (a[0] * s).round(0, mode="half_to_even") / _full_column(s)


def _dt(part: str) -> Translation:
    def t(node: ir.Call, a: list[pl.Expr]) -> pl.Expr:
        d = a[0].cast(UTC_US).dt
        expr = {
            "hour": d.hour,
            "minute": d.minute,
            "day_of_week": d.weekday,
            "day": d.day,
            "month": d.month,
            "year": d.year,
        }[part]()
        return expr.cast(pl.Int64)

    return t


def _encode(node: ir.Call, a: list[pl.Expr]) -> pl.Expr:
    vocab = list(node.param("vocabulary"))
    codes = list(range(k.FIRST_VOCAB_CODE, k.FIRST_VOCAB_CODE + len(vocab)))
    mapped = a[0].replace_strict(vocab, codes, default=k.OOV_CODE, return_dtype=pl.Int64)
    return pl.when(a[0].is_null()).then(pl.lit(k.NULL_CODE, pl.Int64)).otherwise(mapped)


def _hash_bucket(node: ir.Call, a: list[pl.Expr]) -> pl.Expr:
    buckets = int(node.param("buckets"))

    # One call per batch, hashing each *distinct* value once; never per row.
    def hash_batch(s: pl.Series) -> pl.Series:
        uniq = s.drop_nulls().unique()
        texts = uniq.cast(pl.String).to_list()
        codes = [xxhash.xxh64_intdigest(t.encode("utf-8")) % buckets for t in texts]
        return s.replace_strict(
            uniq, pl.Series(codes, dtype=pl.Int64), default=None, return_dtype=pl.Int64
        )

    return a[0].map_batches(hash_batch, return_dtype=pl.Int64)


# every character with a case mapping lies below U+20000 (Basic Multilingual and
# Supplementary Multilingual Planes), in every Unicode version to date; above it: ideographs,
# tags, variation selectors, private use (tests/test_case_mapping.py checks both libraries)
CASED_BELOW = 0x20000


@functools.cache
def _case_differences(kind: str, below: int = CASED_BELOW) -> str:
    """Characters whose case mapping differs between Polars (Rust's Unicode tables) and this
    Python's (``unicodedata.unidata_version``): characters assigned in newer Unicode versions.
    Computed once per process over every code point below ``below``."""
    chars = [chr(c) for c in range(below) if not 0xD800 <= c <= 0xDFFF]
    s = pl.Series(chars, dtype=pl.String)
    mapped = (s.str.to_lowercase() if kind == "lower" else s.str.to_uppercase()).to_list()
    py = str.lower if kind == "lower" else str.upper
    return "".join(ch for ch, m in zip(chars, mapped, strict=True) if py(ch) != m)


def _case(kind: str) -> Translation:
    """Unicode case mapping with the per-event path's semantics (Python's ``str.lower`` /
    ``str.upper``): Polars maps every value, except values holding one of the few characters
    the two Unicode versions disagree on, which Python maps (one call per batch, over those
    distinct values only)."""

    def t(node: ir.Call, a: list[pl.Expr]) -> pl.Expr:
        py = str.lower if kind == "lower" else str.upper

        def apply(s: pl.Series) -> pl.Series:
            fast = s.str.to_lowercase() if kind == "lower" else s.str.to_uppercase()
            diff = _case_differences(kind)
            if not diff:
                return fast
            pattern = "[" + "".join(re.escape(ch) for ch in diff) + "]"
            odd = s.str.contains(pattern).fill_null(False)
            if not odd.any():
                return fast
            values = s.filter(odd).unique()
            mapped = pl.Series([py(v) for v in values.to_list()], dtype=pl.String)
            slow = s.replace_strict(values, mapped, default=None, return_dtype=pl.String)
            return pl.select(pl.when(odd).then(slow).otherwise(fast)).to_series()

        return a[0].map_batches(apply, return_dtype=pl.String)

    return t


def _bucketize(node: ir.Call, a: list[pl.Expr]) -> pl.Expr:
    x = a[0].cast(pl.Float64) if node.args[0].dtype is I else a[0]
    terms = [(x >= pl.lit(b, pl.Float64)).cast(pl.Int64) for b in node.param("boundaries")]
    return pl.when(x.is_null()).then(None).otherwise(pl.sum_horizontal(terms)).cast(pl.Int64)


TRANSLATIONS: dict[str, Translation] = {
    "add": _arith(lambda x, y: x + y),
    "sub": _arith(lambda x, y: x - y),
    "mul": _arith(lambda x, y: x * y),
    "truediv": _fdiv,
    "floordiv": lambda n, a: a[0] // a[1] if n.dtype is I else _fdiv(n, a).floor(),
    "mod": lambda n, a: a[0] % a[1] if n.dtype is I else _fmod(n, a),
    "neg": lambda n, a: -a[0],
    "eq": lambda n, a: a[0] == a[1],
    "ne": lambda n, a: a[0] != a[1],
    "lt": lambda n, a: a[0] < a[1],
    "le": lambda n, a: a[0] <= a[1],
    "gt": lambda n, a: a[0] > a[1],
    "ge": lambda n, a: a[0] >= a[1],
    "and": lambda n, a: a[0] & a[1],
    "or": lambda n, a: a[0] | a[1],
    "not": lambda n, a: ~a[0],
    "is_null": lambda n, a: a[0].is_null(),
    "fill_null": lambda n, a: a[0].fill_null(a[1]),
    "coalesce": lambda n, a: pl.coalesce(a),
    "case": lambda n, a: pl.when(a[0]).then(a[1]).otherwise(a[2]),
    "cast": _cast,
    "abs": lambda n, a: a[0].abs(),
    "round": _round,
    "floor": lambda n, a: a[0].floor(),
    "ceil": lambda n, a: a[0].ceil(),
    "sqrt": lambda n, a: a[0].sqrt(),
    "log": lambda n, a: a[0].log(),
    "log1p": lambda n, a: a[0].log1p(),
    "exp": lambda n, a: a[0].exp(),
    "clip": _clip,
    "lower": _case("lower"),
    "upper": _case("upper"),
    "strip": lambda n, a: a[0].str.strip_chars(k.STRIP_CHARS),
    "str_len": lambda n, a: a[0].str.len_chars().cast(pl.Int64),
    "contains": lambda n, a: a[0].str.contains(n.param("text"), literal=True),
    "startswith": lambda n, a: a[0].str.starts_with(n.param("text")),
    "endswith": lambda n, a: a[0].str.ends_with(n.param("text")),
    "slice": lambda n, a: a[0].str.slice(n.param("offset"), n.param("length")),
    "concat": lambda n, a: pl.concat_str(a, ignore_nulls=False),
    "hour": _dt("hour"),
    "minute": _dt("minute"),
    "day_of_week": _dt("day_of_week"),
    "day": _dt("day"),
    "month": _dt("month"),
    "year": _dt("year"),
    "epoch_seconds": lambda n, a: a[0] // k.US_PER_S,
    "truncate": lambda n, a: a[0] - a[0] % int(n.param("every")),
    "encode": _encode,
    "hash_bucket": _hash_bucket,
    "bucketize": _bucketize,
}


def translate(node: ir.Node, leaf: Callable[[ir.Node], pl.Expr | None]) -> pl.Expr:
    """Polars expression of an IR tree; ``leaf`` resolves fields, aggregates and references."""
    resolved = leaf(node)
    if resolved is not None:
        return resolved
    if isinstance(node, ir.Literal):
        return pl.lit(node.value, PL_TYPES[node.dtype])
    if isinstance(node, ir.Call):
        return TRANSLATIONS[node.op](node, [translate(a, leaf) for a in node.args])
    raise TypeError(f"cannot translate {type(node).__name__} at row level")
