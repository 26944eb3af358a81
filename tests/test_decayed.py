"""decayed_sum / decayed_count: values worked out by hand on both compilers, a plain float
reference on generated logs, batch-vs-per-event parity, and the definition checks."""

from __future__ import annotations

import math
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import featurepipe as fp
from featurepipe.compile.polars_aggs import TS, BatchProgram
from featurepipe.compile.python_state import ViewProgram
from featurepipe.errors import DefinitionError
from featurepipe.parity.harness import normalize_events
from featurepipe.testing import assert_parity
from tests.schema import at, frame, scaled, view
from tests.test_parity_properties import event_logs

US = 1_000_000


def _both(features: dict[str, Any], rows: list[dict[str, Any]], t_s: float) -> list[tuple[Any, ...]]:
    v = view(features)
    ev = normalize_events(v, frame(rows))
    prog = ViewProgram(v.ir)
    state = prog.new_state()
    for seq, e in enumerate(ev.iter_rows(named=True)):
        prog.ingest(state, e, seq)
    t = int(at(0).timestamp()) * US + int(t_s * US)
    q = pl.DataFrame({"k": ["a"], TS: [t]}, schema={"k": pl.String, TS: pl.Int64})
    return [prog.query(state, t), BatchProgram(v.ir).features(ev.lazy(), q).drop("k", TS).rows()[0]]


def _row(sec: float, **fields: Any) -> dict[str, Any]:
    return {"k": "a", "x": None, "n": None, "s": None, "b": None, "ts": at(sec)} | fields


def test_decayed_values_by_hand() -> None:
    rows = [_row(0, x=8.0, n=3), _row(10, x=4.0, n=1), _row(15, x=None, n=None)]
    got = _both(
        {
            "sum": lambda t: fp.decayed_sum(t.x, half_life="10s", window="60s"),
            "count": lambda t: fp.decayed_count(half_life="10s", window="60s"),
            "ints": lambda t: fp.decayed_sum(t.n, half_life="20s", window="60s"),
            "short": lambda t: fp.decayed_sum(t.x, half_life="10s", window="15s"),
            "empty": lambda t: fp.decayed_sum(t.x, half_life="10s", window="1s"),
        },
        rows,
        20.0,
    )
    # at T = 20 s: 8 * 2**-2 + 4 * 2**-1 = 4; events at 0, 10, 15 s: 0.25 + 0.5 + 2**-0.5;
    # ints 3 * 2**-1 + 1 * 2**-0.5; the 15 s window [5, 20) holds only x = 4 (and a null): 2.0
    assert got[0] == got[1]
    s, c, ints, short, empty = got[0]
    assert s == 4.0 and short == 2.0 and empty is None
    assert math.isclose(c, 0.75 + 2**-0.5, rel_tol=1e-12)
    assert math.isclose(ints, 1.5 + 2**-0.5, rel_tol=1e-12)


def test_decayed_kinds_need_a_window_and_no_hop() -> None:
    for bad in (
        lambda t: fp.decayed_sum(t.x, half_life="1h", window=None),
        lambda t: fp.decayed_count(half_life="1h", window="1d") + fp.decayed_sum(t.x, half_life="1h", window="1d", hop="1h"),
    ):
        with pytest.raises((DefinitionError, TypeError)):
            view({"f": bad})
    with pytest.raises(DefinitionError, match="half_life: bad duration"):
        view({"f": lambda t: fp.decayed_sum(t.x, half_life="soon", window="1d")})


HALF = st.sampled_from(["1s", "3s", "10s", "1h"])
WINDOW = st.sampled_from(["5s", "30s", "2m"])


@settings(max_examples=scaled(100))
@given(rows=event_logs(), half=HALF, window=WINDOW, lateness=st.sampled_from(["1s", "1h"]))
def test_decayed_kinds_are_bit_identical(rows: list[dict[str, Any]], half: str, window: str, lateness: str) -> None:
    v = view(
        {
            "dx": lambda t: fp.decayed_sum(t.x, half_life=half, window=window),
            "dn": lambda t: fp.decayed_sum(t.n, half_life=half, window=window, where=t.b),
            "dc": lambda t: fp.decayed_count(half_life=half, window=window),
        },
        lateness=lateness,
    )
    assert_parity(v, frame(rows))


@settings(max_examples=scaled(100))
@given(xs=st.lists(st.tuples(st.floats(-1e6, 1e6), st.integers(0, 60)), max_size=20), t=st.integers(0, 90))
def test_decayed_sum_is_close_to_a_plain_float_sum(xs: list[tuple[float, int]], t: int) -> None:
    """Reference: the plain float formula, summed naively (fixed point moves each term by at
    most 2**-41, so the two agree within n * 2**-40 plus float rounding)."""
    rows = [_row(sec, x=x) for x, sec in sorted(xs, key=lambda p: p[1])]
    want = [x * 2.0 ** (-(t - sec) / 7.0) for x, sec in xs if t - 30 <= sec < t]
    (got,), _ = [tuple(r) for r in _both({"d": lambda t_: fp.decayed_sum(t_.x, half_life="7s", window="30s")}, rows, t)]
    if not want:
        assert got is None
    else:
        assert math.isclose(got, math.fsum(want), rel_tol=1e-9, abs_tol=len(want) * 2.0**-39)
