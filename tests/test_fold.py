"""Constant folding (``featurepipe.ir.fold``) computes what both compilers compute.

The fold pass runs at definition time without either compiler; this checks, op by op and on
edge values (nulls, NaN, -0.0, inf, int64 bounds, empty strings), that every folded value is
bit-identical to the generated per-event code's value and to the Polars plan's value for the
same inputs, and that a definition on literals only is folded to one literal.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable
from typing import Any

import polars as pl
import pytest

import featurepipe as fp
from featurepipe.compile import python_rows
from featurepipe.compile.polars_rows import PL_TYPES, translate
from featurepipe.compile.python_rows import CodeGen
from featurepipe.ir import nodes as ir
from featurepipe.ir.fold import EVALUATORS, NULL_AWARE, evaluate, fold_constants
from featurepipe.ir.ops import CASTS, OPS
from featurepipe.ir.types import DType
from tests.schema import entity, source

I, F, B, S, D = DType.INT, DType.FLOAT, DType.BOOL, DType.STR, DType.DATETIME

POOL: dict[DType, list[Any]] = {
    I: [None, 0, 1, -1, 3, -7, 2**63 - 1, -(2**63)],
    F: [None, 0.0, -0.0, 1.5, -2.5, 7.0, -3.0, 0.1, 1e300, 5e-324, math.nan, math.inf, -math.inf],
    B: [None, True, False],
    S: [None, "", "a", " Ab c\t", "ünï", "xyz"],
    D: [None, 0, -1, 1_700_000_000_123_456, 31_536_000_000_000, -86_400_000_001],
}

# op -> [(argument dtypes, params), ...]
SIGNATURES: dict[str, list[tuple[tuple[DType, ...], dict[str, Any]]]] = {
    **{op: [((I, I), {}), ((F, F), {})] for op in ("add", "sub", "mul", "floordiv", "mod")},
    "truediv": [((F, F), {})],
    "neg": [((I,), {}), ((F,), {})],
    "abs": [((I,), {}), ((F,), {})],
    **{
        op: [((t, t), {}) for t in (I, F, B, S, D)]
        for op in ("eq", "ne", "lt", "le", "gt", "ge")
    },
    "and": [((B, B), {})],
    "or": [((B, B), {})],
    "not": [((B,), {})],
    "is_null": [((I,), {}), ((S,), {}), ((F,), {})],
    "fill_null": [((I, I), {}), ((F, F), {}), ((S, S), {})],
    "coalesce": [((I, I), {}), ((S, S, S), {}), ((F, F), {})],
    "case": [((B, I, I), {}), ((B, F, F), {}), ((B, S, S), {})],
    "cast": [((a,), {"to": str(b)}) for a, b in CASTS],
    "round": [((F,), {"decimals": d}) for d in (0, 2, 15)],
    **{op: [((F,), {})] for op in ("floor", "ceil", "sqrt", "log", "log1p", "exp")},
    "clip": [((I,), {"lower": -1, "upper": 3}), ((F,), {"lower": -2.0, "upper": 1.5})],
    **{op: [((S,), {})] for op in ("lower", "upper", "strip", "str_len")},
    **{op: [((S,), {"text": "a"})] for op in ("contains", "startswith", "endswith")},
    "slice": [((S,), {"offset": 1, "length": None}), ((S,), {"offset": 0, "length": 2})],
    "concat": [((S, S), {}), ((S, S, S), {})],
    **{
        op: [((D,), {})]
        for op in ("hour", "minute", "day_of_week", "day", "month", "year", "epoch_seconds")
    },
    "truncate": [((D,), {"every": 3_600_000_000})],
    "encode": [((S,), {"vocabulary": ("a", "xyz")}), ((I,), {"vocabulary": (1, 3)})],
    "hash_bucket": [((S,), {"buckets": 10}), ((I,), {"buckets": 7})],
    "bucketize": [((F,), {"boundaries": (-1.0, 0.0, 1.5)}), ((I,), {"boundaries": (0.0, 2.5)})],
}


def _same(a: Any, b: Any) -> bool:
    """Bit-identical: same type, same value; floats compared by their binary64 bits.

    NaNs are one value here: row-level NaN payloads may differ between engines (x86 gives
    0xfff8... for 0/0), and every feature output carries one NaN (see polars_aggs finalize).
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if a != a and b != b:
            return True
        return struct.pack("<d", a) == struct.pack("<d", b)
    return bool(a == b)


