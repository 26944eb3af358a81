"""Typing rules of every row-level operation and aggregation: the IR's op registry.

Each compiler must implement every name in ``OPS`` (a completeness test checks it); the
aggregation kinds live in ``featurepipe.ir.aggs``, ``AGGS`` is their typing rules.
A rule returns the result dtype or raises ``TypeError`` with a message for the user.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from featurepipe.ir.aggs import KINDS
from featurepipe.ir.types import DType

Rule = Callable[[tuple[DType, ...], Mapping[str, Any]], DType]

I, F, B, S, D = DType.INT, DType.FLOAT, DType.BOOL, DType.STR, DType.DATETIME


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise TypeError(msg)


def _checked(ok: bool, msg: str, result: DType) -> DType:
    _need(ok, msg)
    return result


def _arith(ts: tuple[DType, ...], _: Mapping[str, Any]) -> DType:
    _need(all(t.is_numeric for t in ts), f"arithmetic needs numbers, got {_names(ts)}")
    return I if all(t is I for t in ts) else F


def _sub(ts: tuple[DType, ...], params: Mapping[str, Any]) -> DType:
    """Numbers as ``_arith``; a datetime minus a datetime is their distance in microseconds
    (an int: both are int64 epoch micros underneath, wrapping like every int64 operation)."""
    if ts == (DType.DATETIME, DType.DATETIME):
        return I
    return _arith(ts, params)


def _truediv(ts: tuple[DType, ...], _: Mapping[str, Any]) -> DType:
    _need(all(t.is_numeric for t in ts), f"division needs numbers, got {_names(ts)}")
    return F


def _compare(ts: tuple[DType, ...], _: Mapping[str, Any]) -> DType:
    a, b = ts
    _need(a == b or (a.is_numeric and b.is_numeric), f"cannot compare {a} with {b}")
    return B


def _logic(ts: tuple[DType, ...], _: Mapping[str, Any]) -> DType:
    _need(all(t is B for t in ts), f"logical operators need booleans, got {_names(ts)}")
    return B


def _common(ts: tuple[DType, ...], _: Mapping[str, Any] | None = None) -> DType:
    if all(t == ts[0] for t in ts):
        return ts[0]
    _need(all(t.is_numeric for t in ts), f"incompatible types {_names(ts)}")
    return F


def _case(ts: tuple[DType, ...], p: Mapping[str, Any]) -> DType:
    _need(ts[0] is B, f"when(...) needs a boolean condition, got {ts[0]}")
    return _common(ts[1:])


def _unary(accept: tuple[DType, ...], result: DType | None, what: str) -> Rule:
    def rule(ts: tuple[DType, ...], _: Mapping[str, Any]) -> DType:
        _need(ts[0] in accept, f"{what} needs {_names(accept)}, got {ts[0]}")
        return ts[0] if result is None else result

    return rule


CASTS: dict[tuple[DType, DType], str] = {
    # (from, to) -> how; pairs not listed are refused (they would format or parse differently).
    (I, F): "exact below 2**53, else round-to-nearest-even",
    (F, I): "truncate toward zero; NaN, inf and out-of-range give null",
    (B, I): "false=0, true=1",
    (B, F): "false=0.0, true=1.0",
    (I, S): "decimal digits, '-' for negatives",
    (I, B): "0 is false, anything else true",
    (S, S): "identity",
    (I, I): "identity",
    (F, F): "identity",
    (B, B): "identity",
    (D, D): "identity",
    (D, I): "epoch microseconds",
}


def _cast(ts: tuple[DType, ...], p: Mapping[str, Any]) -> DType:
    from featurepipe.errors import UnsupportedOperationError

    try:
        to = DType(p["to"])
    except ValueError:
        raise TypeError(
            f"unknown cast target {p['to']!r} (int, float, bool, str, datetime)"
        ) from None
    if (ts[0], to) not in CASTS:
        raise UnsupportedOperationError(
            f"cast from {ts[0]} to {to} is not offered: the two backends would format or parse "
            "it differently"
        )
    return to


def _names(ts: tuple[DType, ...]) -> str:
    return "/".join(str(t) for t in ts)


NUM = (I, F)

OPS: dict[str, Rule] = {
    # arithmetic
    "add": _arith,
    "sub": _sub,
    "mul": _arith,
    "truediv": _truediv,
    "floordiv": _arith,
    "mod": _arith,
    "neg": _unary(NUM, None, "negation"),
    # comparison and logic
    "eq": _compare,
    "ne": _compare,
    "lt": _compare,
    "le": _compare,
    "gt": _compare,
    "ge": _compare,
    "and": _logic,
    "or": _logic,
    "not": _unary((B,), B, "not"),
    # nulls and branching
    "is_null": lambda ts, p: B,
    "fill_null": _common,
    "coalesce": _common,
    "case": _case,
    "cast": _cast,
    # math
    "abs": _unary(NUM, None, "abs"),
    "round": _unary((F,), F, "round"),
    "floor": _unary((F,), F, "floor"),
    "ceil": _unary((F,), F, "ceil"),
    "sqrt": _unary(NUM, F, "sqrt"),
    "log": _unary(NUM, F, "log"),
    "log1p": _unary(NUM, F, "log1p"),
    "exp": _unary(NUM, F, "exp"),
    "clip": _unary(NUM, None, "clip"),
    # strings
    "lower": _unary((S,), S, "lower"),
    "upper": _unary((S,), S, "upper"),
    "strip": _unary((S,), S, "strip"),
    "str_len": _unary((S,), I, "len"),
    "contains": _unary((S,), B, "contains"),
    "startswith": _unary((S,), B, "startswith"),
    "endswith": _unary((S,), B, "endswith"),
    "slice": _unary((S,), S, "slice"),
    "concat": lambda ts, p: _checked(all(t is S for t in ts), "concat needs strings", S),
    # datetimes (UTC)
    "hour": _unary((D,), I, "hour"),
    "minute": _unary((D,), I, "minute"),
    "day_of_week": _unary((D,), I, "day_of_week"),
    "day": _unary((D,), I, "day"),
    "month": _unary((D,), I, "month"),
    "year": _unary((D,), I, "year"),
    "epoch_seconds": _unary((D,), I, "epoch_seconds"),
    "truncate": _unary((D,), D, "truncate"),
    # categoricals
    "encode": _unary((S, I), I, "encode"),
    "hash_bucket": _unary((S, I), I, "hash_bucket"),
    "bucketize": _unary(NUM, I, "bucketize"),
}


# Aggregations: each kind states its typing rule, with both backends' code, in ir/aggs.py.
AGGS: dict[str, Callable[[DType | None], DType]] = {
    name: kind.result_type for name, kind in KINDS.items()
}
