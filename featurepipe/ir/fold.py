"""Constant folding: an IR pass that turns a call on literals into one literal.

Both compilers then see one constant, so no engine-specific constant folding (Polars folds
``x + 0.0`` to ``x`` and divides by scalars via a reciprocal) can make them differ.

The value is computed by ``EVALUATORS``: one Python function per operation over plain scalars
(datetimes as int64 epoch microseconds), built on the same ``featurepipe.kernels`` the per-event
code generator emits calls to. ``tests/test_fold.py`` checks, op by op, that a folded value is
bit-identical to what the generated per-event code computes for the same literals.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import reduce
from typing import Any

from featurepipe import kernels as k
from featurepipe.ir import nodes as ir
from featurepipe.ir.types import DType

I, F, B, S, D = DType.INT, DType.FLOAT, DType.BOOL, DType.STR, DType.DATETIME

Evaluator = Callable[[ir.Call, list[Any]], Any]

# Ops that see nulls themselves; every other op returns null when an input is null.
NULL_AWARE = frozenset({"and", "or", "is_null", "fill_null", "coalesce", "case", "encode"})


def _by_type(on_int: Callable[..., Any], on_float: Callable[..., Any]) -> Evaluator:
    return lambda node, a: (on_float if node.dtype is F else on_int)(*a)


def _fn(f: Callable[..., Any]) -> Evaluator:
    return lambda node, a: f(*a)


def _wrapped(f: Callable[..., int]) -> Callable[..., int]:
    return lambda *a: k.wrap(f(*a))


_PY_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}


def _cmp(op: str) -> Evaluator:
    def ev(node: ir.Call, a: list[Any]) -> Any:
        if node.args[0].dtype is F:
            return k.cmp(op, a[0], a[1])
        return _PY_COMPARE[op](a[0], a[1])

    return ev


def _cast(node: ir.Call, a: list[Any]) -> Any:
    x = a[0]
    how: dict[tuple[DType, DType], Callable[[Any], Any]] = {
        (I, F): float,
        (F, I): k.float_to_int,
        (B, I): int,
        (B, F): float,
        (I, S): str,
        (I, B): lambda v: v != 0,
    }
    f = how.get((node.args[0].dtype, node.dtype))
    return x if f is None else f(x)


def _encode(node: ir.Call, a: list[Any]) -> int:
    if a[0] is None:
        return k.NULL_CODE
    codes = {v: i + k.FIRST_VOCAB_CODE for i, v in enumerate(node.param("vocabulary"))}
    return codes.get(a[0], k.OOV_CODE)


def _coalesce(node: ir.Call, a: list[Any]) -> Any:
    return next((x for x in a if x is not None), None)


def _dt(part: str) -> Evaluator:
    return lambda node, a: k.dt_part(part, a[0])


EVALUATORS: dict[str, Evaluator] = {
    "add": _by_type(_wrapped(operator.add), operator.add),
    "sub": _by_type(_wrapped(operator.sub), operator.sub),
    "mul": _by_type(_wrapped(operator.mul), operator.mul),
    "truediv": _fn(k.fdiv),
    "floordiv": _by_type(k.ifloordiv, k.ffloordiv),
    "mod": _by_type(k.imod, k.fmod),
    "neg": _by_type(_wrapped(operator.neg), operator.neg),
    "eq": _cmp("eq"),
    "ne": _cmp("ne"),
    "lt": _cmp("lt"),
    "le": _cmp("le"),
    "gt": _cmp("gt"),
    "ge": _cmp("ge"),
    "and": _fn(k.and3),
    "or": _fn(k.or3),
    "not": _fn(operator.not_),
    "is_null": lambda node, a: a[0] is None,
    "fill_null": lambda node, a: a[1] if a[0] is None else a[0],
    "coalesce": _coalesce,
    "case": lambda node, a: a[1] if a[0] is True else a[2],
    "cast": _cast,
    "abs": _by_type(_wrapped(abs), abs),
    "round": lambda node, a: k.fround(a[0], node.param("decimals")),
    "floor": _fn(k.ffloor),
    "ceil": _fn(k.fceil),
    "sqrt": _fn(k.fsqrt),
    "log": _fn(k.flog),
    "log1p": _fn(k.flog1p),
    "exp": _fn(k.fexp),
    "clip": lambda node, a: k.fclip(a[0], node.param("lower"), node.param("upper")),
    "lower": _fn(str.lower),
    "upper": _fn(str.upper),
    "strip": lambda node, a: a[0].strip(k.STRIP_CHARS),
    "str_len": _fn(len),
    "contains": lambda node, a: node.param("text") in a[0],
    "startswith": lambda node, a: a[0].startswith(node.param("text")),
    "endswith": lambda node, a: a[0].endswith(node.param("text")),
    "slice": lambda node, a: k.slice_str(a[0], node.param("offset"), node.param("length")),
    "concat": lambda node, a: reduce(operator.add, a),
    "hour": _dt("hour"),
    "minute": _dt("minute"),
    "day_of_week": _dt("day_of_week"),
    "day": _dt("day"),
    "month": _dt("month"),
    "year": _dt("year"),
    "epoch_seconds": lambda node, a: a[0] // k.US_PER_S,
    "truncate": lambda node, a: k.truncate_us(a[0], node.param("every")),
    "encode": _encode,
    "hash_bucket": lambda node, a: k.hash_bucket(a[0], node.param("buckets")),
    "bucketize": lambda node, a: k.bucketize(a[0], node.param("boundaries")),
}


def evaluate(node: ir.Call, args: list[Any]) -> Any:
    """The value of ``node`` applied to the scalar values ``args``, null rules included."""
    if node.op not in NULL_AWARE and any(a is None for a in args):
        return None
    return EVALUATORS[node.op](node, args)


def fold_constants(node: ir.Call) -> ir.Node:
    """``node`` as a ``Literal`` when every argument is a literal, else ``node`` unchanged."""
    if not all(isinstance(a, ir.Literal) for a in node.args):
        return node
    value = evaluate(node, [a.value for a in node.args if isinstance(a, ir.Literal)])
    if isinstance(value, float) and node.dtype is DType.INT:
        value = int(value)
    return ir.Literal(node.dtype, value)
