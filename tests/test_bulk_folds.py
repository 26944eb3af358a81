"""The query's bulk folds (``AggKind.bulk_code``): a window's events folded with C-level
iterators instead of one by one, for count, sum, mean, var, std, min, max and count_distinct.

The default takes them from ``BULK_FROM`` events in a window on; here they are forced everywhere
(``bulk_from=0``, empty windows included) and held to values worked out by hand from
docs/semantics.md, to the batch plan (Polars, no shared code) on generated logs full of the
values that take the slow branches (nulls, NaN, infinities, floats too large for fixed point,
-0.0, int64 extremes), and to the one-by-one fold, bit for bit.
"""

from __future__ import annotations

import math
import struct
from typing import Any
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

import featurepipe as fp
from featurepipe.compile import python_state
from featurepipe.compile.python_state import ViewProgram
from featurepipe.parity.harness import normalize_events
from featurepipe.testing import assert_parity
from tests.schema import at, frame, row, scaled, view

BULK_KINDS: dict[str, Any] = {
    "n_x": lambda t: fp.count(t.x, window="10s"),
    "n_where": lambda t: fp.count(window="10s", where=t.b),
    "n_x_where": lambda t: fp.count(t.x, window="1m", where=t.b),
    "sum_x": lambda t: fp.sum(t.x, window="1m"),
    "sum_n": lambda t: fp.sum(t.n, window="10s"),
    "sum_x_where": lambda t: fp.sum(t.x, where=t.b),
    "mean_x": lambda t: fp.mean(t.x, window="1m"),
    "mean_n": lambda t: fp.mean(t.n),
    "var_x": lambda t: fp.var(t.x, window="1m"),
    "std_n": lambda t: fp.std(t.n, window="10s"),
    "min_x": lambda t: fp.min(t.x, window="10s"),
    "max_x": lambda t: fp.max(t.x),
    "min_n": lambda t: fp.min(t.n, window="1m", where=t.b),
    "max_ts": lambda t: fp.max(t.ts, window="10s"),
    "distinct_x": lambda t: fp.count_distinct(t.x, window="1m"),
    "distinct_s": lambda t: fp.count_distinct(t.s),
    "distinct_n_where": lambda t: fp.count_distinct(t.n, window="10s", where=t.b),
}
KINDS_VIEW = view(BULK_KINDS, lateness="1h", name="bulk_kinds")

FLOATS = st.one_of(
    st.none(),
    st.sampled_from(
        [0.0, -0.0, 1.5, -2.5, 0.1, 1e300, -1e300, 1e16, 5e-324, math.inf, -math.inf, math.nan]
    ),
    st.floats(allow_nan=True, allow_infinity=True),
)
INTS = st.one_of(
    st.none(),
    st.sampled_from([0, 1, -1, 7, 2**63 - 1, -(2**63), 2**62]),
    st.integers(-(2**63), 2**63 - 1),
)


@st.composite
def logs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One or two entities, up to 60 events, mostly in time order with some arriving late:
    within 90 s (windows of 10 s and 1 min hold many of them), or, for some logs, a first
    part hours before (evicted into the lifetime accumulators, which the folds start from)."""
    n = draw(st.integers(0, 60))
    early = draw(st.sampled_from([0, 0, 5, 20]))
    rows = [
        {
            "k": draw(st.sampled_from(["a", "ключ"])),
            "x": draw(FLOATS),
            "n": draw(INTS),
            "s": draw(
                st.one_of(st.none(), st.sampled_from(["", "a", "ß", "中"]), st.text(max_size=3))
            ),
            "b": draw(st.one_of(st.none(), st.booleans())),
            "ts": at(draw(st.integers(0, 90)) - (3 * 3600 if i < early else 0)),
        }
        for i in range(n)
    ]
    rows.sort(key=lambda r: r["ts"])
    for i, j in draw(st.lists(st.tuples(st.integers(0, 59), st.integers(0, 59)), max_size=5)):
        if i < n and j < n:
            rows[i], rows[j] = rows[j], rows[i]
    return rows


def _bits(v: Any) -> Any:
    if isinstance(v, float):
        return ("float", struct.pack("<d", v))
    return v


def _answers(prog: ViewProgram, rows: list[dict[str, Any]], times: list[int]) -> list[Any]:
    """Every entity's state after the log, queried at each of ``times``."""
    ev = normalize_events(KINDS_VIEW, frame(rows))
    states: dict[str, Any] = {}
    for seq, event in enumerate(ev.iter_rows(named=True)):
        st_ = states.setdefault(event["k"], prog.new_state())
        prog.ingest(st_, event, seq)
    return [
        [_bits(v) for v in prog.query(state, t)]
        for _, state in sorted(states.items())
        for t in times
        if prog.can_answer(state, t)
    ]


