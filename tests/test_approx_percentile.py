"""approx_percentile: the sketch mapping against a reference written here with NumPy, values
worked out by hand from docs/semantics.md on both compilers, and a naive sorted-list reference
plus batch-vs-per-event parity on generated logs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import featurepipe as fp
from featurepipe import kernels as k
from featurepipe.compile.polars_aggs import TS, BatchProgram
from featurepipe.compile.python_state import ViewProgram
from featurepipe.errors import DefinitionError
from featurepipe.ir import sketch
from featurepipe.parity.harness import normalize_events
from featurepipe.testing import assert_parity
from tests.schema import at, frame, scaled, view
from tests.test_parity_properties import event_logs

FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)


def _truncated(x: float) -> float:
    """The value with its binary64 mantissa cut to its top 7 bits (toward zero): the reference
    representative, from NumPy's view of the bits."""
    if x != x:
        return math.nan
    if x == 0.0:
        return 0.0  # -0.0 is 0.0
    bits = np.array([abs(x)], dtype=np.float64).view(np.uint64)[0]
    kept = np.uint64(int(bits) & ~((1 << 45) - 1))
    value = float(np.array([kept], dtype=np.uint64).view(np.float64)[0])
    return value if x > 0 else -value


@settings(max_examples=scaled(500))
@given(x=FLOATS, y=FLOATS)
def test_buckets_are_ordered_like_the_values_and_represent_them(x: float, y: float) -> None:
    kx, ky = k.sketch_bucket(x), k.sketch_bucket(y)
    # NaN above every number, then the values' own order
    order = (x != x, x if x == x else 0.0) <= (y != y, y if y == y else 0.0)
    if order:
        assert kx <= ky
    rep = k.sketch_representative(kx)
    want = _truncated(x)
    assert (rep != rep and want != want) or struct_bits(rep) == struct_bits(want)
    if x == x and not math.isinf(x) and abs(x) >= 2.0**-1022:
        assert abs(x) - abs(rep) < abs(x) * 2.0**-7  # the documented relative accuracy
    if rep != 0.0:  # (a negative subnormal below 2**-1029 truncates to -0.0)
        assert k.sketch_bucket(rep) == kx  # a representative is in its own bucket


@settings(max_examples=scaled(200))
@given(xs=st.lists(st.one_of(st.none(), FLOATS), max_size=40))
def test_the_batch_mapping_equals_the_scalar_one(xs: list[float | None]) -> None:
    df = pl.DataFrame({"x": xs}, schema={"x": pl.Float64})
    out = df.select(sketch.bucket_expr(pl.col("x")).alias("k")).with_columns(
        sketch.representative_expr(pl.col("k")).alias("r")
    )
    for x, (key, rep) in zip(xs, out.rows(), strict=True):
        if x is None:
            assert key is None and rep is None
            continue
        assert key == k.sketch_bucket(x)
        want = k.sketch_representative(key)
        assert (rep != rep and want != want) or struct_bits(rep) == struct_bits(want)


def struct_bits(v: float) -> int:
    return int(np.array([v], dtype=np.float64).view(np.int64)[0])


# ---- hand-worked values (docs/semantics.md), both compilers ---------------------------------------


def _both(features: dict[str, Any], xs: list[float | None], t_s: float) -> list[tuple[Any, ...]]:
    v = view(features)
    rows = [{"k": "a", "x": x, "n": 1, "s": "p", "b": True, "ts": at(i)} for i, x in enumerate(xs)]
    ev = normalize_events(v, frame(rows))
    prog = ViewProgram(v.ir)
    state = prog.new_state()
    for seq, e in enumerate(ev.iter_rows(named=True)):
        prog.ingest(state, e, seq)
    t = int(at(0).timestamp() * 1_000_000 + t_s * 1_000_000)
    q = pl.DataFrame({"k": ["a"], TS: [t]}, schema={"k": pl.String, TS: pl.Int64})
    batch = BatchProgram(v.ir).features(ev.lazy(), q).drop("k", TS).rows()
    return [prog.query(state, t), batch[0]]


def test_nearest_rank_on_exact_values() -> None:
    # 1..10 are exact with 8 significant bits: ranks ceil(q * 10)
    got = _both(
        {
            "p0": lambda t: fp.approx_percentile(t.x, 0.0),
            "p50": lambda t: fp.approx_percentile(t.x, 0.5),
            "p90": lambda t: fp.approx_percentile(t.x, 0.9),
            "p95": lambda t: fp.approx_percentile(t.x, 0.95),
            "p100": lambda t: fp.approx_percentile(t.x, 1.0),
            "w": lambda t: fp.approx_percentile(t.x, 0.5, window="3s"),  # 8, 9, 10 at T = 11 s
        },
        [7.0, 3.0, None, 10.0, 1.0, 5.0, 2.0, 9.0, 4.0, 6.0, 8.0],
        11.0,
    )
    # ranks: q=0 -> 1st (1.0); 0.5 -> 5th (5.0); 0.9 -> 9th (9.0); 0.95 -> ceil(9.5) = 10th;
    # the window [8 s, 11 s) holds the events at 8, 9, 10 s: 4.0, 6.0, 8.0 -> 2nd is 6.0
    assert got == [(1.0, 5.0, 9.0, 10.0, 10.0, 6.0)] * 2


