"""The batch fast path (prefix sums, sparse tables, binary searches) against the naive
exploded-pairs reference, on generated data."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import featurepipe as fp
from featurepipe.compile.polars_aggs import TS, BatchProgram
from featurepipe.dev.datagen import generate_transactions
from featurepipe.parity.harness import normalize_events
from tests.schema import scaled

ROOT = Path(__file__).resolve().parents[1]


def _assert_frames_identical(a: pl.DataFrame, b: pl.DataFrame) -> None:
    assert a.columns == b.columns
    for name in a.columns:
        x, y = a[name], b[name]
        if x.dtype == pl.Float64:
            x = x.to_frame().select(pl.col(name).cast(pl.String)).to_series()
            y = y.to_frame().select(pl.col(name).cast(pl.String)).to_series()
        elif x.dtype == pl.List(pl.Float64):  # -0.0 and 0.0 differ as text
            x = x.to_frame().select(pl.col(name).list.eval(pl.element().cast(pl.String))).to_series()
            y = y.to_frame().select(pl.col(name).list.eval(pl.element().cast(pl.String))).to_series()
        bad = (~x.eq_missing(y)).arg_true()
        assert bad.len() == 0, f"{name}: {bad.len()} differ, first at {bad[0]}: {x[bad[0]]} vs {y[bad[0]]}"


@pytest.mark.parametrize("seed", [1, 2])
def test_example_view_fast_path_equals_reference(seed: int) -> None:
    view = fp.load_definitions(ROOT / "feature_defs").view("user_spend")
    ev = normalize_events(view, generate_transactions(8_000, users=200, seed=seed))
    queries = ev.select("user_id", TS).with_columns(
        pl.col(TS) + pl.int_range(pl.len()) % 5 * 600_000_000 - 1_000_000
    )
    fast = BatchProgram(view.ir).features(ev.lazy(), queries)
    slow = BatchProgram(view.ir, reference=True).features(ev.lazy(), queries)
    _assert_frames_identical(fast, slow)


@settings(max_examples=scaled(40))
@given(seed=st.integers(0, 10_000), users=st.integers(1, 30), n=st.integers(1, 400))
def test_generated_logs_fast_path_equals_reference(seed: int, users: int, n: int) -> None:
    view = fp.load_definitions(ROOT / "feature_defs").view("user_spend")
    ev = normalize_events(view, generate_transactions(n, users=users, seed=seed, days=2))
    queries = ev.select("user_id", TS).sample(fraction=1.0, shuffle=True, seed=seed)
    fast = BatchProgram(view.ir).features(ev.lazy(), queries)
    slow = BatchProgram(view.ir, reference=True).features(ev.lazy(), queries)
    _assert_frames_identical(fast, slow)


@pytest.mark.parametrize("seed", [1, 2])
def test_definition_power_view_fast_path_equals_reference(seed: int) -> None:
    """The newer kinds, lists (last_k, first_k: rank kernels) and maps included."""
    view = fp.load_definitions(ROOT / "examples" / "definition_power" / "feature_defs").view(
        "user_patterns"
    )
    log = generate_transactions(3_000, users=30, merchants=6, days=40, seed=seed)
    ev = normalize_events(view, log)
    queries = ev.select("user_id", TS).with_columns(
        pl.col(TS) + pl.int_range(pl.len()) % 7 * 7_200_000_000 - 1_000_000,
        amount=pl.lit(50.0), country=pl.lit("US"),
    )
    fast = BatchProgram(view.ir).features(ev.lazy(), queries)
    slow = BatchProgram(view.ir, reference=True).features(ev.lazy(), queries)
    assert fast["last_amounts"].list.len().sum() > 0
    _assert_frames_identical(fast, slow)