@settings(max_examples=scaled(150), deadline=None)
@given(rows=logs())
def test_bulk_folds_match_the_batch_plan(rows: list[dict[str, Any]]) -> None:
    with patch.object(python_state, "BULK_FROM", 0):
        assert_parity(KINDS_VIEW, frame(rows))


@settings(max_examples=scaled(150), deadline=None)
@given(rows=logs())
def test_bulk_folds_equal_the_one_by_one_fold(rows: list[dict[str, Any]]) -> None:
    times = [int(at(s).timestamp() * 1_000_000) for s in (0, 5, 30, 60, 89, 91, 100, 200)]
    bulk = _answers(ViewProgram(KINDS_VIEW.ir, bulk_from=0), rows, times)
    one_by_one = _answers(ViewProgram(KINDS_VIEW.ir, bulk_from=10**9), rows, times)
    assert bulk == one_by_one


def test_bulk_folds_by_hand() -> None:
    """Worked out from docs/semantics.md. Events of entity "a" at 0..5 s; query at 6 s, so
    every event lies in each window (10 s, 1 min, lifetime):

    x: 1.5, None, inf, 2.5, NaN, -0.0     n: 3, 4, None, -1, 2**63 - 1, 4
    b: True, True, False, None, True, True     s: "a", None, "ß", "a", "", "中"

    - count(x): 5 non-null x; count(where b): b is True at events 0, 1, 4, 5 -> 4;
      count(x, where b): x non-null where b -> events 0, 4, 5 -> 3.
    - sum(x): +inf among the terms (a saturated fixed-point term) and a NaN: NaN.
      sum(x, where b): 1.5 + NaN + -0.0 -> NaN.
    - sum(n) = 3 + 4 - 1 + (2**63 - 1) + 4 = 2**63 + 9: exact, out of int64 range -> null
      (docs/semantics.md: an int sum that overflows int64 is null).
    - mean(n) over the lifetime: the same 5 values, float(S) / n = float(2**63 + 9) / 5.
    - min(x) over the non-null x, NaN among them: NaN; max(x): NaN too.
    - min(n, where b): n of events 0, 1, 4, 5: 3, 4, 2**63 - 1, 4 -> 3.
    - max(ts): the event at 5 s.
    - count_distinct(x): 1.5, inf, 2.5, NaN, 0.0 -> 5 (nulls are not values);
      count_distinct(s): "a", "ß", "", "中" -> 4; count_distinct(n, where b): 3, 4, 2**63 - 1
      -> 3 (4 twice).
    """
    xs = [1.5, None, math.inf, 2.5, math.nan, -0.0]
    ns = [3, 4, None, -1, 2**63 - 1, 4]
    bs = [True, True, False, None, True, True]
    ss = ["a", None, "ß", "a", "", "中"]
    rows = [
        row(x=x, n=n, b=b, s=s, ts=at(i))
        for i, (x, n, b, s) in enumerate(zip(xs, ns, bs, ss, strict=True))
    ]
    t = int(at(6).timestamp() * 1_000_000)
    for bulk_from in (0, 10**9):
        prog = ViewProgram(KINDS_VIEW.ir, bulk_from=bulk_from)
        got = dict(zip(prog.feature_names, _answers(prog, rows, [t])[0], strict=True))
        nan = ("float", struct.pack("<d", math.nan))
        assert got["n_x"] == 5 and got["n_where"] == 4 and got["n_x_where"] == 3
        assert got["sum_x"] == nan and got["sum_x_where"] == nan
        assert got["sum_n"] is None
        assert got["mean_n"] == _bits(float(2**63 + 9) / 5)
        assert got["min_x"] == nan and got["max_x"] == nan
        assert got["min_n"] == 3
        assert got["max_ts"] == int(at(5).timestamp() * 1_000_000)
        assert (got["distinct_x"], got["distinct_s"], got["distinct_n_where"]) == (5, 4, 3)
    # and the batch plan agrees (its own code)
    with patch.object(python_state, "BULK_FROM", 0):
        assert_parity(KINDS_VIEW, frame(rows))