def test_values_are_rounded_toward_zero_to_eight_significant_bits() -> None:
    got = _both(
        {
            "lo": lambda t: fp.approx_percentile(t.x, 0.0),
            "hi": lambda t: fp.approx_percentile(t.x, 1.0),
            "mid": lambda t: fp.approx_percentile(t.x, 0.5),
        },
        [0.1, -3.3, 1000.7],
        5.0,
    )
    # 0.1 = 1.6 * 2**-4: 0.6 * 128 = 76.8 -> 76: 1.59375 * 2**-4 = 0.099609375
    # -3.3 = -1.65 * 2: 0.65 * 128 = 83.2 -> 83: -1.6484375 * 2 = -3.296875
    # 1000.7 = 1.954... * 2**9: 0.9544 * 128 = 122.2 -> 122: 1.953125 * 512 = 1000.0
    assert got == [(-3.296875, 1000.0, 0.099609375)] * 2


def test_nan_sorts_above_every_number_and_empty_is_null() -> None:
    got = _both(
        {
            "top": lambda t: fp.approx_percentile(t.x, 1.0),
            "half": lambda t: fp.approx_percentile(t.x, 0.5),
            "low": lambda t: fp.approx_percentile(t.x, 0.0),
            "gone": lambda t: fp.approx_percentile(t.x, 0.5, window="1s", default=-1.0),
            "none": lambda t: fp.approx_percentile(t.x, 0.5, where=t.x < -1.0),
        },
        [math.nan, 2.0, -0.0],
        10.0,
    )
    for row in got:
        top, half, low, gone, none = row
        assert math.isnan(top) and struct_bits(top) == 0x7FF8000000000000  # 3rd of 0, 2, NaN
        assert half == 2.0  # ceil(0.5 * 3) = 2nd
        assert struct_bits(low) == 0  # the 1st: -0.0 is 0.0 (+0.0 bits)
        assert (gone, none) == (-1.0, None)


def test_q_is_checked_at_definition_time() -> None:
    for q in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(DefinitionError, match="must be a number in"):
            view({"p": lambda t, q=q: fp.approx_percentile(t.x, q)})
    with pytest.raises(DefinitionError, match="needs a numeric input"):
        view({"p": lambda t: fp.approx_percentile(t.s, 0.5)})


def test_q_is_part_of_the_version() -> None:
    a = view({"p": lambda t: fp.approx_percentile(t.x, 0.5)})
    b = view({"p": lambda t: fp.approx_percentile(t.x, 0.9)})
    assert a.fingerprint != b.fingerprint


# ---- generated logs ------------------------------------------------------------------------------

QS = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 0.99, 1.0])
WINDOWS = st.sampled_from([(None, None), ("5s", None), ("30s", None), ("6s", "2s"), ("30s", "10s")])


@settings(max_examples=scaled(150))
@given(
    rows=event_logs(),
    specs=st.lists(st.tuples(QS, WINDOWS, st.sampled_from(["x", "n"]), st.booleans()), min_size=1, max_size=3),
    lateness=st.sampled_from(["1s", "1h"]),
)
def test_approx_percentile_is_bit_identical(
    rows: list[dict[str, Any]], specs: list[tuple[float, tuple[str | None, str | None], str, bool]], lateness: str
) -> None:
    features = {}
    for i, (q, (window, hop), arg, filtered) in enumerate(specs):
        def f(t: Any, q: float = q, window: Any = window, hop: Any = hop, arg: str = arg, filtered: bool = filtered) -> Any:
            kw: dict[str, Any] = {"window": window, "hop": hop}
            if filtered:
                kw["where"] = t.b
            return fp.approx_percentile(getattr(t, arg), q, **kw)
        features[f"p{i}"] = f
    assert_parity(view(features, lateness=lateness), frame(rows))


@settings(max_examples=scaled(150))
@given(xs=st.lists(st.one_of(st.none(), FLOATS), max_size=30), q=QS)
def test_matches_a_sorted_list_reference(xs: list[float | None], q: float) -> None:
    """The naive reference: sort the values (NaN last), take the ceil(q * n)-th, truncate it."""
    values = sorted((x for x in xs if x is not None), key=lambda x: (x != x, x if x == x else 0.0))
    want = None if not values else _truncated(values[max(1, math.ceil(q * len(values))) - 1] + 0.0)
    got = _both({"p": lambda t: fp.approx_percentile(t.x, q)}, xs, len(xs) + 1.0)
    for (value,) in got:
        assert (value is None and want is None) or (value != value and want != want) or value == want
