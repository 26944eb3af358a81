"""Every IR op and aggregation kind is implemented by both compilers (or refused at definition
time) — checked structurally, not by grepping for names."""

from __future__ import annotations

import inspect

import pytest

from featurepipe.compile import python_rows
from featurepipe.compile.polars_rows import TRANSLATIONS
from featurepipe.ir.aggs import KINDS, AggKind
from featurepipe.ir.ops import AGGS, CASTS, OPS


def test_every_row_op_in_both_compilers() -> None:
    assert set(OPS) == set(TRANSLATIONS), set(OPS) ^ set(TRANSLATIONS)
    assert set(OPS) == set(python_rows.TEMPLATES), set(OPS) ^ set(python_rows.TEMPLATES)


def test_every_aggregation_kind_is_registered_once_with_its_typing() -> None:
    assert set(AGGS) == set(KINDS)
    for name, kind in KINDS.items():
        assert kind.name == name
        assert AGGS[name] == kind.result_type


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_aggregation_kind_implements_both_backends(name: str) -> None:
    kind = KINDS[name]
    # an abstract method left unimplemented would make the class uninstantiable
    assert not inspect.isabstract(type(kind))
    required = {m for m in dir(AggKind) if getattr(getattr(AggKind, m), "__isabstractmethod__", 0)}
    assert {"fold_code", "finalizer", "columns", "over_range", "over_pairs", "finalize_expr"} <= (
        required
    )
    for method in required:
        assert getattr(type(kind), method) is not getattr(AggKind, method), (name, method)
    assert kind.fields and kind.plan


def test_a_kind_missing_a_method_cannot_be_built() -> None:
    class Incomplete(AggKind):  # no batch half
        name = "incomplete"
        fields = ("n",)
        plan = "none"

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


def test_every_offered_cast_is_compiled() -> None:
    src = inspect.getsource(python_rows._cast)
    for (a, b) in CASTS:
        if a is not b and (a.value, b.value) != ("datetime", "int"):
            assert f"({a.name[0]}, {b.name[0]})" in src or a is b, (a, b)
