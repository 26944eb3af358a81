"""Per-operation unit tests: each row-level op on both compilers, against stated values."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import polars as pl
import pytest

import featurepipe as fp
from featurepipe.compile.polars_rows import translate
from featurepipe.compile.python_rows import CodeGen
from featurepipe.ir import nodes as ir
from featurepipe.parity.harness import normalize_events
from tests.schema import at, frame, row, view

NAN = math.nan


def both(expr: Callable[[Any], Any], rows: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """Values of a row-level expression per event: (batch, per-event)."""
    v = view({"out": lambda t: fp.last(expr(t))})
    agg = v.ir.aggs[0]
    assert isinstance(agg, ir.Agg) and agg.arg is not None
    node = agg.arg
    df = normalize_events(v, frame(rows))
    batch = df.select(translate(node, lambda n: pl.col(n.name) if isinstance(n, ir.Field) else None)
                      .alias("o"))["o"].to_list()
    gen = CodeGen(lambda n: f"ev[{n.name!r}]" if isinstance(n, ir.Field) else None)
    out = gen.emit(node)
    _, fn = gen.function("f", "ev", [out])
    stream = [fn(r)[0] for r in df.iter_rows(named=True)]
    return batch, stream


def same(a: Any, b: Any) -> bool:
    """Equal, including the sign of zero. Inside an expression NaN's sign bit is not meaningful
    (x86 makes 0/0 negative, Python positive); feature outputs are canonicalized and the parity
    harness compares those bit for bit."""
    if isinstance(a, float) and isinstance(b, float):
        if a != a or b != b:
            return a != a and b != b
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b) and type(a) is type(b)


CASES: list[tuple[str, Callable[[Any], Any], list[dict[str, Any]], list[Any]]] = [
    ("add wraps int64", lambda t: t.n + 1, [row(n=2**63 - 1), row(n=None)], [-(2**63), None]),
    ("sub", lambda t: t.x - 1.5, [row(x=1.0)], [-0.5]),
    ("-0.0 - -0.0 is +0.0", lambda t: t.x - (-0.0), [row(x=-0.0)], [0.0]),
    ("-0.0 + 0.0 is +0.0", lambda t: t.x + 0.0, [row(x=-0.0)], [0.0]),
    ("0.0 + -0.0 literal first", lambda t: 0.0 + t.x, [row(x=-0.0)], [0.0]),
    ("mul wraps", lambda t: t.n * 4, [row(n=2**62)], [0]),
    ("truediv by zero", lambda t: t.x / 0.0, [row(x=1.0), row(x=-1.0), row(x=0.0)], [math.inf, -math.inf, NAN]),
    ("truediv correctly rounded", lambda t: t.n / 3, [row(n=7)], [7 / 3]),
    ("int floordiv floors", lambda t: t.n // 2, [row(n=-7)], [-4]),
    ("int floordiv by zero is null", lambda t: t.n // 0, [row(n=7)], [None]),
    ("int mod sign of divisor", lambda t: t.n % 3, [row(n=-7)], [2]),
    ("float floordiv is floor(a/b)", lambda t: t.x // 0.1, [row(x=1.0)], [10.0]),
    ("float mod", lambda t: t.x % 2.0, [row(x=-7.5)], [0.5]),
    ("neg wraps", lambda t: -t.n, [row(n=-(2**63))], [-(2**63)]),
    ("abs", lambda t: t.x.abs(), [row(x=-0.0)], [0.0]),
    ("eq NaN total order", lambda t: t.x == NAN, [row(x=NAN), row(x=1.0)], [True, False]),
    ("gt NaN greatest", lambda t: t.x > math.inf, [row(x=NAN)], [True]),
    ("and Kleene", lambda t: t.b & (t.n > 0), [row(b=False), row(b=None, n=1), row(b=True, n=1)], [False, None, True]),
    ("or Kleene", lambda t: t.b | (t.n > 0), [row(b=True), row(b=None, n=-1), row(b=False, n=1)], [True, None, True]),
    ("not", lambda t: ~t.b, [row(b=True), row(b=None)], [False, None]),
    # the whole truth tables (docs/semantics.md: false & null = false, true | null = true,
    # otherwise null); rows: b in (true, false, null) x (n > 0) in (true, false, null)
    ("and Kleene, every pair", lambda t: t.b & (t.n > 0),
     [row(b=b, n=n) for b in (True, False, None) for n in (1, -1, None)],
     [True, False, None, False, False, False, None, False, None]),
    ("or Kleene, every pair", lambda t: t.b | (t.n > 0),
     [row(b=b, n=n) for b in (True, False, None) for n in (1, -1, None)],
     [True, True, True, True, False, None, True, None, None]),
    ("truediv by -0.0 and NaN", lambda t: t.x / ((t.x - t.x) * -1.0), [row(x=1.0), row(x=NAN)], [-math.inf, NAN]),
    ("is_null (NaN is not null)", lambda t: t.x.is_null(), [row(x=NAN), row(x=None)], [False, True]),
    ("fill_null", lambda t: t.s.fill_null("?"), [row(s=None), row(s="a")], ["?", "a"]),
    ("coalesce", lambda t: fp.coalesce(t.x, t.n, -1.0), [row(n=3), row()], [3.0, -1.0]),
    ("when null condition -> otherwise", lambda t: fp.when(t.b).then(1).otherwise(2), [row(b=None), row(b=True)], [2, 1]),
    ("cast float->int truncates; NaN null", lambda t: t.x.cast("int"), [row(x=-2.7), row(x=NAN), row(x=1e300)], [-2, None, None]),
    ("cast int->str", lambda t: t.n.cast("str"), [row(n=-12)], ["-12"]),
    ("round half even keeps -0.0", lambda t: t.x.round(), [row(x=2.5), row(x=-0.4)], [2.0, -0.0]),
    ("round 2 decimals", lambda t: t.x.round(2), [row(x=1.005)], [1.0]),
    ("floor/ceil", lambda t: t.x.floor() + t.x.ceil(), [row(x=-0.5)], [-1.0]),
    ("sqrt negative NaN", lambda t: t.x.sqrt(), [row(x=-1.0), row(x=4.0)], [NAN, 2.0]),
    ("log edges", lambda t: t.x.log(), [row(x=0.0), row(x=-1.0)], [-math.inf, NAN]),
    ("log1p edges", lambda t: t.x.log1p(), [row(x=-1.0)], [-math.inf]),
    ("exp overflow", lambda t: t.x.exp(), [row(x=1000.0)], [math.inf]),
    ("clip keeps NaN", lambda t: t.x.clip(0.0, 1.0), [row(x=NAN), row(x=5.0), row(x=-5.0)], [NAN, 1.0, 0.0]),
    ("lower unicode", lambda t: t.s.lower(), [row(s="ǅİ")], ["ǆi̇"]),
    ("upper ß", lambda t: t.s.upper(), [row(s="straße")], ["STRASSE"]),
    # U+A7CC was assigned after Python 3.11's Unicode 14: the per-event semantics (unchanged)
    ("lower newer-unicode char", lambda t: t.s.lower(), [row(s="x\ua7cc")], ["x\ua7cc"]),
    ("constant divisor folded", lambda t: t.x / (-fp.lit(3.0)), [row(x=7.0)], [7.0 / -3.0]),
    ("strip ascii whitespace only", lambda t: t.s.strip(), [row(s="\t x \u00a0")], ["x \u00a0"]),
    ("len code points", lambda t: t.s.len(), [row(s="中国🙂")], [3]),
    ("contains literal", lambda t: t.s.contains("."), [row(s="a.b"), row(s="ab")], [True, False]),
    ("startswith/endswith", lambda t: t.s.startswith("ab") & t.s.endswith("c"), [row(s="abc")], [True]),
    ("slice code points", lambda t: t.s.slice(1, 2), [row(s="中国🙂x")], ["国🙂"]),
    ("concat null", lambda t: t.s.concat("-", t.s), [row(s="a"), row(s=None)], ["a-a", None]),
    ("hour/minute", lambda t: t.ts.hour() * 100 + t.ts.minute(), [row(ts=at(3600 * 5 + 60 * 7))], [507]),
    ("day_of_week ISO", lambda t: t.ts.day_of_week(), [row(ts=at(0))], [7]),  # 2026-03-01 Sunday
    ("year/month/day", lambda t: t.ts.year() * 10000 + t.ts.month() * 100 + t.ts.day(), [row(ts=at(0))], [20260301]),
    ("epoch seconds floor", lambda t: t.ts.epoch_seconds(), [row(ts=at(0.5))], [int(at(0).timestamp())]),
    ("truncate", lambda t: t.ts.truncate("1h").cast("int"), [row(ts=at(3599))], [int(at(0).timestamp()) * 1_000_000]),
    ("encode null / oov / vocab", lambda t: fp.encode(t.s, vocabulary=["x", "y"]), [row(s=None), row(s="z"), row(s="y")], [0, 1, 3]),
    # xxh64 seed 0 of the UTF-8 text (ints: decimal text), modulo n; literals from the XXH64
    # spec (xxh64(b"") = 0xEF46DB3751D8E999, xxh64(b"merchant-42") = 3900936438865589143)
    ("hash_bucket stable", lambda t: fp.hash_bucket(t.s, 1000), [row(s="merchant-42")], [143]),
    ("hash_bucket utf-8 / empty / null", lambda t: fp.hash_bucket(t.s, 7) * 100 + fp.hash_bucket(t.s, 10),
     [row(s="中国"), row(s=""), row(s=None)], [4 * 100 + 8, 6 * 100 + 1, None]),
    ("hash_bucket int decimal text", lambda t: fp.hash_bucket(t.n, 97), [row(n=-12)], [18]),
    ("hash_bucket int64 max", lambda t: fp.hash_bucket(t.n, 1000), [row(n=2**63 - 1)], [731]),
    ("bucketize", lambda t: fp.bucketize(t.x, [0.0, 10.0]), [row(x=-1.0), row(x=0.0), row(x=10.0), row(x=NAN)], [0, 1, 2, 2]),
]


@pytest.mark.parametrize(("name", "expr", "rows", "expected"), CASES, ids=[c[0] for c in CASES])
def test_op(name: str, expr: Callable[[Any], Any], rows: list[dict[str, Any]], expected: list[Any]) -> None:
    batch, stream = both(expr, rows)
    for b, s in zip(batch, stream, strict=True):
        assert same(b, s), (name, batch, stream)
    for got, want in zip(stream, expected, strict=True):
        assert same(got, want), (name, stream, expected)  # same type too: True is not 1


def test_float_mod_of_a_zero_literal_keeps_the_sign_of_ieee_subtraction() -> None:
    """0.0 % 1e300 = 0.0 - 1e300 * floor(0.0 / 1e300) = +0.0 in IEEE arithmetic (worked by
    hand; Python's own 0.0 % 1e300 agrees). Found by the hypothesis parity test: the batch
    plan gave -0.0 (Polars rewrote ``0.0 - y`` as ``-y``)."""
    from datetime import UTC, datetime

    import featurepipe as fp
    from featurepipe.testing import assert_parity
    from tests.schema import frame, view

    rows = [
        {"k": "a", "x": 1e300, "n": None, "s": None, "b": None, "ts": datetime(2026, 3, 1, tzinfo=UTC)},
        {"k": "a", "x": None, "n": None, "s": None, "b": None, "ts": datetime(2026, 3, 1, 0, 0, 1, tzinfo=UTC)},
    ]
    assert_parity(view({"value": lambda t: fp.last(fp.lit(0.0) % t.x)}), frame(rows))
