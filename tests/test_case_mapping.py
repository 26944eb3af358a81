"""lower/upper in the batch plan map like Python's str.lower/str.upper; the characters the two
Unicode tables disagree on are looked for below U+20000 only: no character above it has a case
mapping in either library (checked here over every code point)."""

from __future__ import annotations

import polars as pl
import pytest

from featurepipe.compile import polars_rows
from featurepipe.ir import nodes as ir
from featurepipe.ir.types import DType

ALL = 0x110000


@pytest.mark.parametrize("kind", ["lower", "upper"])
def test_no_character_above_the_cased_planes_maps_in_either_library(kind: str) -> None:
    chars = [chr(c) for c in range(polars_rows.CASED_BELOW, ALL)]
    py = str.lower if kind == "lower" else str.upper
    assert [c for c in chars if py(c) != c] == []
    s = pl.Series(chars, dtype=pl.String)
    mapped = s.str.to_lowercase() if kind == "lower" else s.str.to_uppercase()
    assert s.filter(mapped != s).to_list() == []
    # so the search below U+20000 finds what a search of every code point finds
    assert polars_rows._case_differences(kind) == polars_rows._case_differences(kind, ALL)


@pytest.mark.parametrize("kind", ["lower", "upper"])
def test_case_mapping_equals_python_on_cased_text(kind: str) -> None:
    words = ["Straße", "İstanbul", "ΣΊΣΥΦΟΣ", "ǅemal", "ﬁle", "Ⓐb", "𐐀𐐨", "ꭰ", "", "MiXeD 123"]
    node = ir.Call(DType.STR, kind, (ir.Field(DType.STR, "w"),))
    leaf = lambda n: pl.col(n.name) if isinstance(n, ir.Field) else None  # noqa: E731
    got = pl.DataFrame({"w": words}).select(polars_rows.translate(node, leaf)).to_series().to_list()
    py = str.lower if kind == "lower" else str.upper
    assert got == [py(w) for w in words]
