"""The golden table: one pinned value per rule of docs/semantics.md (windows, nulls, ties, late
events, exact accumulation, saturation, -0.0, NaN, overflow, defaults), on both engines.

Each case quotes the rule it pins (the quote must appear in the document, see the last test) and
gives a tiny event log, one query and the expected value worked out by hand from the document.
Float results are compared by IEEE bits: -0.0 is not 0.0 and a NaN must be the canonical quiet
NaN 0x7ff8000000000000. Row-level operations are pinned the same way in tests/test_ops.py.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import featurepipe as fp
from featurepipe.compile.polars_aggs import ARRIVED, TS, BatchProgram
from featurepipe.compile.python_state import ViewProgram
from featurepipe.errors import StateError
from featurepipe.parity.harness import normalize_events
from tests.schema import BASE, at, frame, row, view

DOC = Path(__file__).resolve().parents[1] / "docs" / "semantics.md"
US = 1_000_000
NAN = float("nan")  # expected NaN: the output must be exactly 0x7ff8000000000000
QNAN = 0x7FF8000000000000
NEG_NAN = struct.unpack("<d", struct.pack("<Q", 0xFFF8000000000000))[0]


@dataclass(frozen=True)
class Case:
    rule: str  # quoted from docs/semantics.md
    feature: Callable[[Any], Any]
    events: list[tuple[float, dict[str, Any]]]  # (seconds after BASE, fields), arrival order
    t: float  # query time, seconds after BASE
    expected: Any
    arrived: int | None = None  # only the first `arrived` events are visible (None: all)
    lateness: str = "1h"
    note: str = field(default="", compare=False)


def ev(sec: float, **fields: Any) -> tuple[float, dict[str, Any]]:
    return sec, fields


def _bits(v: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", v))[0])


CASES: list[tuple[str, Case]] = [
    # ---- windows and time ------------------------------------------------------------------
    ("window start inclusive", Case(
        "A feature read at time **T** sees events with `T - w <= ts < T`",
        lambda t: fp.count(window="10s"), [ev(0), ev(10)], 10.0, 1,
        note="ts=0 is exactly T - w: in; ts=10 is T: out")),
    ("window end exclusive", Case(
        "(start-inclusive, end-exclusive)",
        lambda t: fp.sum(t.x, window="10s"), [ev(0, x=1.0), ev(10, x=2.0)], 10.000001, 2.0,
        note="ts=0 left one microsecond ago (T - w = 0.000001 > 0)")),
    ("event at T unseen", Case(
        "(start-inclusive, end-exclusive)",
        lambda t: fp.count(window="10s"), [ev(5)], 5.0, 0)),
    ("hopped window start on a hop boundary", Case(
        "`start = floor(T / hop) * hop - w`",
        lambda t: fp.count(window="10s", hop="5s"), [ev(0), ev(4), ev(6), ev(12)], 17.0, 2,
        note="start = floor(17 / 5) * 5 - 10 = 5: ts 6 and 12; a sliding 10s window starts at 7")),
    ("hopped window keeps an event to the boundary", Case(
        "and leaves at the next hop boundary",
        lambda t: fp.sum(t.x, window="10s", hop="5s"),
        [ev(0, x=1.0), ev(4, x=2.0), ev(6, x=4.0), ev(12, x=8.0)], 14.999999, 15.0,
        note="start = 2 * 5 - 10 = 0: every event; sliding would start at 4.999999 (12.0)")),
    ("hopped window drops them at the boundary", Case(
        "and leaves at the next hop boundary",
        lambda t: fp.sum(t.x, window="10s", hop="5s"),
        [ev(0, x=1.0), ev(4, x=2.0), ev(6, x=4.0), ev(12, x=8.0)], 15.0, 12.0,
        note="start = 3 * 5 - 10 = 5: ts 0 and 4 leave together at T = 15")),
    ("hopped window empty", Case(
        "the tail moves in hops, the head is exact",
        lambda t: fp.max(t.n, window="1m", hop="30s"), [ev(0, n=3), ev(20, n=5)], 90.0, None,
        note="start = 3 * 30 - 60 = 30: both events left")),
    ("lifetime ts < T", Case(
        "or `ts < T` for lifetime aggregations",
        lambda t: fp.count(), [ev(0), ev(10), ev(20)], 20.0, 2)),
    ("window moves with T", Case(
        "a value read\n  long after an entity's last event reflects an empty window",
        lambda t: fp.count(window="1h"), [ev(0), ev(10)], 3610.000001, 0,
        note="T - w is one microsecond past the last event")),
    ("empty count_distinct 0", Case(
        "Empty window: `count` and `count_distinct` give 0",
        lambda t: fp.count_distinct(t.s, window="5s"), [ev(0, s="a")], 60.0, 0)),
    ("empty sum null", Case(
        "every other aggregation gives null",
        lambda t: fp.sum(t.x, window="5s"), [ev(0, x=1.0)], 60.0, None)),
    ("empty first null", Case(
        "every other aggregation gives null",
        lambda t: fp.first(t.s, window="5s"), [ev(0, s="a")], 60.0, None)),
    ("mode tie to the smallest", Case(
        "a tie between equally frequent values goes to the smallest value",
        lambda t: fp.mode(t.n), [ev(0, n=3), ev(1, n=1), ev(2, n=3), ev(3, n=1)], 4.0, 1,
        note="3 and 1 twice each: 1")),
    ("mode NaN loses a tie", Case(
        "NaN wins only when it is strictly most frequent",
        lambda t: fp.mode(t.x), [ev(0, x=math.nan), ev(1, x=5.0)], 2.0, 5.0)),
    ("approx_percentile nearest rank", Case(
        "the `ceil(q * n)`-th smallest of `n`",
        lambda t: fp.approx_percentile(t.x, 0.75), [ev(0, x=4.0), ev(1, x=1.0), ev(2, x=3.0), ev(3, x=2.0)],
        4.0, 3.0, note="ceil(0.75 * 4) = 3rd of 1, 2, 3, 4")),
    ("approx_percentile rounds toward zero", Case(
        "rounded toward zero to 8 significant bits",
        lambda t: fp.approx_percentile(t.x, 0.5), [ev(0, x=1000.7)], 1.0, 1000.0,
        note="1000.7 = 1.9545 * 2**9; 0.9545 * 128 = 122.2 -> 122; 1.953125 * 512 = 1000.0")),
    ("decayed_sum halves per half-life", Case(
        "`x * 2**(-(T - ts) / h)`",
        lambda t: fp.decayed_sum(t.x, half_life="10s", window="60s"), [ev(0, x=8.0), ev(10, x=4.0)],
        20.0, 4.0, note="8 * 2**-2 + 4 * 2**-1")),
    ("empty mode null", Case(
        "every other aggregation gives null",
        lambda t: fp.mode(t.s, window="5s"), [ev(0, s="a")], 60.0, None)),
    ("empty window default", Case(
        "or the\n  feature's `default=`",
        lambda t: fp.mean(t.x, window="5s", default=-1.5), [ev(0, x=1.0)], 60.0, -1.5)),
    ("default replaces null last", Case(
        "`default=` replaces any null result of the aggregation",
        lambda t: fp.last(t.s, default="?"), [ev(0, s="a"), ev(1, s=None)], 2.0, "?")),
    ("default replaces all-null mean", Case(
        "`default=` replaces any null result of the aggregation",
        lambda t: fp.mean(t.x, default=0.0), [ev(0, x=None), ev(1, x=None)], 2.0, 0.0)),
    ("ties first earliest arrival", Case(
        "**Ties** (events with the same timestamp) are ordered by arrival: `first` picks the earliest\n  arrival",
        lambda t: fp.first(t.s), [ev(3, s="p"), ev(3, s="q")], 4.0, "p")),
    ("ties last latest arrival", Case(
        "`last` the latest",
        lambda t: fp.last(t.s), [ev(3, s="p"), ev(3, s="q")], 4.0, "q")),
    ("last by timestamp, not arrival", Case(
        "An event may arrive after events with later timestamps",
        lambda t: fp.last(t.s), [ev(5, s="newer"), ev(3, s="late")], 6.0, "newer")),
    ("late event beyond arrival bound", Case(
        "the batch plan takes an arrival bound per query point",
        lambda t: fp.sum(t.x), [ev(0, x=1.0), ev(20, x=2.0), ev(5, x=4.0)], 30.0, 3.0, arrived=2)),
    ("late event within arrival bound", Case(
        "the batch plan takes an arrival bound per query point",
        lambda t: fp.sum(t.x), [ev(0, x=1.0), ev(20, x=2.0), ev(5, x=4.0)], 30.0, 7.0)),
    ("older than horizon: lifetime", Case(
        "Events older than the horizon still count toward lifetime aggregations",
        lambda t: fp.count(), [ev(100), ev(0)], 101.0, 2, lateness="1s",
        note="horizon = 100 - 0 (no window) - 1 = 99: the event at 0 is folded, still counted")),
    ("older than horizon: window", Case(
        "Events older than the horizon still count toward lifetime aggregations",
        lambda t: fp.count(window="5s") * 10 + fp.count(), [ev(100), ev(0)], 101.0, 12, lateness="1s",
        note="windowed 1, lifetime 2")),
    # ---- nulls and NaN ---------------------------------------------------------------------
    ("count(x) skips nulls", Case(
        "Aggregations skip null inputs (`count(x)` counts non-null values)",
        lambda t: fp.count(t.x), [ev(0, x=1.0), ev(1, x=None), ev(2, x=3.0)], 3.0, 2)),
    ("count() counts events", Case(
        "Aggregations skip null inputs (`count(x)` counts non-null values)",
        lambda t: fp.count(), [ev(0, x=1.0), ev(1, x=None), ev(2, x=3.0)], 3.0, 3)),
    ("mean skips nulls", Case(
        "Aggregations skip null inputs",
        lambda t: fp.mean(t.x), [ev(0, x=1.0), ev(1, x=None), ev(2, x=3.0)], 3.0, 2.0)),
    # ---- lists and maps --------------------------------------------------------------------
    ("last_k newest first", Case(
        "the values of the k newest events with a non-null `x`, **newest first**",
        lambda t: fp.last_k(t.n, 2), [ev(0, n=1), ev(1, n=None), ev(2, n=3), ev(2, n=4)], 3.0, [4, 3],
        note="a tie in time: the later arrival is newer")),
    ("first_k oldest first", Case(
        "the values of the k oldest such events, **oldest first**",
        lambda t: fp.first_k(t.x, 3), [ev(1, x=-0.0), ev(0, x=2.5)], 2.0, [2.5, -0.0])),
    ("last_distinct_k by newest event", Case(
        "the k distinct values seen most recently, **newest first**",
        lambda t: fp.last_distinct_k(t.s, 2), [ev(0, s="a"), ev(1, s="b"), ev(2, s="a")], 3.0, ["a", "b"])),
    ("count_by order", Case(
        "**count descending, then value ascending**",
        lambda t: fp.count_by(t.s, top_k=2), [ev(0, s="c"), ev(1, s="b"), ev(2, s="a"), ev(3, s="b")], 4.0,
        {"b": 2, "a": 1})),
    ("lists are null, not empty", Case(
        "is null, not empty, when the",
        lambda t: fp.last_k(t.n, 2, window="5s"), [ev(0, n=1)], 60.0, None)),
    ("by= buckets ordered by key", Case(
        "ordered by bucket ascending",
        lambda t: fp.sum(t.n, by=t.s), [ev(0, s="b", n=1), ev(1, s="a", n=2), ev(2, s=None, n=4), ev(3, s="b", n=8)],
        4.0, {"a": 2, "b": 9}, note="the null bucket's event is skipped")),
    ("mode skips nulls", Case(
        "Aggregations skip null inputs",
        lambda t: fp.mode(t.n), [ev(0, n=None), ev(1, n=None), ev(2, n=4)], 3.0, 4,
        note="two nulls are not a most frequent value")),
    ("last may be null", Case(
        "they return the value of the first/last event in the window, which may be null",
        lambda t: fp.last(t.x), [ev(0, x=1.0), ev(1, x=None)], 2.0, None)),
    ("first may be null", Case(
        "they return the value of the first/last event in the window, which may be null",
        lambda t: fp.first(t.n), [ev(0, n=None), ev(1, n=5)], 2.0, None)),
    ("NaN is counted", Case(
        "NaN is a value, not a null",
        lambda t: fp.count(t.x), [ev(0, x=NAN)], 1.0, 1)),
    ("where: null condition excluded", Case(
        "an event counts only where the condition is true (a null condition excludes it)",
        lambda t: fp.count(where=t.b), [ev(0, b=True), ev(1, b=None), ev(2, b=False)], 3.0, 1)),
    ("where: NaN above +inf", Case(
        "NaN equals NaN and is greater than every number\n  (including +inf)",
        lambda t: fp.count(where=t.x > math.inf), [ev(0, x=NAN), ev(1, x=math.inf)], 2.0, 1)),
    ("NaN leaves canonical (0/0)", Case(
        "Every float feature leaves either path with NaN canonicalized to the quiet NaN\n`0x7ff8000000000000`",
        lambda t: fp.last(t.x / 0.0), [ev(0, x=0.0)], 1.0, NAN)),
    ("NaN leaves canonical (negative NaN input)", Case(
        "Every float feature leaves either path with NaN canonicalized to the quiet NaN\n`0x7ff8000000000000`",
        lambda t: fp.last(t.x), [ev(0, x=NEG_NAN)], 1.0, NAN)),
    ("-0.0 kept by last", Case(
        "`-0.0` and `0.0`\ndiffer",
        lambda t: fp.last(t.x), [ev(0, x=-0.0)], 1.0, -0.0)),
    # ---- exact accumulation ----------------------------------------------------------------
    ("fixed point: half to even, down", Case(
        "`q = round_half_even(x * 2**40)`",
        lambda t: fp.sum(t.x), [ev(0, x=2.0**-41)], 1.0, 0.0, note="q = round(0.5) = 0")),
    ("fixed point: half to even, up", Case(
        "`q = round_half_even(x * 2**40)`",
        lambda t: fp.sum(t.x), [ev(0, x=3 * 2.0**-41)], 1.0, 1.8189894035458565e-12,
        note="q = round(1.5) = 2; 2 * 2**-40 = 2**-39")),
    ("fixed point resolution", Case(
        "`0.1 + 0.2 + 0.3` sums to\n  `0.6000000000003638`",
        lambda t: fp.sum(t.x), [ev(0, x=0.1), ev(1, x=0.2), ev(2, x=0.3)], 3.0, 0.6000000000003638,
        note="q = 109951162778 + 219902325555 + 329853488333 = 659706976666; * 2**-40. "
             "A naive double sum gives 0.6000000000000001")),
    ("sum order-free", Case(
        "sums of `q` are exact integers",
        lambda t: fp.sum(t.x), [ev(0, x=2.0**51), ev(1, x=0.25), ev(2, x=-(2.0**51)), ev(3, x=0.25)], 4.0, 0.5,
        note="left-to-right double addition gives 0.25 (2**51 + 0.25 rounds to 2**51)")),
    ("subnormal sums as 0", Case(
        "Subnormal inputs sum as 0",
        lambda t: fp.sum(t.x), [ev(0, x=5e-324), ev(1, x=5e-324)], 2.0, 0.0)),
    ("-0.0 sums to +0.0", Case(
        "`sum = float(S) * 2**-40`",
        lambda t: fp.sum(t.x), [ev(0, x=-0.0)], 1.0, 0.0, note="S = 0; float(0) * 2**-40 = +0.0")),
    ("just below saturation", Case(
        "inputs with `|x| >= 2**52` saturate",
        lambda t: fp.sum(t.x), [ev(0, x=2.0**52 - 0.5)], 1.0, 4503599627370495.5)),
    ("saturate +inf", Case(
        "the result is `+inf` (only large positives)",
        lambda t: fp.sum(t.x), [ev(0, x=2.0**52), ev(1, x=1.0)], 2.0, math.inf,
        note="2**52 + 1 is a double; the rule, not overflow, gives inf")),
    ("saturate -inf", Case(
        "`-inf`\n  (only large negatives)",
        lambda t: fp.mean(t.x), [ev(0, x=-1e300), ev(1, x=5.0)], 2.0, -math.inf)),
    ("saturate both: NaN", Case(
        "NaN (both, or any NaN input)",
        lambda t: fp.sum(t.x), [ev(0, x=1e300), ev(1, x=-1e300)], 2.0, NAN)),
    ("any NaN input: NaN", Case(
        "NaN (both, or any NaN input)",
        lambda t: fp.sum(t.x), [ev(0, x=NAN), ev(1, x=1.0)], 2.0, NAN)),
    ("mean = sum / n", Case(
        "`mean = sum / n`",
        lambda t: fp.mean(t.x), [ev(0, x=1.0), ev(1, x=2.0), ev(2, x=2.0)], 3.0, 1.6666666666666667)),
    ("var: the fixed formula", Case(
        "`var = max(s2 - s1 * (s1 / n), 0) / (n - 1)`",
        lambda t: fp.var(t.x), [ev(0, x=1.0), ev(1, x=2.0), ev(2, x=4.0)], 3.0, 2.333333333333332,
        note="21 - 7 * (7 / 3) = 4.666666666666664; / 2. The exact variance rounds to 2.3333333333333335")),
    ("var: clamped at 0", Case(
        "`var = max(s2 - s1 * (s1 / n), 0) / (n - 1)`",
        lambda t: fp.var(t.x), [ev(0, x=1.1), ev(1, x=1.1), ev(2, x=1.1)], 3.0, 0.0,
        note="s2 - s1 * (s1 / 3) = -2.29e-12 before the clamp")),
    ("var of equal values is not 0", Case(
        "`var` of identical values can be a tiny positive number (three `0.1` give `2.18e-13`)",
        lambda t: fp.var(t.x), [ev(0, x=0.1), ev(1, x=0.1), ev(2, x=0.1)], 3.0, 2.1827852025868566e-13,
        note="s1 = 3 * 109951162778 * 2**-40, s2 = 3 * q(fl(0.1 * 0.1)) * 2**-40")),
    ("var of ints", Case(
        "`var`/`std` of ints convert each int to binary64 first",
        lambda t: fp.var(t.n), [ev(0, n=1), ev(1, n=2), ev(2, n=4)], 3.0, 2.333333333333332)),
    ("var null below 2 values", Case(
        "(sample variance; null below 2 values)",
        lambda t: fp.var(t.x), [ev(0, x=5.0), ev(1, x=None)], 2.0, None)),
    ("var null below 2 values, even saturated", Case(
        "(sample variance; null below 2 values)",
        lambda t: fp.std(t.x), [ev(0, x=1e300)], 1.0, None)),
    ("std = sqrt(var)", Case(
        "`std = sqrt(var)`",
        lambda t: fp.std(t.x), [ev(0, x=1.0), ev(1, x=3.0)], 2.0, 1.4142135623730951)),
    ("var just below 2**26", Case(
        "`var` of inputs at or above `2**26` in magnitude is NaN",
        lambda t: fp.var(t.x), [ev(0, x=2.0**26 - 1), ev(1, x=0.0)], 2.0, 2251799746576384.5,
        note="s2 = (2**26 - 1)**2 < 2**52; s2 - s1 * (s1 / 2) = 2251799746576384.5")),
    ("var at 2**26 is NaN", Case(
        "`var` of inputs at or above `2**26` in magnitude is NaN",
        lambda t: fp.var(t.x), [ev(0, x=2.0**26), ev(1, x=0.0)], 2.0, NAN)),
    ("var of huge inputs is NaN, not inf", Case(
        "`var` of inputs at or above `2**26` in magnitude is NaN",
        lambda t: fp.var(t.x), [ev(0, x=1e300), ev(1, x=1e300)], 2.0, NAN)),
    ("std of huge int inputs is NaN", Case(
        "`var` of inputs at or above `2**26` in magnitude is NaN",
        lambda t: fp.std(t.n), [ev(0, n=-(2**40)), ev(1, n=1)], 2.0, NAN)),
    ("int sum exact", Case(
        "Integer sums are exact and give null when the total leaves int64",
        lambda t: fp.sum(t.n), [ev(0, n=2**63 - 1), ev(1, n=1), ev(2, n=-1)], 3.0, 2**63 - 1,
        note="the running total leaves int64 and comes back: exact")),
    ("int sum overflow is null", Case(
        "Integer sums are exact and give null when the total leaves int64",
        lambda t: fp.sum(t.n), [ev(0, n=2**63 - 1), ev(1, n=1)], 2.0, None)),
    ("int sum overflow takes the default", Case(
        "`default=` replaces any null result of the aggregation",
        lambda t: fp.sum(t.n, default=-1), [ev(0, n=-(2**63)), ev(1, n=-1)], 2.0, -1)),
    ("int mean from the exact total", Case(
        "The mean of ints is\n  `float(S) / n` with `S` the exact integer total, even when `S` leaves int64",
        lambda t: fp.mean(t.n), [ev(0, n=2**62), ev(1, n=2**62), ev(2, n=2**62)], 3.0, 4.611686018427388e18,
        note="total 3 * 2**62 leaves int64; float(total) / 3 = 2**62")),
    ("min sees -0.0 as 0.0", Case(
        "`min`/`max` see `-0.0` as `0.0`",
        lambda t: fp.min(t.x), [ev(0, x=-0.0), ev(1, x=0.0)], 2.0, 0.0)),
    ("max of -0.0 is +0.0", Case(
        "`min`/`max` see `-0.0` as `0.0`",
        lambda t: fp.max(t.x), [ev(0, x=-0.0)], 1.0, 0.0)),
    ("min: any NaN", Case(
        "any NaN in the window makes the result NaN",
        lambda t: fp.min(t.x), [ev(0, x=NAN), ev(1, x=-1.0)], 2.0, NAN)),
    ("max: NaN left the window", Case(
        "any NaN in the window makes the result NaN",
        lambda t: fp.max(t.x, window="2s"), [ev(0, x=NAN), ev(1, x=-1.0)], 2.5, -1.0)),
    ("count_distinct: NaN, -0.0, null", Case(
        "`count_distinct` treats all NaNs as one value and `-0.0` as `0.0`; nulls are not counted",
        lambda t: fp.count_distinct(t.x),
        [ev(0, x=NAN), ev(1, x=NEG_NAN), ev(2, x=0.0), ev(3, x=-0.0), ev(4, x=None), ev(5, x=1.0)],
        6.0, 3)),
    ("count_distinct: strings by code point", Case(
        "unicode text; comparisons by code point",
        lambda t: fp.count_distinct(t.s),
        [ev(0, s="\u00e9"), ev(1, s="e\u0301"), ev(2, s="\u00e9"), ev(3, s="")], 4.0, 3,
        note="precomposed and decomposed é are different text")),
    # ---- derived features -------------------------------------------------------------------
    ("derived: null propagates", Case(
        "A feature that references other features (`fp.feature(\"name\")`) or combines aggregations\n(`sum / count`) is evaluated after aggregation",
        lambda t: fp.sum(t.x, window="5s") / fp.count(window="5s"), [ev(0, x=1.0)], 60.0, None,
        note="empty window: null sum / 0 = null")),
    ("derived: default then 0/0", Case(
        "(`sum / count`) is evaluated after aggregation",
        lambda t: fp.sum(t.x, window="5s", default=0.0) / fp.count(window="5s"), [ev(0, x=1.0)], 60.0, NAN,
        note="0.0 / 0 is IEEE 0/0 (ints cast first)")),
]


def _events(case: Case, v: fp.FeatureView) -> pl.DataFrame:
    return normalize_events(v, frame([row(ts=at(sec), **f) for sec, f in case.events]))


def _t_us(seconds: float) -> int:
    return int(BASE.timestamp()) * US + round(seconds * US)


def batch_value(case: Case) -> Any:
    v = view({"f": case.feature}, lateness=case.lateness)
    arrived = len(case.events) if case.arrived is None else case.arrived
    queries = pl.DataFrame(
        {"k": ["a"], TS: [_t_us(case.t)], ARRIVED: [arrived]},
        schema={"k": pl.String, TS: pl.Int64, ARRIVED: pl.Int64},
    )
    return BatchProgram(v.ir).features(_events(case, v).lazy(), queries)["f"].to_list()[0]


def per_event_value(case: Case) -> Any:
    """Ingest the events that had arrived, in arrival order, then query."""
    v = view({"f": case.feature}, lateness=case.lateness)
    prog = ViewProgram(v.ir)
    state = prog.new_state()
    arrived = len(case.events) if case.arrived is None else case.arrived
    for seq, event in enumerate(_events(case, v).head(arrived).iter_rows(named=True)):
        prog.ingest(state, event, seq)
    (value,) = prog.query(state, _t_us(case.t))
    return value


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def same(got: Any, want: Any) -> bool:
    if want is None:
        return got is None
    if isinstance(want, dict):  # a batch map is a list of {key, value} entries, in order
        if isinstance(got, list):
            got = {e["key"]: e["value"] for e in got}
        return isinstance(got, dict) and list(got) == list(want) and all(same(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(same, got, want))
    if isinstance(want, float):
        return type(got) is float and _bits(got) == (QNAN if want != want else _bits(want))
    return type(got) is type(want) and got == want


@pytest.mark.parametrize(
    "case", [c for _, c in CASES], ids=[f"{name} [{_normalized(c.rule)}]" for name, c in CASES]
)
def test_golden(case: Case) -> None:
    batch = batch_value(case)
    assert same(batch, case.expected), f"batch {batch!r}, expected {case.expected!r} ({case.note})"
    per_event = per_event_value(case)
    assert same(per_event, case.expected), f"per-event {per_event!r}, expected {case.expected!r} ({case.note})"


LATE_QUERY = "A query at T is answered exactly when\n  `T >= newest_ts - lateness`; an older query raises `StateError`"


def test_query_behind_lateness_raises_on_the_per_event_path() -> None:
    """The per-event state answers down to newest - lateness and refuses older queries; the
    batch plan answers them."""
    events = [ev(0), ev(100)]
    edge = Case(LATE_QUERY, lambda t: fp.count(), events, 90.0, 1, lateness="10s")
    assert same(per_event_value(edge), 1) and same(batch_value(edge), 1)
    older = Case(LATE_QUERY, lambda t: fp.count(), events, 89.999999, 1, lateness="10s")
    assert same(batch_value(older), 1)
    with pytest.raises(StateError):
        per_event_value(older)


def test_every_quoted_rule_is_in_the_document() -> None:
    """The table quotes docs/semantics.md; a reworded rule must be revisited here."""
    doc = _normalized(DOC.read_text())
    missing = [name for name, c in CASES if _normalized(c.rule) not in doc]
    assert _normalized(LATE_QUERY) in doc
    assert not missing, missing
    assert len({c.rule for _, c in CASES}) >= 35