def test_bulk_folds_start_from_the_lifetime_accumulators() -> None:
    """Events older than the longest window plus the lateness (1 min + 1 h) are folded into
    the lifetime accumulators and dropped; a lifetime fold starts from them. By hand: x = 100.0
    and n = 50 at -3 h, s = "z"; then x = 1.0, 2.0, ..., n = 1, 2, ..., s = "a" at 0..19 s;
    queried at 20 s: max(x) = 100.0 (the evicted event), mean(n) = (50 + 210) / 21,
    count_distinct(s) = 2, sum(x, where b) over b = True everywhere = 100 + 210 = 310.0."""
    rows = [row(x=100.0, n=50, s="z", b=True, ts=at(-3 * 3600))]
    rows += [row(x=float(i + 1), n=i + 1, s="a", b=True, ts=at(i)) for i in range(20)]
    t = int(at(20).timestamp() * 1_000_000)
    for bulk_from in (0, 10**9):
        prog = ViewProgram(KINDS_VIEW.ir, bulk_from=bulk_from)
        got = dict(zip(prog.feature_names, _answers(prog, rows, [t])[0], strict=True))
        assert got["max_x"] == _bits(100.0)
        assert got["mean_n"] == _bits(float(260) / 21)
        assert got["distinct_s"] == 2
        assert got["sum_x_where"] == _bits(310.0)
    with patch.object(python_state, "BULK_FROM", 0):
        assert_parity(KINDS_VIEW, frame(rows))


def test_the_default_folds_big_windows_in_bulk() -> None:
    """The query code takes the bulk folds for a window from BULK_FROM events on: a planted
    error in the bulk sum shows in a window of that many events, not in a smaller one."""
    rows = [row(x=1.0, ts=at(i)) for i in range(python_state.BULK_FROM)]
    small = rows[1:]
    t = int(at(python_state.BULK_FROM).timestamp() * 1_000_000)
    prog = ViewProgram(KINDS_VIEW.ir)
    assert "if hi - lo" in prog.query_source and "sum(v_a" in prog.query_source
    sum_at = prog.feature_names.index("sum_x")
    planted = prog.query_source.replace("sum(v_a", "1 + sum(v_a")
    namespace = dict(prog._answer.__globals__)
    exec(compile(planted, "<planted>", "exec"), namespace)
    with patch.object(prog, "_answer", namespace["answer"]):
        assert _answers(prog, rows, [t])[0][sum_at] != _bits(float(python_state.BULK_FROM))
        assert _answers(prog, small, [t])[0][sum_at] == _bits(float(python_state.BULK_FROM - 1))


def test_bulk_kinds_are_the_listed_ones() -> None:
    """Which kinds have bulk code (the rest fold one by one): a new kind's bulk code must come
    with cases above."""
    from featurepipe.ir import aggs

    overriding = {
        cls.name
        for cls in vars(aggs).values()
        if isinstance(cls, type)
        and issubclass(cls, aggs.AggKind)
        and hasattr(cls, "name")
        and cls.bulk_code is not aggs.AggKind.bulk_code
    }
    covered = {kind_of_feature(f) for f in KINDS_VIEW.ir.features}
    assert covered == {"count", "sum", "mean", "var", "std", "min", "max", "count_distinct"}
    # decayed_sum (a Sum) says no: each term's weight reads its own ts
    assert overriding == covered | {"decayed_sum"}
    decayed = view({"d": lambda t: fp.decayed_sum(t.x, window="1m", half_life="10s")})
    assert "if hi - lo" not in ViewProgram(decayed.ir).query_source
    assert "if hi - lo" in ViewProgram(KINDS_VIEW.ir).query_source


def kind_of_feature(f: Any) -> str:
    from featurepipe.ir.aggs import kind_of
    from featurepipe.ir.nodes import Agg

    (agg,) = [n for n in f.expr.walk() if isinstance(n, Agg)]
    return kind_of(agg).name
