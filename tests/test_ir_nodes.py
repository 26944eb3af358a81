"""IR nodes compare bit-exactly: nodes that both compilers would evaluate differently are never
merged by common-subexpression sharing or aggregation de-duplication."""

from __future__ import annotations

import math
from typing import Any

import featurepipe as fp
from featurepipe.ir import nodes as ir
from featurepipe.ir.types import DType
from featurepipe.parity.harness import run_parity
from tests.schema import at, entity, frame, source

F = DType.FLOAT


def test_signed_zeros_and_nans_are_distinct_literals() -> None:
    assert ir.Literal(F, -0.0) != ir.Literal(F, 0.0)
    assert len({ir.Literal(F, -0.0), ir.Literal(F, 0.0)}) == 2
    assert ir.Literal(F, math.nan) == ir.Literal(F, math.nan)  # one node, not two
    assert ir.Literal(DType.BOOL, True) != ir.Literal(DType.INT, 1)
    x = ir.Field(F, name="x")
    assert ir.Agg(F, kind="sum", arg=x, default=-0.0) != ir.Agg(F, kind="sum", arg=x, default=0.0)


def _row(b: bool, minute: int) -> dict[str, Any]:
    return {"k": "a", "x": 1.0, "n": 1, "s": "q", "b": b, "ts": at(minute)}


def test_negative_zero_literal_keeps_its_sign_on_both_paths() -> None:
    @fp.feature_view(entity=entity, source=source)
    def v(t: Any) -> dict[str, Any]:
        return {
            "c": fp.last(fp.when(t.b).then(fp.lit(-0.0)).otherwise(fp.lit(0.0))),
            "lifetime_neg": fp.sum(t.x, where=t.n < 0, default=-0.0),
            "lifetime_pos": fp.sum(t.x, where=t.n < 0, default=0.0),
        }

    assert len(v.ir.aggs) == 3  # the two defaults are different aggregations
    report = run_parity(v, frame([_row(True, 1), _row(False, 2), _row(True, 3)]))
    assert report.ok, report
    # the per-event path, queried after the last event: the last event took the -0.0 branch
    from featurepipe.compile.python_state import ViewProgram

    prog = ViewProgram(v.ir)
    state = prog.new_state()
    for seq, b in enumerate([True, False, True]):
        prog.ingest(state, {"k": "a", "x": 1.0, "n": 1, "s": "q", "b": b, "ts": seq}, seq)
    c, neg, pos = prog.query(state, 10)
    assert (math.copysign(1.0, c), math.copysign(1.0, neg), math.copysign(1.0, pos)) == (
        -1.0,
        -1.0,
        1.0,
    )
