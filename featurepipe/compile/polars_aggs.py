"""Batch compiler, aggregation level: every feature of a view for a frame of query points.

Input: events (entity key, ``__ts`` epoch micros, ``__seq`` arrival order, source fields) and
queries (entity key, ``__ts`` = T, optional ``__arrived``: only events with ``__seq`` below it are
visible). Output: one row per query, in query order, every feature as of T.

How (all vectorized, no per-row Python):

1. a lazy row stage evaluates every aggregation's input, ``where`` flag and the kind's prepared
   columns (fixed-point integers for float sums, canonical floats for min/max, ...), each
   distinct expression once (aggregations of one input share their flags and values);
2. events are ranked by entity key (the keys' sorted order) and sorted by (rank, ts, seq)
   under one Int64 key where the times fit (``in_order``; a sort by the key string costs
   several times more), before the row stage widens them; binary searches run on one
   integer key per (entity rank, ts): Int64 when every entity's span of times fits
   (``_EventKeys``), else Int128 ``rank * 2**64 + ts``; for each query and window a binary
   search gives the event range [lo, hi);
3. each kind builds its accumulators from the range kernels here (``Ranges``): differences of
   exact integer prefix sums (one prefix per column, shared by its windows), a sparse table
   (range min/max, in one NumPy array for numbers; a lifetime range is the entity's running
   extreme), forward/backward-filled event indices, and distinct counts from each value's next
   occurrence (two binary searches); Int64 prefix sums and binary searches run in NumPy,
   several times faster there than in Polars;
4. queries that must not see some events of their range (those that arrived after the
   query: late events) cut their range at the newest event that had arrived, then: kinds
   whose range accumulators combine (``AggKind.merge_ranges``: the counts and sums, min/max,
   first/last, first_k/last_k) run the kernels over the runs
   between the late events and merge them per query; distinct counts leave the late events
   out by binary search among each value's occurrences (``SkippingRanges``); the other
   kinds take explicit (query, event) pairs filtered by arrival (the work grows with the
   window, not with the late events);
5. each kind's finalizer (the per-event path's arithmetic, as expressions) gives the values.

What each kind computes is stated once, for both backends, in ``featurepipe.ir.aggs``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import polars as pl

from featurepipe import kernels as k
from featurepipe.compile.polars_rows import PL_TYPES, translate
from featurepipe.errors import DataError
from featurepipe.ir import nodes as ir
from featurepipe.ir.aggs import AggKind, Bucketed, Window, kind_of
from featurepipe.ir.entity_keys import with_composite_key
from featurepipe.ir.types import DType

F64, I64, I128 = pl.Float64, pl.Int64, pl.Int128
TS, SEQ, QID, ARRIVED = "__ts", "__seq", "__qid", "__arrived"
RANK, KEY, INDEX = "__rank", "__key", "__i"
QUERY_T = "__t"  # a (query, event) pair's query time (kinds that weigh events by their age)
Engine = Literal["auto", "in-memory", "streaming"]
_OFF = 2**63
_SHIFT = 2**64


class BatchProgram:
    """The batch executor of one view."""

    def __init__(
        self, view: ir.ViewIR, *, reference: bool = False, late_pairs_limit: float = 1.0
    ) -> None:
        """``reference=True`` sends every query down the exploded-pairs path: the naive
        reference the fast range kernels are tested against.

        ``late_pairs_limit``: queries with late events in a window take the (query, event)
        pairs while those number at most this many times the events (one pass over them,
        as each run kernel makes), the runs between the late events above that (0: always
        the runs, as the tests of that path ask)."""
        self.reference = reference
        self.late_pairs_limit = late_pairs_limit
        self.view = view
        self.aggs = view.aggs
        self.kinds: list[AggKind] = [kind_of(a) for a in self.aggs]
        self._merged = [
            k.merge_ranges(a, _col_expr(i)) is not None
            for i, (a, k) in enumerate(zip(self.aggs, self.kinds, strict=True))
        ]
        self.key = view.entity_key
        # prepared column -> the column of the same expression it is a copy of (``prepare``)
        self.same_as: dict[str, str] = {}

    # -- 1. row stage ----------------------------------------------------------------------
    def prepare(self, events: pl.LazyFrame) -> pl.LazyFrame:
        """Lazy plan: each aggregation's prepared columns (``a{i}_<name>``), per event."""

        def leaf(n: ir.Node) -> pl.Expr | None:
            return pl.col(n.name) if isinstance(n, ir.Field) else None

        cols: list[pl.Expr] = []
        computed: list[tuple[pl.Expr, bytes, str]] = []
        copies: list[pl.Expr] = []
        for i, (agg, kind) in enumerate(zip(self.aggs, self.kinds, strict=True)):
            inc = pl.lit(True) if agg.where is None else translate(agg.where, leaf).fill_null(False)
            v = pl.lit(True) if agg.arg is None else translate(agg.arg, leaf)
            valid = inc & v.is_not_null()
            if agg.by is not None:  # an event counts only in a (non-null) bucket
                bucket = translate(agg.by, leaf)
                valid = valid & bucket.is_not_null()
            prepared = kind.columns(agg, v, inc, valid, PL_TYPES[agg.dtype])
            if agg.by is not None:
                prepared["bucket"] = pl.when(valid).then(bucket)
            for name, expr in prepared.items():
                # aggregations of one input share most prepared columns (the valid flags,
                # the fixed-point values): each distinct expression is computed once, the
                # others are the same column under their names (no copy)
                # the serialized form as well: meta.eq takes the literals 0.0 and -0.0 for one
                plan = expr.meta.serialize()
                same = next((c for e, b, c in computed if b == plan and e.meta.eq(expr)), None)
                if same is None:
                    computed.append((expr, plan, _col(i, name)))
                    cols.append(expr.alias(_col(i, name)))
                else:
                    copies.append(pl.col(same).alias(_col(i, name)))
                    self.same_as[_col(i, name)] = same
        ranked = [pl.col(RANK)] if RANK in events.collect_schema().names() else []
        return (
            events.filter(pl.col(self.key).is_not_null())
            .select(pl.col(self.key), pl.col(TS), pl.col(SEQ), *ranked, *cols)
            .with_columns(copies)
        )

    def in_order(
        self, events: pl.LazyFrame, engine: Engine = "auto"
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The events with a key and the columns the row stage reads, in (entity, ts, seq)
        order, with their entity's rank (``RANK``); and the ranks (key, ``RANK``), the keys'
        sorted order as ``accumulators`` numbers them.

        One Int64 sort key (``_rank_then``) when every rank and time fits it (a stable
        sort keeps arrival order among ties, as ``SEQ`` does when the input is in arrival
        order): sorting by a string key and two integers costs several times more."""
        read = sorted(self.view.fields_read - {self.key, TS, SEQ})
        raw = events.filter(pl.col(self.key).is_not_null()).select(self.key, TS, SEQ, *read)
        frame, ents = _ranked(raw.collect(engine=engine), self.key)
        by = _rank_then(frame[TS], ents.height)
        if by is None:
            return frame.sort(RANK, TS, SEQ), ents
        # a sort moves the rows several times faster than a gather by the sorted order
        seq = frame[SEQ]
        in_seq = seq.null_count() == 0 and seq.is_sorted()
        ordered = frame.sort([by] if in_seq else [by, pl.col(SEQ)], maintain_order=True)
        return ordered, ents

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
        events = with_composite_key(events, self.view.entity_parts)
        # sort the raw events (a few columns), then widen them: sorting the prepared frame
        # (one column per accumulator) would hold two copies of it
        if engine == "streaming":  # the sort in the streaming plan (larger than memory)
            ev, ents = self.prepare(events.sort(self.key, TS, SEQ)).collect(engine=engine), None
        else:
            ordered, ents = self.in_order(events, engine)
            ev = self.prepare(ordered.lazy()).collect(engine=engine)
            del ordered  # its raw fields: not in ev, not read again
        q = queries.select(
            pl.col(self.key),
            pl.col(TS).cast(I64),
            *([pl.col(ARRIVED).cast(I64)] if ARRIVED in queries.columns else []),
        ).with_row_index(QID)
        raw = self.accumulators(ev, q, ents)
        return self.finalize(q, raw, self.request_columns(queries))

    def request_columns(self, queries: pl.DataFrame) -> list[pl.Series]:
        """The view's request fields (``fp.request``) from the query frame's columns of those
        names, in the IR's representation (datetimes as epoch micros), named ``__req_<name>``."""
        out = []
        for name, dtype in self.view.request_fields:
            if name not in queries.columns:
                raise DataError(
                    f"view '{self.view.name}' reads the request field '{name}' ({dtype}): the "
                    f"query frame has no column '{name}' (its columns: "
                    f"{', '.join(queries.columns)})"
                )
            col = queries[name]
            if not _request_compatible(col.dtype, dtype):
                raise DataError(
                    f"view '{self.view.name}': request field '{name}' is declared {dtype}; "
                    f"column '{name}' is {col.dtype}"
                )
            if isinstance(col.dtype, pl.Datetime):
                col = col.dt.epoch("us")
            col = col.cast(PL_TYPES[dtype])
            out.append(col.alias(f"__req_{name}"))
        return out

    def accumulators(
        self, ev: pl.DataFrame, q: pl.DataFrame, ents: pl.DataFrame | None = None
    ) -> pl.DataFrame:
        """``ents``: the ranks (key, ``RANK``) of ``ev``'s ``RANK`` column (``in_order``);
        else numbered here."""
        if ents is None or RANK not in ev.columns:
            ev, ents = _ranked(ev, self.key)
        event_key = _EventKeys(ev[TS], ents.height, q[TS])
        ev = ev.with_columns(event_key(pl.col(RANK), pl.col(TS)).alias(KEY))
        q = q.join(ents, on=self.key, how="left", maintain_order="left").with_columns(
            pl.col(RANK).cast(I64).fill_null(-1)
        )
        # sorted probes make the binary searches cache-friendly
        by_rank_time = _rank_then(q[TS], ents.height)
        q = q.sort(RANK, TS) if by_rank_time is None else q.sort(by_rank_time)
        keys = ev[KEY]
        n = ev.height
        windows = sorted({None, *(a.span for a in self.aggs)}, key=lambda s: s or (-1, -1))
        qb = {
            "hi": _search(keys, _eval(q, event_key(pl.col(RANK), pl.col(TS))), "left"),
        }
        for span in windows:
            if span is None:
                lo_t = pl.lit(-_OFF, I128)
            elif event_key.narrow:  # clipped by the key
                lo_t = _window_start(pl.col(TS), span, I64)
            else:
                lo_t = pl.max_horizontal(_window_start(pl.col(TS), span), pl.lit(-_OFF, I128))
            qb[_lo(span)] = _search(keys, _eval(q, event_key(pl.col(RANK), lo_t)), "left")
        q = q.with_columns(**qb)  # Int64 (_search)
        q = q.with_columns(self._dirty(ev, q))

        if self.reference:
            q = q.with_columns(pl.lit(True).alias("__dirty"))
            if ARRIVED not in q.columns:
                q = q.with_columns(pl.lit(k.INT_MAX, I64).alias(ARRIVED))
        clean = q.filter(~pl.col("__dirty"))
        dirty = q.filter(pl.col("__dirty"))
        parts = [self._clean(ev, clean, n)]
        if dirty.height:
            # per window: pairs while they are few (short windows), else the runs
            limit = self.late_pairs_limit * n
            many = {span: float((dirty["hi"] - dirty[_lo(span)]).sum()) > limit for span in windows}
            everything = [i for i in range(len(self.aggs)) if many[self.aggs[i].span]]
            ranged = [] if self.reference else [i for i in everything if self._merged[i]]
            skipping = [] if self.reference else [i for i in everything if self.kinds[i].skips]
            paired = [i for i in range(len(self.aggs)) if i not in ranged and i not in skipping]
            part = dirty.select(QID)
            if ranged or skipping:
                late = self._between_late(ev, dirty, ranged, skipping, event_key)
                part = part.join(late, on=QID, how="left")
            if paired:
                part = part.join(self._pairs(ev, dirty, windows, paired), on=QID, how="left")
            parts.append(part)
        # left in the parts' order: sorting every accumulator column by QID would move far
        # more data than sorting the features at the end (``finalize``)
        raw = pl.concat(parts, how="diagonal_relaxed")
        for i, (agg, kind) in enumerate(zip(self.aggs, self.kinds, strict=True)):
            resolved = kind.resolve(agg, _col_expr(i), ev, raw)
            if resolved:
                raw = raw.with_columns(s.alias(_col(i, name)) for name, s in resolved.items())
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
        j = _search(by_seq["__k2"], _eval(q, _key(pl.col(RANK), pl.col(ARRIVED))), "left")
        padded_rank = pl.concat([by_seq[RANK].cast(I64), pl.Series([-2], dtype=I64)])
        padded_smin = pl.concat([by_seq["__smin"], pl.Series([k.INT_MAX], dtype=I64)])
        same = padded_rank.gather(j) == q[RANK]
        smin = padded_smin.gather(j)
        return pl.Series("__dirty", (same & (smin < q[TS])).fill_null(False))

    def _clean(self, ev: pl.DataFrame, q: pl.DataFrame, n: int) -> pl.DataFrame:
        kernels = Ranges(ev, q, self.same_as)
        out: dict[str, pl.Series] = {QID: q[QID]}
        for i, (agg, kind) in enumerate(zip(self.aggs, self.kinds, strict=True)):
            for name, series in kind.over_range(agg, _event_columns(ev, i), kernels).items():
                out[_col(i, name)] = series.alias(_col(i, name))
        return pl.DataFrame(out)

    def _between_late(
        self,
        ev: pl.DataFrame,
        q: pl.DataFrame,
        aggs: list[int],
        skipping: list[int],
        event_key: _EventKeys,
    ) -> pl.DataFrame:
        """Accumulators of ``aggs`` for queries that must not see some events of their range
        (those that arrived after the query: ``__seq >= __arrived``), from the range kernels
        over the runs of events between those, merged per query (``AggKind.merge_ranges``);
        of ``skipping`` (``AggKind.skips``) from kernels told which events to leave out
        (``SkippingRanges``).

        A query sees nothing newer than the newest event its entity had when it arrived
        (``__upto``, before the query time or not), so its range is cut there. What is left
        to skip are events timestamped at or before an event that arrived earlier: late
        events, usually few, where the pairs path would pair the query with every event of
        its window (a lifetime window: all of the entity's earlier events)."""
        evi = ev.select(RANK, TS, SEQ).with_row_index(INDEX)
        evi = evi.with_columns(pl.col(INDEX).cast(I64), pl.col(RANK).cast(I64))
        by_seq = evi.sort(RANK, SEQ).with_columns(
            pl.col(TS).cum_max().over(RANK).alias("__newest"),
            pl.col(TS).cum_max().shift(1).over(RANK).alias("__before"),
        )
        # the newest ts among the events of the query's entity that arrived before it
        j = _eval(by_seq, _key(pl.col(RANK), pl.col(SEQ))).search_sorted(
            _eval(q, _key(pl.col(RANK), pl.col(ARRIVED))), "left"
        )
        ranks = pl.concat([pl.Series([-2], dtype=I64), by_seq[RANK]])
        newest = pl.concat([pl.Series([None], dtype=I64), by_seq["__newest"].cast(I64)])
        upto = pl.select(pl.when(ranks.gather(j) == q[RANK]).then(newest.gather(j))).to_series()
        upto_key = event_key(pl.col(RANK), pl.col("__upto").fill_null(0))
        cut = _search(ev[KEY], _eval(q.with_columns(upto.alias("__upto")), upto_key), "right")
        q = q.with_columns(
            pl.when(upto.is_null())  # nothing had arrived: an empty range
            .then(pl.col(_lo(None)))
            .otherwise(pl.min_horizontal(pl.col("hi"), cut.cast(I64)))
            .alias("__cut")
        )
        # the late events inside [widest lo, cut) of each query, found by binary search among
        # the late events in row order: never more than the events of its windows
        late = by_seq.filter(pl.col(TS) <= pl.col("__before")).select(SEQ, INDEX).sort(INDEX)
        widest = pl.min_horizontal(*(_lo(self.aggs[i].span) for i in [*aggs, *skipping]))
        first = _search(late[INDEX], _eval(q, widest), "left")
        end = _search(late[INDEX], q["__cut"], "left")
        at = (
            pl.DataFrame({QID: q[QID], ARRIVED: q[ARRIVED], "__a": first, "__b": end})
            .select(
                QID, ARRIVED, pl.int_ranges("__a", pl.max_horizontal("__a", "__b")).alias("__l")
            )
            .explode("__l")
            .drop_nulls("__l")
        )
        found = late.gather(at["__l"])
        skipped = (
            at.select(QID, ARRIVED)
            .with_columns(found[SEQ], found[INDEX])
            .filter(pl.col(SEQ) >= pl.col(ARRIVED))
            .select(QID, INDEX)
        )
        in_window = {
            span: skipped.join(q.select(QID, _lo(span)), on=QID, how="inner")
            .filter(pl.col(INDEX) >= pl.col(_lo(span)))
            .select(QID, INDEX)
            for span in {self.aggs[i].span for i in [*aggs, *skipping]}
        }
        result = q.select(QID)
        for span in sorted({self.aggs[i].span for i in aggs}, key=lambda s: s or (-1, -1)):
            lo = _lo(span)
            holes = in_window[span].sort(QID, INDEX)
            # runs: [lo, h1), [h1 + 1, h2), ..., [hk + 1, cut) (empty where the cut is below lo)
            inner = holes.join(q.select(QID, lo), on=QID, how="left", maintain_order="left").select(
                QID,
                pl.coalesce(pl.col(INDEX).shift(1).over(QID) + 1, pl.col(lo)).alias(lo),
                pl.col(INDEX).alias("hi"),
            )
            last = holes.group_by(QID).agg(pl.col(INDEX).max().alias("__last"))
            start = pl.coalesce(pl.col("__last") + 1, pl.col(lo))
            tail = (
                q.select(QID, lo, "__cut")
                .join(last, on=QID, how="left")
                .select(QID, start.alias(lo), pl.max_horizontal(start, "__cut").alias("hi"))
            )
            runs = pl.concat([inner, tail.cast(inner.schema)])
            kernels = Ranges(ev, runs, self.same_as)
            group = [i for i in aggs if self.aggs[i].span == span]
            accs: dict[str, pl.Series] = {QID: runs[QID]}
            merge: list[pl.Expr] = []
            for i in group:
                columns = _event_columns(ev, i)
                for name, series in (
                    self.kinds[i].over_range(self.aggs[i], columns, kernels).items()
                ):
                    accs[_col(i, name)] = series.alias(_col(i, name))
                merged = self.kinds[i].merge_ranges(self.aggs[i], _col_expr(i))
                assert merged is not None
                merge += [expr.alias(_col(i, name)) for name, expr in merged.items()]
            per_query = pl.DataFrame(accs).group_by(QID).agg(merge)
            result = result.join(per_query, on=QID, how="left")
        rows = q.with_row_index("__q").select(QID, pl.col("__q").cast(I64))
        for span in sorted({self.aggs[i].span for i in skipping}, key=lambda s: s or (-1, -1)):
            lo = _lo(span)
            # everything from the cut to T arrived after the query; before it, the late events
            after_cut = q.select(
                QID, pl.int_ranges(pl.max_horizontal(lo, "__cut"), "hi", dtype=I64).alias(INDEX)
            )
            left_out = pl.concat([in_window[span], after_cut.explode(INDEX).drop_nulls(INDEX)])
            skipper = SkippingRanges(ev, q, left_out.join(rows, on=QID).select("__q", INDEX))
            accs = {QID: q[QID]}
            for i in skipping:
                if self.aggs[i].span != span:
                    continue
                columns = _event_columns(ev, i)
                for name, series in (
                    self.kinds[i].over_range(self.aggs[i], columns, skipper).items()
                ):
                    accs[_col(i, name)] = series.alias(_col(i, name))
            result = result.join(pl.DataFrame(accs), on=QID, how="left")
        return result

    def _pairs(
        self,
        ev: pl.DataFrame,
        q: pl.DataFrame,
        windows: Iterable[ir.Span],
        aggs: list[int],
    ) -> pl.DataFrame:
        """Accumulators of ``aggs`` from explicit (query, event) pairs, events filtered by
        arrival: the path of queries with late events for kinds without ``merge_ranges``,
        and the naive reference of the range kernels."""
        result = q.select(QID)
        evi = ev.with_row_index(INDEX).with_columns(pl.col(INDEX).cast(I64))
        for span in windows:
            group = [i for i in aggs if self.aggs[i].span == span]
            if not group:
                continue
            pairs = (
                q.select(
                    QID,
                    TS,
                    ARRIVED,
                    pl.col(TS).alias(QUERY_T),
                    pl.int_ranges(_lo(span), "hi").alias(INDEX),
                )
                .explode(INDEX)
                .drop_nulls(INDEX)
                .join(evi, on=INDEX, how="inner", suffix="_ev")
                .filter(pl.col(SEQ) < pl.col(ARRIVED))
            )
            bucketed = [i for i in group if isinstance(self.kinds[i], Bucketed)]
            exprs = [
                expr.alias(_col(i, name))
                for i in group
                if i not in bucketed
                for name, expr in self.kinds[i]
                .over_pairs(self.aggs[i], _col_expr(i), pl.col(INDEX))
                .items()
            ]
            if exprs:
                result = result.join(pairs.group_by(QID).agg(exprs), on=QID, how="left")
            for i in bucketed:
                kind = self.kinds[i]
                assert isinstance(kind, Bucketed)
                aggregations, value = kind.parts(self.aggs[i], _col_expr(i))
                maps = bucket_maps(pairs, QID, _col(i, "bucket"), aggregations, value)
                result = result.join(maps.rename({"map": _col(i, "map")}), on=QID, how="left")
        # queries with no events in range: empty accumulators
        fills = [
            fill for i in aggs for fill in self.kinds[i].empty_pairs(self.aggs[i], _col_expr(i))
        ]
        return result.with_columns(fills) if fills else result

    # -- 5. finalization -------------------------------------------------------------------
    def finalize(
        self, q: pl.DataFrame, raw: pl.DataFrame, request: list[pl.Series] | None = None
    ) -> pl.DataFrame:
        index = {a: i for i, a in enumerate(self.aggs)}
        cols: dict[str, pl.Expr] = {}
        for i, (agg, kind) in enumerate(zip(self.aggs, self.kinds, strict=True)):
            out = kind.finalize_expr(agg, _col_expr(i)).cast(PL_TYPES[agg.dtype])
            if agg.default is not None:
                out = out.fill_null(pl.lit(agg.default, PL_TYPES[agg.dtype]))
            cols[f"__agg{i}"] = out
        frame = raw.with_columns(**cols)
        # raw holds every query once, in no particular order: the query frame's columns are
        # taken in raw's order (``q`` is in QID order, QID its row number)
        order = raw[QID]
        if request:
            frame = frame.with_columns(s.gather(order) for s in request)
        if self.view.reads_query_time:
            frame = frame.with_columns(q[TS].gather(order).alias("__query_time"))
        names: dict[str, str] = {}

        def leaf(n: ir.Node) -> pl.Expr | None:
            if isinstance(n, ir.Agg):
                return pl.col(f"__agg{index[n]}")
            if isinstance(n, ir.FeatureRef):
                return pl.col(names[n.name])
            if isinstance(n, ir.Request):
                return pl.col(f"__req_{n.name}")
            if isinstance(n, ir.QueryTime):
                return pl.col("__query_time")
            return None

        for f in self.view.dependency_order():
            names[f.name] = f"__f_{f.name}"
            frame = frame.with_columns(
                translate(f.expr, leaf).cast(PL_TYPES[f.expr.dtype]).alias(names[f.name])
            )
        outputs = [_output(names[f.name], f) for f in self.view.features]
        values = frame.select(QID, *outputs).sort(QID)
        return pl.concat([q.select(self.key, TS), values.drop(QID)], how="horizontal")


def _request_compatible(have: pl.DataType, want: DType) -> bool:
    """Whether a column of type ``have`` holds values of a request field declared ``want``:
    the same kind, an integer for a float, epoch micros (Int64) or a Datetime for a datetime,
    or all nulls."""
    if have == pl.Null:
        return True
    if want is DType.FLOAT:
        return have.is_float() or have.is_integer()
    if want is DType.INT:
        return have.is_integer()
    if want is DType.STR:
        return have == pl.String
    if want is DType.BOOL:
        return have == pl.Boolean
    return isinstance(have, pl.Datetime) or have == pl.Int64


def _output(column: str, f: ir.Feature) -> pl.Expr:
    value = pl.col(column)
    if f.expr.dtype is DType.FLOAT:  # one NaN on the way out, as on the per-event path
        value = pl.when(value.is_nan()).then(pl.lit(math.nan, F64)).otherwise(value)
    elif f.expr.dtype is DType.LIST_FLOAT:
        e = pl.element()
        value = value.list.eval(pl.when(e.is_nan()).then(pl.lit(math.nan, F64)).otherwise(e))
    elif f.expr.dtype.is_map and f.expr.dtype.map_value is DType.FLOAT:
        v = pl.field("value")
        one_nan = pl.when(v.is_nan()).then(pl.lit(math.nan, F64)).otherwise(v)
        value = value.list.eval(pl.element().struct.with_fields(one_nan.alias("value")))
    return value.alias(f.name)


def _col(i: int, name: str) -> str:
    """Column of accumulator/prepared field ``name`` of aggregation ``i``."""
    return f"a{i}_{name}"


def _col_expr(i: int) -> Callable[[str], pl.Expr]:
    return lambda name: pl.col(_col(i, name))


class Ranges:
    """The range kernels (``ir.aggs.RangeKernels``) over sorted events ``events`` for the
    queries ``q`` (with their ``hi`` and per-window ``lo`` bounds)."""

    def __init__(
        self, events: pl.DataFrame, q: pl.DataFrame, same_as: dict[str, str] | None = None
    ) -> None:
        self.events = events
        self.q = q
        self.n = events.height
        self.same_as = same_as or {}
        # prefix sums of the columns several aggregations read (a column and its copies), by
        # column name, with the column they were computed from (a name alone could be a
        # derived series') and their values at every query's ``hi``; each dropped after its
        # last reader, so that only shared columns are held
        self._readers: dict[str, int] = {}
        for name in self.same_as.values():
            self._readers[name] = self._readers.get(name, 1) + 1
        self._prefixes: dict[str, tuple[pl.Series, pl.Series, pl.Series]] = {}

    def lo(self, window: Window) -> pl.Series:
        if window is not None and not isinstance(window, tuple):
            # a bare window length would lose the hop: kinds pass ``agg.span``
            raise TypeError(f"range kernels take an aggregation's span (agg.span), got {window!r}")
        return self.q[_lo(window)]

    def range_sum(self, col: pl.Series, window: Window) -> pl.Series:
        """Sums of ``col`` over each query's [lo, hi): a difference of exact prefix sums,
        computed once per column (several aggregations and windows read the same one)."""
        lo, hi = self.lo(window), self.q["hi"]
        name = self.same_as.get(col.name, col.name)
        cached = self._prefixes.get(name)
        if cached is None or not cached[0].equals(col):
            if col.null_count() == 0 and not (col != 0).any():  # all 0 (no infinite input)
                return pl.repeat(0, lo.len(), dtype=col.dtype, eager=True).alias(col.name)
            if name not in self._readers:  # read once: nothing to keep
                return _range_sum(col, lo, hi).alias(col.name)
            prefix = _prefix(col)
            cached = (col, prefix, prefix.gather(hi))
            self._prefixes[name] = cached
        _, prefix, at_hi = cached
        if name in self._readers:
            self._readers[name] -= 1
            if self._readers[name] <= 0:
                del self._prefixes[name], self._readers[name]
        return (at_hi - prefix.gather(lo)).alias(col.name)

    def range_extreme(
        self, col: pl.Series, window: Window, smallest: bool, sentinel: Any
    ) -> pl.Series:
        lo, hi = self.lo(window), self.q["hi"]
        if window is None and self.n and RANK in self.events.columns:
            running = _from_entity_start(self.events[RANK], col, lo, hi, smallest, sentinel)
            if running is not None:
                return running
        return _range_extreme(col, lo, hi, smallest, sentinel)

    def first_marked(self, mark: pl.Series, window: Window) -> pl.Series:
        """Row of the first marked event in [lo, hi), or null."""
        lo, hi, n = self.lo(window), self.q["hi"], self.n
        if n == 0:
            return pl.Series([None] * self.q.height, dtype=I64)
        nxt = _marked_rows(mark).fill_null(strategy="backward")
        at = nxt.gather(lo.clip(0, n - 1))
        return pl.select(pl.when((at >= lo) & (at < hi)).then(at)).to_series().cast(I64)

    def marked_values(
        self, mark: pl.Series, values: pl.Series, window: Window, k: int, newest: bool
    ) -> pl.Series:
        """The ``values`` of the k last (``newest``: newest first) or k first marked events in
        [lo, hi), as a list per query (empty when none). The marks before row i are counted
        once (``before``), so the j-th marked event of a range is found by its rank among the
        marked rows: O(events + queries * k)."""
        lo, hi, nq = self.lo(window), self.q["hi"], self.q.height
        before = pl.concat([pl.Series([0], dtype=I64), mark.cast(I64).cum_sum()])
        marked = mark.arg_true().cast(I64)
        a, b = before.gather(lo), before.gather(hi)  # ranks [a, b) are marked rows in range
        if newest:
            start, stop, step = b - 1, pl.select(pl.max_horizontal(a, b - k)).to_series() - 1, -1
        else:
            start, stop, step = a, pl.select(pl.min_horizontal(b, a + k)).to_series(), 1
        ranks = (
            pl.DataFrame({"__q": pl.int_range(nq, eager=True, dtype=I64), "s": start, "e": stop})
            .select("__q", pl.int_ranges("s", "e", step=step, dtype=I64).alias("r"))
            .explode("r")
            .drop_nulls("r")
        )
        picked = pl.DataFrame({"__q": ranks["__q"], "v": values.gather(marked.gather(ranks["r"]))})
        lists = picked.group_by("__q", maintain_order=True).agg("v")
        return per_query(lists, nq)["v"].fill_null(pl.lit([], pl.List(values.dtype)))

    def last_marked(self, mark: pl.Series, window: Window) -> pl.Series:
        """Row of the last marked event in [lo, hi), or null."""
        lo, hi, n = self.lo(window), self.q["hi"], self.n
        if n == 0:
            return pl.Series([None] * self.q.height, dtype=I64)
        prv = _marked_rows(mark).fill_null(strategy="forward")
        at = prv.gather((hi - 1).clip(0, n - 1))
        return pl.select(pl.when((hi > 0) & (at >= lo)).then(at)).to_series().cast(I64)

    def bucket_sums(
        self, window: Window, bucket: pl.Series, fields: dict[str, pl.Series], count: str
    ) -> pl.DataFrame | None:
        """(``__q``, ``bucket``, the sums of ``fields``) for every query and every bucket with
        a visible event (``fields[count]`` > 0): sums over the events of [lo, hi) whose
        ``bucket`` is that value (null: no bucket). Per (entity, bucket) group the events are
        contiguous in (group, row) order, so each sum is a difference of prefix sums found by
        binary search: O(events + queries x the entity's buckets), whatever the window. None
        when that is more work than the (query, event) pairs of the window (many distinct
        values, short windows): the caller takes the pairs."""
        ev = pl.DataFrame(
            {RANK: self.events[RANK].cast(I64), "bucket": bucket, **fields}
        ).with_row_index("__row")
        ev = ev.with_columns(pl.col("__row").cast(I64)).filter(pl.col("bucket").is_not_null())
        groups = ev.select(RANK, "bucket").unique().sort(RANK, "bucket").with_row_index("__g")
        ev = ev.join(groups, on=[RANK, "bucket"], how="left").sort("__g", "__row")
        key = _group_key(ev["__g"], ev["__row"])
        q = pl.DataFrame(
            {
                "__q": pl.int_range(self.q.height, eager=True, dtype=I64),
                RANK: self.q[RANK].cast(I64),
                "__lo": self.lo(window).cast(I64),
                "__hi": self.q["hi"].cast(I64),
            }
        )
        per_entity = groups.group_by(RANK).len()
        work = q.join(per_entity, on=RANK, how="inner")["len"].sum()
        if work > (q["__hi"] - q["__lo"]).sum():
            return None
        pairs = q.join(groups, on=RANK, how="inner").sort("__q", "bucket")
        hi = _search(key, _group_key(pairs["__g"], pairs["__hi"]), "left")
        lo = _search(key, _group_key(pairs["__g"], pairs["__lo"]), "left")
        out = pairs.select("__q", "bucket").with_columns(
            _range_sum(ev[name], lo, hi).alias(name) for name in fields
        )
        return out.filter(pl.col(count) > 0)

    def maps(self, frame: pl.DataFrame, value: pl.Expr) -> pl.Series:
        return maps_of(frame, self.q.height, value)

    def bucketed(
        self, window: Window, bucket: str, aggregations: dict[str, pl.Expr], value: pl.Expr
    ) -> pl.Series:
        maps = bucket_maps(self._pairs(window), "__q", bucket, aggregations, value)
        return per_query(maps, self.q.height)["map"]

    def _pairs(self, window: Window) -> pl.DataFrame:
        """Every (query ``__q``, visible event) pair, with the event's columns."""
        q = self.q
        pairs = (
            pl.DataFrame({"__q": pl.int_range(q.height, eager=True, dtype=I64)})
            .with_columns(
                pl.int_ranges(self.lo(window), q["hi"]).alias(INDEX), q[TS].alias(QUERY_T)
            )
            .explode(INDEX)
            .drop_nulls(INDEX)
            .with_columns(pl.col(INDEX).cast(I64))
        )
        events = self.events.with_row_index(INDEX).with_columns(pl.col(INDEX).cast(I64))
        return pairs.join(events, on=INDEX, how="left")

    def by_pairs(self, window: Window, aggregations: dict[str, pl.Expr]) -> dict[str, pl.Series]:
        grouped = self._pairs(window).group_by("__q").agg(**aggregations)
        aligned = per_query(grouped, self.q.height)
        return {name: aligned[name] for name in aggregations}

    def distinct_count(self, key: str, window: Window) -> pl.Series:
        """Distinct non-null values of column ``key`` among each query's visible events."""
        ev = self.events
        if window is None:
            first = ev.select(
                (pl.col(key).is_not_null() & pl.struct(RANK, key).is_first_distinct()).cast(I64)
            ).to_series()
            return self.range_sum(first, None)
        return _distinct_count(ev, self.q, key, window)


def bucket_maps(
    pairs: pl.DataFrame, query: str, bucket: str, aggregations: dict[str, pl.Expr], value: pl.Expr
) -> pl.DataFrame:
    """(``query``, ``map``): per query, over its pairs whose ``bucket`` is not null, the
    aggregations per (query, bucket), then ``value`` from them, as a list of {key, value}
    ordered by key (Polars' order: numbers, strings by code point, false before true)."""
    return (
        pairs.filter(pl.col(bucket).is_not_null())
        .group_by(query, bucket)
        .agg(**aggregations)
        .sort(query, bucket)
        .group_by(query, maintain_order=True)
        .agg(pl.struct(pl.col(bucket).alias("key"), value.alias("value")).alias("map"))
    )


def _group_key(group: pl.Series, row: pl.Series) -> pl.Series:
    """(group, row) as one sortable Int128: groups apart, rows in order within a group."""
    frame = pl.DataFrame({"g": group, "r": row})
    return _eval(frame, pl.col("g").cast(I128) * _SHIFT + pl.col("r").cast(I128))


def maps_of(frame: pl.DataFrame, queries: int, value: pl.Expr) -> pl.Series:
    """Per query ``__q`` of ``frame`` (rows ordered by query, then bucket), the list of
    {key: bucket, value} entries; null for a query without rows."""
    grouped = frame.group_by("__q", maintain_order=True).agg(
        pl.struct(pl.col("bucket").alias("key"), value.alias("value")).alias("map")
    )
    return per_query(grouped, queries)["map"]


def per_query(grouped: pl.DataFrame, queries: int) -> pl.DataFrame:
    """``grouped`` (one row per query ``__q`` that has any) as one row per query, in query
    order; nulls for the others."""
    return pl.DataFrame({"__q": pl.int_range(queries, eager=True, dtype=I64)}).join(
        grouped, on="__q", how="left", maintain_order="left"
    )


class SkippingRanges(Ranges):
    """Range kernels that leave out given events of each query's range: ``skipped`` holds
    (``__q``: the query's row, ``__i``: the event's row), each within that query's range.
    Only ``distinct_count`` is offered (the kinds with ``AggKind.skips``); the others raise."""

    def __init__(self, events: pl.DataFrame, q: pl.DataFrame, skipped: pl.DataFrame) -> None:
        super().__init__(events, q)
        self.skipped = skipped

    def distinct_count(self, key: str, window: Window) -> pl.Series:
        """The distinct count of the whole range, less the values whose every occurrence in
        the range is left out (counted by binary search among each value's occurrences)."""
        whole = Ranges(self.events, self.q).distinct_count(key, window)
        if self.skipped.height == 0:
            return whole
        occurrences = (
            self.events.select(pl.col(RANK).cast(I64), key)
            .with_row_index(INDEX)
            .with_columns(pl.col(INDEX).cast(I64))
            .filter(pl.col(key).is_not_null())
            .sort(RANK, key, INDEX)
        )
        # one id per (entity, value); NaN equals NaN here, as in the whole range's count
        new_value = (pl.col(RANK) != pl.col(RANK).shift(1)) | (pl.col(key) != pl.col(key).shift(1))
        occurrences = occurrences.with_columns(
            new_value.fill_null(True).cum_sum().cast(I64).alias("__v")
        )
        at = occurrences.select(pl.col("__v").cast(I128) * _SHIFT + pl.col(INDEX)).to_series()
        bounds = pl.DataFrame(
            {
                "__q": pl.int_range(self.q.height, eager=True, dtype=I64),
                "__lo": self.lo(window).cast(I64),
                "__hi": self.q["hi"].cast(I64),
            }
        )
        per_value = (
            self.skipped.join(occurrences.select(INDEX, "__v"), on=INDEX, how="inner")
            .group_by("__q", "__v")
            .len("__left_out")
            .join(bounds, on="__q", how="left")
        )
        base = pl.col("__v").cast(I128) * _SHIFT
        in_range = _search(at, _eval(per_value, base + pl.col("__hi")), "left") - _search(
            at, _eval(per_value, base + pl.col("__lo")), "left"
        )
        gone = (
            per_value.filter(in_range == per_value["__left_out"].cast(I64))
            .group_by("__q")
            .len("__gone")
        )
        removed = per_query(gone, self.q.height)["__gone"].fill_null(0).cast(I64)
        return (whole.cast(I64) - removed).alias(whole.name)


def _refuse(name: str) -> Callable[..., Any]:
    def kernel(self: SkippingRanges, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{name} does not leave out events (SkippingRanges)")

    return kernel


for _name in ("range_sum", "range_extreme", "first_marked", "last_marked", "marked_values"):
    setattr(SkippingRanges, _name, _refuse(_name))
for _name in ("bucket_sums", "bucketed", "by_pairs"):
    setattr(SkippingRanges, _name, _refuse(_name))


def _event_columns(ev: pl.DataFrame, i: int) -> Callable[[str], pl.Series]:
    """Aggregation ``i``'s prepared columns of the sorted events, by field name."""

    def col(name: str) -> pl.Series:
        return ev[_col(i, name)]

    return col


def _marked_rows(mark: pl.Series) -> pl.Series:
    """Row number where ``mark`` is true, else null."""
    frame = mark.alias("mark").to_frame()
    return frame.select(pl.when(pl.col("mark")).then(pl.int_range(pl.len()))).to_series()


def _key(rank: pl.Expr, t: pl.Expr) -> pl.Expr:
    return rank.cast(I128) * _SHIFT + (t.cast(I128) + _OFF)


class _EventKeys:
    """(entity rank, time) as one integer ordered as the events are, (rank, ts): binary
    searches among the events find a time within an entity. Int64 when every entity's span
    of event times fits (times outside it are clipped to just below or above it, which
    finds the same rows), else Int128 (``_key``); Int128 arithmetic costs several times
    more."""

    def __init__(self, ts: pl.Series, ranks: int, query_ts: pl.Series) -> None:
        first, last = _int_bounds(ts)
        q_first, q_last = _int_bounds(query_ts)
        integers = ts.dtype.is_integer() and query_ts.dtype.is_integer()
        self.below = first - 1  # every event's offset is at least 1
        self.width = last - first + 3  # offsets 0 .. width - 1: below, events, above
        self.narrow = (
            integers
            and (ranks + 1) * self.width < 2**62
            and min(first, q_first) > -(2**61)
            and max(last, q_last) < 2**61
        )

    def __call__(self, rank: pl.Expr, t: pl.Expr) -> pl.Expr:
        if not self.narrow:
            return _key(rank, t)
        offset = t.clip(self.below, self.below + self.width - 1) - self.below
        return rank.cast(I64) * self.width + offset.cast(I64)


def _ranked(frame: pl.DataFrame, key: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``frame`` (no null ``key``) with its entity's rank as ``RANK``, and the ranks (``RANK``,
    key): the keys numbered in their sorted order."""
    ents = frame.select(pl.col(key).unique().sort()).with_row_index(RANK)
    # rank from the key column alone: joining the whole frame would copy every column
    rank = frame.select(key).join(ents, on=key, how="left", maintain_order="left")[RANK]
    return frame.with_columns(rank), ents


def _rank_then(values: pl.Series, ranks: int) -> pl.Expr | None:
    """(``RANK``, ``values``) as one Int64 in the same order, ranks from -1 (unknown entity)
    to ``ranks - 1``, when the integers ``values`` fit: one integer key sorts several times
    faster than two, and than a string key. None when they do not."""
    first, last = _int_bounds(values)
    width = last - first + 1
    if not (values.dtype.is_integer() and values.null_count() == 0):
        return None
    if (ranks + 1) * width >= 2**62 or not -(2**62) < first <= last < 2**62:
        return None
    return (pl.col(RANK).cast(I64) + 1) * width + (pl.col(values.name).cast(I64) - first)


def sort_by_entity(frame: pl.DataFrame, key: str, then: str) -> pl.DataFrame:
    """``frame`` (no null ``key``) sorted by (``key``, ``then``) as Polars sorts them, the
    entity keys ranked first and the rows sorted under one Int64 key where the integers
    ``then`` fit (``_rank_then``); ties keep their order."""
    ranked, ents = _ranked(frame, key)
    by = _rank_then(ranked[then], ents.height)
    if by is None:
        return frame.sort(key, then, maintain_order=True)
    return ranked.sort(by, maintain_order=True).drop(RANK)


def _int_bounds(col: pl.Series) -> tuple[int, int]:
    """Smallest and largest value of an integer column; (0, 0) when it is empty or null."""
    first, last = col.min(), col.max()
    return (first, last) if isinstance(first, int) and isinstance(last, int) else (0, 0)


def _lo(span: ir.Span) -> str:
    return "lo_life" if span is None else f"lo_{span[0]}_{span[1]}"


def _window_start(t: pl.Expr, span: tuple[int, int], dtype: type[pl.DataType] = I128) -> pl.Expr:
    """``kernels.window_start`` in Int128, or in Int64 where the caller knows the times
    and spans cannot overflow it (Polars' integer // floors, as Python's does)."""
    w, h = span
    if dtype is I64 and (w >= 2**61 or h >= 2**61):
        dtype = I128
    tt = t.cast(dtype)
    return tt - w if h == 1 else tt // h * h - w


def _last_visible(ts: pl.Expr, span: tuple[int, int], dtype: type[pl.DataType] = I128) -> pl.Expr:
    """``kernels.last_visible`` in Int128, or in Int64 where the caller knows it cannot
    overflow."""
    w, h = span
    tt = ts.cast(dtype)
    return tt + w if h == 1 else ((tt + w) // h + 1) * h - 1


def _search(keys: pl.Series, probes: pl.Series, side: Literal["left", "right"]) -> pl.Series:
    """``keys.search_sorted(probes, side)`` (``keys`` sorted ascending), as Int64: by NumPy
    for Int64 without nulls, about 3x faster than Polars' on sorted probes of 1M rows."""
    if keys.dtype == I64 and probes.dtype == I64 and not keys.null_count() + probes.null_count():
        found = np.searchsorted(keys.to_numpy(), probes.to_numpy(), side=side)
        return pl.Series(found, dtype=I64)
    return keys.search_sorted(probes, side=side).cast(I64)


def _eval(df: pl.DataFrame, e: pl.Expr) -> pl.Series:
    return df.select(e.alias("__e")).to_series()


def _distinct_count(
    ev: pl.DataFrame, q: pl.DataFrame, key: str, window: tuple[int, int]
) -> pl.Series:
    """Distinct non-null values among an entity's events with window_start(T) <= ts < T.

    An event is the *last* occurrence of its value before T, and inside the window, exactly
    when ts < T <= end, with end = min(ts of the value's next occurrence, last_visible(ts)),
    ts + w for a sliding window (``kernels.last_visible``). So the count
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
    started = _range_sum(ev[key].is_not_null().cast(I64), q["lo_life"], q["hi"])
    packed = _EndKeys(valid[TS], ev[RANK], q[TS], window)
    if packed.narrow:
        # (rank, time) in one Int64: a never-ending value ends above every query time
        nxt = pl.when(same_group).then(pl.col(TS).shift(-1)).fill_null(packed.top)
        end = pl.min_horizontal(nxt, _last_visible(pl.col(TS), window, I64))
        ends = valid.select(packed(pl.col(RANK), end).alias("__e")).to_series().sort()
        t_key = _eval(q, packed(pl.col(RANK), pl.col(TS)))
        first_key = _eval(q, packed(pl.col(RANK), pl.lit(packed.low, I64)))
    else:
        nxt = pl.when(same_group).then(pl.col(TS).shift(-1)).cast(I128)
        end = pl.min_horizontal(
            nxt.fill_null(k.INT_MAX), _last_visible(pl.col(TS), window), pl.lit(k.INT_MAX, I128)
        )
        ends = valid.select(_key(pl.col(RANK), end).alias("__e")).to_series().sort()
        t_key = _eval(q, _key(pl.col(RANK), pl.col(TS)))
        first_key = _eval(q, _key(pl.col(RANK), pl.lit(-_OFF, I128)))
    before = _search(ends, t_key, "left")
    ended = before - _search(ends, first_key, "left")
    return (started - ended).alias(key)


class _EndKeys:
    """(entity rank, time) as one Int64, rank * width + (time - low), for the window ends of
    ``_distinct_count``: usable when [low, top] holds every event time, every end
    (at most ts + w + h - 1, ``kernels.last_visible``) and every query time, and the ranks
    times the width fit; else Int128 (``_key``), several times slower."""

    def __init__(
        self, ts: pl.Series, ranks: pl.Series, query_ts: pl.Series, window: tuple[int, int]
    ) -> None:
        first, last = _int_bounds(ts)
        q_first, q_last = _int_bounds(query_ts)
        w, h = window
        self.low = min(first, q_first) - 1
        self.top = max(last + w + h, q_last) + 1
        self.width = self.top - self.low + 1
        top_rank = ranks.max()
        self.narrow = (
            ts.dtype.is_integer()
            and query_ts.dtype.is_integer()
            and ts.null_count() == 0
            and query_ts.null_count() == 0
            and isinstance(top_rank, int)
            and (top_rank + 2) * self.width < 2**62
            and self.low > -(2**61)
            and self.top < 2**61
        )

    def __call__(self, rank: pl.Expr, t: pl.Expr) -> pl.Expr:
        return rank.cast(I64) * self.width + (t.cast(I64) - self.low)


def _range_sum(col: pl.Series, lo: pl.Series, hi: pl.Series) -> pl.Series:
    prefix = _prefix(col)
    return prefix.gather(hi) - prefix.gather(lo)


def _prefix(col: pl.Series) -> pl.Series:
    """0, then the running sums of ``col``: sums over [lo, hi) are prefix[hi] - prefix[lo].
    Int64 without nulls by NumPy, several times faster than Polars' cum_sum (both wrap
    alike on overflow, which the Int64 columns, counts, cannot reach)."""
    if col.dtype == I64 and col.null_count() == 0:
        out = np.zeros(col.len() + 1, dtype=np.int64)
        np.cumsum(col.to_numpy(), out=out[1:])
        return pl.Series(col.name, out)
    return pl.concat([pl.Series([0], dtype=col.dtype), col.cum_sum()])


def _from_entity_start(
    rank: pl.Series, col: pl.Series, lo: pl.Series, hi: pl.Series, smallest: bool, sentinel: Any
) -> pl.Series | None:
    """Range min/max where every non-empty range starts at its entity's first event (a
    lifetime window): the entity's running extreme at ``hi - 1``, where a sparse table takes a
    level per doubling of the longest range. None when some range starts elsewhere (the runs
    between late events), or when the entities are too small for the running extreme to pay
    (a per-entity cumulative costs per entity; short ranges need few levels)."""
    n = col.len()
    length = hi.cast(I64) - lo.cast(I64)
    longest = int(length.max() or 0)  # type: ignore[arg-type]
    if longest < 32:
        return None
    frame = pl.DataFrame({"r": rank})
    new_entity = pl.col("r") != pl.col("r").shift(1)
    starts = frame.select(
        pl.when(new_entity.fill_null(True)).then(pl.int_range(pl.len(), dtype=I64)).forward_fill()
    ).to_series()
    entities = int(frame.select(new_entity.fill_null(True).sum()).item())
    if entities * 16 > n:
        return None
    last = (hi.cast(I64) - 1).clip(0, n - 1)
    nonempty = length > 0
    if not (~nonempty | (starts.gather(last) == lo.cast(I64))).all():
        return None
    values = pl.DataFrame({"r": rank, "v": col})
    running = values.select(
        (pl.col("v").cum_min() if smallest else pl.col("v").cum_max()).over("r")
    ).to_series()
    best = running.gather(last)
    return (
        pl.select(pl.when(nonempty).then(best).otherwise(pl.lit(sentinel, col.dtype)))
        .to_series()
        .alias(col.name)
    )


def _range_extreme(
    col: pl.Series, lo: pl.Series, hi: pl.Series, smallest: bool, sentinel: Any
) -> pl.Series:
    """Range min/max over [lo, hi) with a sparse table; sentinel where the range is empty."""
    n = col.len()
    length = (hi - lo).cast(I64)
    max_len = int(length.max() or 0)  # type: ignore[arg-type]
    if n == 0 or max_len <= 0:
        return pl.Series([sentinel] * lo.len(), dtype=col.dtype)
    # numbers without nulls or NaN (min/max's prepared column holds none; NumPy and Polars
    # order NaN apart)
    numbers = col.dtype == I64 or (col.dtype == F64 and not col.is_nan().any())
    if numbers and col.null_count() == 0:
        return _range_extreme_table(col, lo, hi, max_len, smallest, sentinel)
    levels = [col]
    step = 1
    combine = pl.min_horizontal if smallest else pl.max_horizontal
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


def _range_extreme_table(
    col: pl.Series, lo: pl.Series, hi: pl.Series, max_len: int, smallest: bool, sentinel: Any
) -> pl.Series:
    """``_range_extreme`` for a column of numbers without nulls or NaN, the sparse table in one
    NumPy array: level j holds the extreme of [i, i + 2**j) (of what is left of it at the
    end), each level from the one below without a copy, and each query reads two cells of
    one level. Exact: min and max only pick values."""
    values = col.to_numpy()
    n = len(values)
    combine = np.minimum if smallest else np.maximum
    table = np.empty((max_len.bit_length(), n), dtype=values.dtype)
    table[0] = values
    for j in range(1, len(table)):
        step = 1 << (j - 1)
        below, level = table[j - 1], table[j]
        combine(below[: n - step], below[step:], out=level[: n - step])
        level[n - step :] = below[n - step :]  # the rest of the array: fewer than 2**j values
    start = lo.cast(I64).to_numpy()
    stop = hi.cast(I64).to_numpy()
    length = stop - start
    nonempty = length > 0
    # floor(log2(length)), exact for lengths below 2**53 (frexp: length = m * 2**e, m in [.5, 1))
    level_of = np.where(nonempty, np.frexp(np.maximum(length, 1).astype(np.float64))[1] - 1, 0)
    left = np.clip(start, 0, n - 1)
    right = np.clip(stop - (np.int64(1) << level_of), 0, n - 1)  # frexp's exponents: int32
    best = combine(table[level_of, left], table[level_of, right])
    out = np.where(nonempty, best, np.array(sentinel, dtype=values.dtype))
    return pl.Series(col.name, out, dtype=col.dtype)
