"""Batch compiler, aggregation level: every feature of a view for a frame of query points.

Input: events (entity key, ``__ts`` epoch micros, ``__seq`` arrival order, source fields) and
queries (entity key, ``__ts`` = T, optional ``__arrived``: only events with ``__seq`` below it are
visible). Output: one row per query, in query order, every feature as of T.

How (all vectorized, no per-row Python):

1. a lazy row stage evaluates every aggregation's input, ``where`` flag and *prepared* value
   (fixed-point integers for float sums, canonical floats for min/max);
2. events are sorted by (entity, ts, seq) under one Int128 key ``rank * 2**64 + ts``; for each
   query and window a binary search gives the event range [lo, hi);
3. count/sum/mean/var come from differences of exact integer prefix sums; min/max from a sparse
   table (range-minimum queries); first/last from forward/backward-filled event indices;
   windowed count_distinct from the exploded (query, event) pairs;
4. queries that must not see some already-timestamped events (those that arrived after the
   query) take the exploded-pairs path for every aggregation, filtered by arrival;
5. the same finalization arithmetic as the per-event path turns accumulators into values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import polars as pl

from featurepipe import kernels as k
from featurepipe.compile.polars_rows import PL_TYPES, translate
from featurepipe.ir import nodes as ir
from featurepipe.ir.types import DType

F64, I64, I128 = pl.Float64, pl.Int64, pl.Int128
TS, SEQ, QID, ARRIVED = "__ts", "__seq", "__qid", "__arrived"
RANK, KEY = "__rank", "__key"
Engine = Literal["auto", "in-memory", "streaming"]
_OFF = 2**63
_SHIFT = 2**64


def _kind_float(agg: ir.Agg) -> bool:
    return agg.arg is not None and agg.arg.dtype is DType.FLOAT


def _fixed(x: pl.Expr) -> tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr]:
    """(fixed-point Int128, is +big, is -big, is NaN) of a non-null float expression."""
    nan = x.is_nan()
    pos = ~nan & (x >= k.BIG)
    neg = ~nan & (x <= -k.BIG)
    ok = ~(nan | pos | neg)
    q = pl.when(ok).then((x * k.SCALE).round(0, mode="half_to_even")).otherwise(0.0).cast(I128)
    return q, pos, neg, nan


class BatchProgram:
    """The batch executor of one view."""

    def __init__(self, view: ir.ViewIR, *, reference: bool = False) -> None:
        """``reference=True`` sends every query down the exploded-pairs path: the naive,
        obviously-correct reference the fast kernels are tested against."""
        self.reference = reference
        self.view = view
        self.aggs = view.aggs
        self.key = view.entity_key

    # -- 1. row stage ----------------------------------------------------------------------
    def prepare(self, events: pl.LazyFrame) -> pl.LazyFrame:
        """Lazy plan: inputs, flags and prepared values of every aggregation, per event."""

        def leaf(n: ir.Node) -> pl.Expr | None:
            return pl.col(n.name) if isinstance(n, ir.Field) else None

        cols: list[pl.Expr] = []
        for i, agg in enumerate(self.aggs):
            inc = pl.lit(True) if agg.where is None else translate(agg.where, leaf).fill_null(False)
            v = pl.lit(True) if agg.arg is None else translate(agg.arg, leaf)
            valid = inc & v.is_not_null()
            kind = agg.kind
            c = f"a{i}_"
            if kind == "count":
                cols.append(valid.cast(I64).alias(c + "n"))
            elif kind in ("sum", "mean") and _kind_float(agg):
                q, pos, neg, nan = _fixed(v)
                cols += [
                    valid.cast(I64).alias(c + "n"),
                    pl.when(valid).then(q).otherwise(0).cast(I128).alias(c + "s"),
                    (valid & pos).cast(I64).alias(c + "pos"),
                    (valid & neg).cast(I64).alias(c + "neg"),
                    (valid & nan).cast(I64).alias(c + "nan"),
                ]
            elif kind in ("sum", "mean"):
                cols += [
                    valid.cast(I64).alias(c + "n"),
                    pl.when(valid).then(v.cast(I128)).otherwise(0).cast(I128).alias(c + "s"),
                ]
            elif kind in ("var", "std"):
                q1, p1, n1, x1 = _fixed(v)
                q2, p2, n2, x2 = _fixed(v * v)
                cols += [
                    valid.cast(I64).alias(c + "n"),
                    pl.when(valid).then(q1).otherwise(0).cast(I128).alias(c + "s1"),
                    pl.when(valid).then(q2).otherwise(0).cast(I128).alias(c + "s2"),
                    (valid & (p1 | n1 | x1 | p2 | n2 | x2)).cast(I64).alias(c + "flags"),
                ]
            elif kind in ("min", "max"):
                big = self._sentinel(agg)
                if _kind_float(agg):
                    canon = pl.when(v == 0.0).then(0.0).otherwise(v)
                    nan = valid & v.is_nan()
                    m = pl.when(valid & ~v.is_nan()).then(canon).otherwise(big)
                else:
                    nan = pl.lit(False)
                    m = pl.when(valid).then(v).otherwise(big)
                cols += [
                    valid.cast(I64).alias(c + "n"),
                    nan.cast(I64).alias(c + "nan"),
                    m.cast(PL_TYPES[agg.dtype]).alias(c + "m"),
                ]
            elif kind in ("first", "last"):
                cols += [inc.alias(c + "inc"), v.cast(PL_TYPES[agg.dtype]).alias(c + "v")]
            else:  # count_distinct
                if _kind_float(agg):
                    v = pl.when(v.is_nan()).then(float("nan")).when(v == 0.0).then(0.0).otherwise(v)
                cols.append(pl.when(valid).then(v).otherwise(None).alias(c + "key"))
        return events.filter(pl.col(self.key).is_not_null()).select(
            pl.col(self.key), pl.col(TS), pl.col(SEQ), *cols
        )

    def _sentinel(self, agg: ir.Agg) -> pl.Expr:
        lo = agg.kind == "min"
        if _kind_float(agg):
            return pl.lit(math.inf if lo else -math.inf, F64)
        return pl.lit(k.INT_MAX if lo else k.INT_MIN, I64)

    # -- 2..5 ------------------------------------------------------------------------------
    def features(
        self,
        events: pl.LazyFrame | pl.DataFrame,
        queries: pl.DataFrame,
        *,
        engine: Engine = "auto",
    ) -> pl.DataFrame:
        """Every feature at every query point; columns: key, ``__ts``, features (query order).

        ``engine="streaming"`` runs the scan and row stage on Polars' streaming engine (for
        inputs larger than memory, together with entity-hash partitioning by the caller).
        """
        if isinstance(events, pl.DataFrame):
            events = events.lazy()
        # sort the raw events (a few columns), then widen them: sorting the prepared frame
        # (one column per accumulator) would hold two copies of it
        ev = self.prepare(events.sort(self.key, TS, SEQ)).collect(engine=engine)
        q = queries.select(
            pl.col(self.key),
            pl.col(TS).cast(I64),
            *([pl.col(ARRIVED).cast(I64)] if ARRIVED in queries.columns else []),
        ).with_row_index(QID)
        raw = self.accumulators(ev, q)
        return self.finalize(q, raw)

    def accumulators(self, ev: pl.DataFrame, q: pl.DataFrame) -> pl.DataFrame:
        ents = ev.select(pl.col(self.key).unique().sort()).with_row_index(RANK)
        # rank from the key column alone: joining the whole frame would copy every column
        ranks = ev.select(self.key).join(ents, on=self.key, how="left", maintain_order="left")
        ev = ev.with_columns(ranks[RANK])
        ev = ev.with_columns(_key(pl.col(RANK), pl.col(TS)).alias(KEY))
        q = (
            q.join(ents, on=self.key, how="left", maintain_order="left")
            .with_columns(pl.col(RANK).cast(I64).fill_null(-1))
            .sort(RANK, TS)  # sorted probes make the binary searches cache-friendly
        )
        keys = ev[KEY]
        n = ev.height
        windows = sorted(
            {None, *(a.window_us for a in self.aggs)}, key=lambda w: -1 if w is None else w
        )
        qb = {
            "hi": keys.search_sorted(_eval(q, _key(pl.col(RANK), pl.col(TS))), side="left"),
        }
        for w in windows:
            lo_t = (
                pl.lit(-_OFF, I128)
                if w is None
                else pl.max_horizontal(pl.col(TS).cast(I128) - w, pl.lit(-_OFF, I128))
            )
            qb[_lo(w)] = keys.search_sorted(_eval(q, _key(pl.col(RANK), lo_t)), side="left")
        q = q.with_columns(**{name: s.cast(I64) for name, s in qb.items()})
        q = q.with_columns(self._dirty(ev, q))

        if self.reference:
            q = q.with_columns(pl.lit(True).alias("__dirty"))
            if ARRIVED not in q.columns:
                q = q.with_columns(pl.lit(k.INT_MAX, I64).alias(ARRIVED))
        clean = q.filter(~pl.col("__dirty"))
        dirty = q.filter(pl.col("__dirty"))
        parts = [self._clean(ev, clean, n)]
        if dirty.height:
            parts.append(self._pairs(ev, dirty, windows))
        raw = pl.concat(parts, how="diagonal_relaxed").sort(QID)
        for i, agg in enumerate(self.aggs):
            if agg.kind in ("first", "last"):
                c = f"a{i}_"
                values = ev[c + "v"]
                if ev.height == 0:
                    picked = pl.Series(c + "val", [None] * raw.height, dtype=values.dtype)
                else:
                    picked = values.gather(raw[c + "idx"]).alias(c + "val")
                raw = raw.with_columns(picked)
        return raw

    def _dirty(self, ev: pl.DataFrame, q: pl.DataFrame) -> pl.Expr | pl.Series:
        """A query is dirty when an event of its entity with ts < T arrived after the query."""
        if ARRIVED not in q.columns or ev.height == 0:
            return pl.lit(False).alias("__dirty")
        by_seq = (
            ev.select(RANK, TS, SEQ)
            .sort(RANK, SEQ)
            .with_columns(
                pl.col(TS).reverse().cum_min().reverse().over(RANK).alias("__smin"),
                _key(pl.col(RANK), pl.col(SEQ)).alias("__k2"),
            )
        )
        j = by_seq["__k2"].search_sorted(_eval(q, _key(pl.col(RANK), pl.col(ARRIVED))), side="left")
        padded_rank = pl.concat([by_seq[RANK].cast(I64), pl.Series([-2], dtype=I64)])
        padded_smin = pl.concat([by_seq["__smin"], pl.Series([k.INT_MAX], dtype=I64)])
        same = padded_rank.gather(j) == q[RANK]
        smin = padded_smin.gather(j)
        return pl.Series("__dirty", (same & (smin < q[TS])).fill_null(False))

    def _clean(self, ev: pl.DataFrame, q: pl.DataFrame, n: int) -> pl.DataFrame:
        out: dict[str, pl.Series] = {QID: q[QID]}
        hi = q["hi"]
        for i, agg in enumerate(self.aggs):
            lo = q[_lo(agg.window_us)]
            c = f"a{i}_"
            kind = agg.kind
            if kind == "count_distinct":
                if agg.window_us is None:
                    first = ev.select(
                        (
                            pl.col(c + "key").is_not_null()
                            & pl.struct(RANK, c + "key").is_first_distinct()
                        ).cast(I64)
                    ).to_series()
                    out[c + "n"] = _range_sum(first, lo, hi)
                else:
                    out[c + "n"] = _distinct_count(ev, q, c + "key", agg.window_us)
                continue
            if kind in ("first", "last"):
                idx = ev.select(pl.when(pl.col(c + "inc")).then(pl.int_range(pl.len()))).to_series()
                if kind == "first":
                    nxt = idx.fill_null(strategy="backward")
                    at = (
                        nxt.gather(lo.clip(0, max(n - 1, 0)))
                        if n
                        else pl.Series([None] * q.height, dtype=I64)
                    )
                    pick = (
                        pl.select(pl.when((at >= lo) & (at < hi)).then(at)).to_series() if n else at
                    )
                else:
                    prv = idx.fill_null(strategy="forward")
                    at = (
                        prv.gather((hi - 1).clip(0, max(n - 1, 0)))
                        if n
                        else pl.Series([None] * q.height, dtype=I64)
                    )
                    pick = (
                        pl.select(pl.when((hi > 0) & (at >= lo)).then(at)).to_series() if n else at
                    )
                out[c + "idx"] = pick.cast(I64)
                continue
            for col in _sum_cols(agg):
                out[c + col] = _range_sum(ev[c + col], lo, hi)
            if kind in ("min", "max"):
                out[c + "m"] = _range_extreme(
                    ev[c + "m"], lo, hi, kind, ev.select(self._sentinel(agg)).item()
                )
        return pl.DataFrame(out)

    def _pairs(
        self,
        ev: pl.DataFrame,
        q: pl.DataFrame,
        windows: Iterable[int | None],
    ) -> pl.DataFrame:
        """Accumulators from explicit (query, event) pairs, events filtered by arrival: the
        path of queries with late events, and the naive reference of the fast kernels."""
        index = {a: i for i, a in enumerate(self.aggs)}
        result = q.select(QID)
        evi = ev.with_row_index("__i").with_columns(pl.col("__i").cast(I64))
        aggs = self.aggs
        for w in windows:
            group = [a for a in aggs if a.window_us == w]
            if not group:
                continue
            pairs = (
                q.select(
                    QID,
                    TS,
                    ARRIVED,
                    pl.int_ranges(_lo(w), "hi").alias("__i"),
                )
                .explode("__i")
                .drop_nulls("__i")
                .join(evi, on="__i", how="inner", suffix="_ev")
            )
            pairs = pairs.filter(pl.col(SEQ) < pl.col(ARRIVED))
            exprs: list[pl.Expr] = []
            for agg in group:
                c = f"a{index[agg]}_"
                if agg.kind == "count_distinct":
                    exprs.append(pl.col(c + "key").drop_nulls().n_unique().cast(I64).alias(c + "n"))
                elif agg.kind == "first":
                    exprs.append(pl.col("__i").filter(pl.col(c + "inc")).min().alias(c + "idx"))
                elif agg.kind == "last":
                    exprs.append(pl.col("__i").filter(pl.col(c + "inc")).max().alias(c + "idx"))
                else:
                    exprs += [pl.col(c + col).sum().alias(c + col) for col in _sum_cols(agg)]
                    if agg.kind in ("min", "max"):
                        m = pl.col(c + "m")
                        exprs.append((m.min() if agg.kind == "min" else m.max()).alias(c + "m"))
            acc = pairs.group_by(QID).agg(exprs)
            result = result.join(acc, on=QID, how="left")
        # queries with no events in range: empty accumulators
        fills: list[pl.Expr] = []
        for agg in aggs:
            c = f"a{index[agg]}_"
            for col in _sum_cols(agg):
                fills.append(pl.col(c + col).fill_null(0))
            if agg.kind == "count_distinct":
                fills.append(pl.col(c + "n").fill_null(0))
            if agg.kind in ("min", "max"):
                fills.append(pl.col(c + "m").fill_null(ev.select(self._sentinel(agg)).item()))
        return result.with_columns(fills) if fills else result

    # -- 5. finalization -------------------------------------------------------------------
    def finalize(self, q: pl.DataFrame, raw: pl.DataFrame) -> pl.DataFrame:
        index = {a: i for i, a in enumerate(self.aggs)}
        cols: dict[str, pl.Expr] = {}
        for agg, i in index.items():
            cols[f"__agg{i}"] = _finalize_expr(agg, f"a{i}_")
        frame = raw.with_columns(**cols)
        names: dict[str, str] = {}

        def leaf(n: ir.Node) -> pl.Expr | None:
            if isinstance(n, ir.Agg):
                return pl.col(f"__agg{index[n]}")
            if isinstance(n, ir.FeatureRef):
                return pl.col(names[n.name])
            return None

        for f in _dependency_order(self.view):
            names[f.name] = f"__f_{f.name}"
            frame = frame.with_columns(
                translate(f.expr, leaf).cast(PL_TYPES[f.expr.dtype]).alias(names[f.name])
            )
        out = q.select(QID, self.key, TS).join(frame, on=QID, how="left").sort(QID)
        return out.select(self.key, TS, *[_output(names[f.name], f) for f in self.view.features])


def _output(column: str, f: ir.Feature) -> pl.Expr:
    value = pl.col(column)
    if f.expr.dtype is DType.FLOAT:  # one NaN on the way out, as on the per-event path
        value = pl.when(value.is_nan()).then(pl.lit(math.nan, F64)).otherwise(value)
    return value.alias(f.name)


def _dependency_order(view: ir.ViewIR) -> list[ir.Feature]:
    from featurepipe.compile.python_state import _dependency_order as order

    return order(view)


def _finalize_expr(agg: ir.Agg, c: str) -> pl.Expr:
    kind = agg.kind
    n = pl.col(c + "n") if kind not in ("first", "last") else None
    if kind == "count" or kind == "count_distinct":
        assert n is not None
        out = n.cast(I64)
    elif kind in ("first", "last"):
        out = pl.col(c + "val")
    elif kind in ("sum", "mean"):
        assert n is not None
        s = pl.col(c + "s")
        if _kind_float(agg):
            base = (
                pl.when(
                    (pl.col(c + "nan") > 0) | ((pl.col(c + "pos") > 0) & (pl.col(c + "neg") > 0))
                )
                .then(float("nan"))
                .when(pl.col(c + "pos") > 0)
                .then(math.inf)
                .when(pl.col(c + "neg") > 0)
                .then(-math.inf)
                .otherwise(s.cast(F64) * k.INV_SCALE)
            )
        elif kind == "sum":
            base = pl.when((s >= k.INT_MIN) & (s <= k.INT_MAX)).then(s).otherwise(None).cast(I64)
        else:
            base = s.cast(F64)
        if kind == "mean":
            base = base / n.cast(F64)
        out = pl.when(n == 0).then(None).otherwise(base)
    elif kind in ("var", "std"):
        assert n is not None
        nf = n.cast(F64)
        s1 = pl.col(c + "s1").cast(F64) * k.INV_SCALE
        s2 = pl.col(c + "s2").cast(F64) * k.INV_SCALE
        m2 = s2 - s1 * (s1 / nf)
        m2 = pl.when(m2.is_nan() | (m2 <= 0.0)).then(0.0).otherwise(m2)
        var = (
            pl.when(n <= 1)
            .then(None)
            .when(pl.col(c + "flags") > 0)
            .then(float("nan"))
            .otherwise(m2 / (n - 1).cast(F64))
        )
        out = var if kind == "var" else var.sqrt()
    else:  # min / max
        assert n is not None
        m = pl.col(c + "m")
        if _kind_float(agg):
            out = (
                pl.when(n == 0)
                .then(None)
                .when(pl.col(c + "nan") > 0)
                .then(float("nan"))
                .otherwise(m)
            )
        else:
            out = pl.when(n == 0).then(None).otherwise(m)
    out = out.cast(PL_TYPES[agg.dtype])
    if agg.default is not None:
        out = out.fill_null(pl.lit(agg.default, PL_TYPES[agg.dtype]))
    return out


def _sum_cols(agg: ir.Agg) -> list[str]:
    kind = agg.kind
    if kind == "count":
        return ["n"]
    if kind in ("sum", "mean"):
        return ["n", "s", "pos", "neg", "nan"] if _kind_float(agg) else ["n", "s"]
    if kind in ("var", "std"):
        return ["n", "s1", "s2", "flags"]
    if kind in ("min", "max"):
        return ["n", "nan"]
    return []


def _key(rank: pl.Expr, t: pl.Expr) -> pl.Expr:
    return rank.cast(I128) * _SHIFT + (t.cast(I128) + _OFF)


def _lo(w: int | None) -> str:
    return "lo_life" if w is None else f"lo_{w}"


def _eval(df: pl.DataFrame, e: pl.Expr) -> pl.Series:
    return df.select(e.alias("__e")).to_series()


def _distinct_count(ev: pl.DataFrame, q: pl.DataFrame, key: str, window: int) -> pl.Series:
    """Distinct non-null values among an entity's events with T - w <= ts < T.

    An event is the *last* occurrence of its value before T, and inside the window, exactly
    when ts < T <= end, with end = min(ts of the value's next occurrence, ts + w). So the count
    is #(events with ts < T) - #(events with end < T): two binary searches per query.
    """
    # next occurrence of the same (entity, value): sort, then look one row ahead
    # (several times faster than a window function over ~1M small groups)
    valid = (
        ev.select(RANK, TS, key)
        .filter(pl.col(key).is_not_null())
        .sort(RANK, key, TS, maintain_order=True)
    )
    same_group = (pl.col(RANK) == pl.col(RANK).shift(-1)) & (pl.col(key) == pl.col(key).shift(-1))
    nxt = pl.when(same_group).then(pl.col(TS).shift(-1)).cast(I128)
    end = pl.min_horizontal(
        nxt.fill_null(k.INT_MAX), pl.col(TS).cast(I128) + window, pl.lit(k.INT_MAX, I128)
    )
    ends = valid.select(_key(pl.col(RANK), end).alias("__e")).to_series().sort()
    started = _range_sum(ev[key].is_not_null().cast(I64), q["lo_life"], q["hi"])
    t_key = _eval(q, _key(pl.col(RANK), pl.col(TS)))
    first_key = _eval(q, _key(pl.col(RANK), pl.lit(-_OFF, I128)))
    before = ends.search_sorted(t_key, side="left").cast(I64)
    ended = before - ends.search_sorted(first_key, side="left").cast(I64)
    return (started - ended).alias(key)


def _range_sum(col: pl.Series, lo: pl.Series, hi: pl.Series) -> pl.Series:
    prefix = pl.concat([pl.Series([0], dtype=col.dtype), col.cum_sum()])
    return prefix.gather(hi) - prefix.gather(lo)


def _range_extreme(
    col: pl.Series, lo: pl.Series, hi: pl.Series, kind: str, sentinel: Any
) -> pl.Series:
    """Range min/max over [lo, hi) with a sparse table; sentinel where the range is empty."""
    n = col.len()
    length = (hi - lo).cast(I64)
    max_len = int(length.max() or 0)  # type: ignore[arg-type]
    if n == 0 or max_len <= 0:
        return pl.Series([sentinel] * lo.len(), dtype=col.dtype)
    levels = [col]
    step = 1
    combine = pl.min_horizontal if kind == "min" else pl.max_horizontal
    while step * 2 <= max_len:
        prev = levels[-1]
        nxt = pl.select(combine(prev, prev.shift(-step, fill_value=sentinel))).to_series()
        levels.append(nxt)
        step *= 2
    flat = pl.concat(levels)
    lvl = length.clip(1).cast(F64).log(2).floor().cast(I64)
    # guard exact powers of two against log rounding: 2**lvl must be <= length < 2**(lvl+1)
    lvl = (
        pl.select(
            pl.when(pl.lit(2).pow(lvl + 1) <= length)
            .then(lvl + 1)
            .when((pl.lit(2).pow(lvl) > length) & (lvl > 0))
            .then(lvl - 1)
            .otherwise(lvl)
        )
        .to_series()
        .cast(I64)
    )
    base = lvl * n
    safe_lo = lo.cast(I64).clip(0, n - 1)
    right = (hi.cast(I64) - pl.select(pl.lit(2).pow(lvl)).to_series().cast(I64)).clip(0, n - 1)
    a = flat.gather(base + safe_lo)
    b = flat.gather(base + right)
    best = pl.select(combine(a, b)).to_series()
    return (
        pl.select(pl.when(length > 0).then(best).otherwise(pl.lit(sentinel, col.dtype)))
        .to_series()
        .alias(col.name)
    )
