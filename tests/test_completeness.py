"""Every IR op is implemented by both compilers (or refused at definition time)."""

from __future__ import annotations

import inspect

from featurepipe.compile import polars_aggs, python_rows, python_state
from featurepipe.compile.polars_rows import TRANSLATIONS
from featurepipe.ir.ops import AGGS, CASTS, OPS


def test_every_row_op_in_both_compilers() -> None:
    assert set(OPS) == set(TRANSLATIONS), set(OPS) ^ set(TRANSLATIONS)
    assert set(OPS) == set(python_rows.TEMPLATES), set(OPS) ^ set(python_rows.TEMPLATES)


def test_every_aggregation_in_both_compilers() -> None:
    batch_src = inspect.getsource(polars_aggs)
    stream_src = inspect.getsource(python_state)
    for kind in AGGS:
        assert f'"{kind}"' in batch_src, f"batch compiler does not handle {kind}"
        assert f'"{kind}"' in stream_src, f"per-event compiler does not handle {kind}"


def test_every_offered_cast_is_compiled() -> None:
    src = inspect.getsource(python_rows._cast)
    for (a, b) in CASTS:
        if a is not b and (a.value, b.value) != ("datetime", "int"):
            assert f"({a.name[0]}, {b.name[0]})" in src or a is b, (a, b)