def _fields(dtypes: tuple[DType, ...]) -> tuple[ir.Field, ...]:
    return tuple(ir.Field(t, f"a{i}") for i, t in enumerate(dtypes))


def _per_event(node: ir.Call) -> Callable[..., Any]:
    """The generated per-event code of ``node``, its arguments read from fields a0, a1, ..."""
    gen = CodeGen(lambda n: n.name if isinstance(n, ir.Field) else None)
    out = gen.emit(node)
    params = ", ".join(a.name for a in node.args if isinstance(a, ir.Field))
    _, fn = gen.function("f", params, [out])
    return lambda *values: fn(*values)[0]


def _batch(node: ir.Call, rows: list[tuple[Any, ...]]) -> list[Any]:
    """The Polars plan of ``node`` over one row per argument tuple."""
    cols = {
        f"a{i}": pl.Series([r[i] for r in rows], dtype=PL_TYPES[a.dtype])
        for i, a in enumerate(node.args)
    }
    expr = translate(node, lambda n: pl.col(n.name) if isinstance(n, ir.Field) else None)
    return pl.DataFrame(cols).select(expr.alias("out"))["out"].to_list()


def test_every_op_has_an_evaluator_and_a_signature_here() -> None:
    assert set(EVALUATORS) == set(OPS), set(EVALUATORS) ^ set(OPS)
    assert set(SIGNATURES) == set(OPS), set(SIGNATURES) ^ set(OPS)
    assert set(python_rows.NULL_AWARE) == NULL_AWARE


@pytest.mark.parametrize("op", sorted(OPS))
def test_folded_value_is_what_both_compilers_compute(op: str) -> None:
    checked = 0
    for dtypes, params in SIGNATURES[op]:
        result = OPS[op](dtypes, params)
        rows = list(itertools.product(*(POOL[t] for t in dtypes)))
        on_fields = ir.Call(result, op, _fields(dtypes), tuple(sorted(params.items())))
        per_event = _per_event(on_fields)
        batch = _batch(on_fields, rows)
        for values, in_batch in zip(rows, batch, strict=True):
            args = tuple(ir.Literal(t, v) for t, v in zip(dtypes, values, strict=True))
            folded = fold_constants(ir.Call(result, op, args, on_fields.params))
            assert isinstance(folded, ir.Literal) and folded.dtype is result
            assert _same(folded.value, evaluate(on_fields, list(values)))
            expected = per_event(*values)
            assert _same(folded.value, expected), (op, values, params, folded.value, expected)
            assert _same(folded.value, in_batch), (op, values, params, folded.value, in_batch)
            checked += 1
    assert checked > 0


def test_fold_leaves_calls_on_fields_alone() -> None:
    x = ir.Field(F, "x")
    node = ir.Call(F, "add", (x, ir.Literal(F, 1.0)))
    assert fold_constants(node) is node


def test_a_definition_on_literals_is_folded_to_one_literal() -> None:
    @fp.feature_view(entity=entity, source=source)
    def v(t: Any) -> dict[str, Any]:
        return {"c": fp.sum(t.x * (fp.lit(1.0) / fp.lit(3.0) + fp.lit(-0.0)))}

    agg = v.ir.feature("c").expr
    assert isinstance(agg, ir.Agg) and isinstance(agg.arg, ir.Call)
    lit = agg.arg.args[1]
    assert isinstance(lit, ir.Literal) and _same(lit.value, 1.0 / 3.0 + -0.0)
