"""Per-event compiler, aggregation level: explicit per-entity state, one event at a time.

The state of one entity for one view is a ``State``: ``buffer`` holds the retained events sorted
by (ts, arrival seq), each a *record* ``[ts, seq, mask, p...]`` where bit i of ``mask`` says
the event passes aggregation i's ``where`` and the ``p``s are its distinct *prepared* inputs
(fixed-point integer for float sums, canonical float for min/max, ...; ``ViewProgram.slots``
says which one each aggregation reads). Events older than ``horizon`` are
folded into ``compacted`` (lifetime accumulators only) and dropped, so state stays bounded.
``horizon`` trails the newest event (``max_ts``) by the longest window plus the view's lateness;
a query at T is answered exactly iff T >= max_ts - lateness (see docs/semantics.md).

What each aggregation kind prepares, folds and finalizes comes from ``featurepipe.ir.aggs``;
this module only arranges it: generated straight-line code for the row stage, compaction and
the query, with the kinds' fold statements inlined.

A window holding many events (``BULK_FROM``) is not folded anew at each query. The query keeps,
on the state it answers from, what makes the next query cheap: running sums over the buffer for
counts, sums, means and variances (``Prefix``), and, per aggregation, the counted values of the
last window answered for count_distinct and min/max (``DistinctWindow``, ``LifetimeDistinct``,
``ExtremeWindow``), moved to the next window by adding the records that enter and removing those
that leave. Ingest and eviction keep them true to the buffer; they are not part of the state's
value (equality, bytes). A state's first query folds its windows (``bulk_code``) and marks the
state as kept by this program (``kept_by``); from its second query on they are kept. A lookup
decodes a state and queries it once: it folds, as before. A replay that queries after every
event (``featurepipe parity``) keeps them, extended event by event, and answers every 32nd
point again the lookup's way, from a state never queried (``parity.harness._as_looked_up``):
any difference stops it, so parity still checks the code that serves.
"""

from __future__ import annotations

import ast
import gc
import hashlib
import math
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from heapq import heapify, heappop, heappush
from itertools import accumulate, compress, filterfalse, islice, pairwise, repeat
from operator import and_, is_not, itemgetter
from typing import Any

import msgspec

from featurepipe import kernels as k
from featurepipe.compile.python_rows import CodeGen
from featurepipe.errors import StateError, UnsupportedOperationError
from featurepipe.ir import aggs as kinds
from featurepipe.ir import nodes as ir
from featurepipe.ir.aggs import AggKind, RecordFields, kind_of
from featurepipe.ir.timebase import format_us
from featurepipe.ir.types import DType

NO_TS = -(2**63)
# the last element of a stored state names the record layout its buffer holds:
# "<STATE_LAYOUT>:<digest of the view's slots and constants>" (``ViewProgram.layout``). 2: a
# record keeps each distinct prepared input once and no constant one (layout 1 kept one per
# aggregation and had no such element). Which inputs share a slot follows from the generated
# row code, so the digest changes when a release moves them; a state of another layout fails
# to decode: a clear refusal, never inputs read at shifted positions.
STATE_LAYOUT = 2
# a query folds a window's events with C-level iterators (``AggKind.bulk_code``) from this many
# events on, one by one below: the bulk code's fixed cost per aggregation is worth about this many
# events of the one-by-one fold (benchmarks/RESULTS.md, "Parity replay")
BULK_FROM = 16
# positions in a record; the prepared inputs follow from REC_INPUTS (ViewProgram.slots)
REC_TS, REC_SEQ, REC_MASK, REC_INPUTS = 0, 1, 2, 3


class State:
    """One entity's state for one view (see the module docstring)."""

    __slots__ = (
        "buffer",
        "compacted",
        "horizon",
        "kept_by",
        "max_ts",
        "prefix",
        "tile_floor",
        "tiles",
        "windows",
        "wire",
    )

    def __init__(
        self,
        horizon: int,
        max_ts: int,
        buffer: list[Any],
        compacted: list[Any],
        tiles: list[dict[int, list[Any]]] | None = None,
    ):
        self.horizon = horizon
        self.max_ts = max_ts
        self.buffer = buffer
        self.compacted = compacted
        # hopped windows: per hop, tile index (ts // hop) -> accumulators of that hop's
        # aggregations over the events evicted from ``buffer`` (see ``ViewProgram``)
        self.tiles = tiles if tiles is not None else []
        # per hop, the oldest tile index kept at the last pruning (not part of the state's
        # value: unknown after loads, which prunes in full)
        self.tile_floor: list[int | None] = [None] * len(self.tiles)
        # accumulator index -> (the accumulator object, its size, its wire form): reused by
        # ``ViewProgram.dumps`` for kinds that grow in place; not part of the state's value
        self.wire: dict[int, tuple[Any, int, Any]] = {}
        # running sums over part of ``buffer``, kept by the query (``Prefix``); not part of
        # the state's value: built again from the buffer after loads
        self.prefix: Prefix | None = None
        # aggregation index -> the values counted over a range of ``buffer``, kept by the
        # query (``DistinctWindow``); not part of the state's value either
        self.windows: dict[int, DistinctWindow] | None = None
        # the query code whose aggregation indices and columns ``prefix`` and ``windows``
        # follow: another program's query starts them afresh
        self.kept_by: object = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        return (self.horizon, self.max_ts, self.buffer, self.compacted, self.tiles) == (
            other.horizon,
            other.max_ts,
            other.buffer,
            other.compacted,
            other.tiles,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"State(horizon={self.horizon}, max_ts={self.max_ts}, "
            f"buffer={len(self.buffer)} events, compacted={self.compacted!r}, "
            f"tiles={[len(t) for t in self.tiles]})"
        )


class Prefix:
    """Running sums of per-event terms (``AggKind.prefix_terms``) over the buffer's records
    ``start`` to ``end``: ``cols[j][i - start]`` is the sum of column j's terms of the
    records ``start`` to ``i`` (excluded). A window [lo, hi) inside that span sums to
    ``cols[j][hi - start] - cols[j][lo - start]``: exact integers, so the difference is
    the sum itself. The query builds and extends them (the generated ``_ensure``); ingest and
    eviction keep them true to the buffer (``ViewProgram.ingest_record``, ``_evict``).
    ``broken[g]``: aggregation group g met a term that is not an int (a saturation flag)
    since ``start``; the query folds that group's windows without running sums."""

    __slots__ = ("broken", "cols", "end", "start")

    def __init__(self, start: int, columns: int, groups: int) -> None:
        self.start = self.end = start
        self.cols: list[list[int]] = [[0] for _ in range(columns)]
        self.broken = [False] * groups

    def inserted(self, state: State, pos: int) -> None:
        """A record was inserted at buffer position ``pos``."""
        if pos >= self.end:
            return  # after the covered records: they did not move
        if pos < self.start:  # before them: each moved one place
            self.start += 1
            self.end += 1
            return
        keep = pos - self.start + 1  # the sums up to pos hold; the rest are recomputed
        for col in self.cols:
            del col[keep:]
        self.end = pos

    def evicted(self, state: State, cut: int) -> None:
        """The buffer's first ``cut`` records were removed."""
        if self.end <= cut:
            state.prefix = None
            return
        if self.start < cut:
            drop = cut - self.start
            for col in self.cols:
                del col[:drop]
            self.start = cut
        self.start -= cut
        self.end -= cut


class DistinctWindow:
    """How many times each value occurs among the records ``lo`` to ``hi`` (excluded) of the
    buffer that pass aggregation's ``where`` (``bit``; None: every record), their input at
    record position ``value``, nulls left out: a count_distinct over a sliding window is
    the number of keys. The query moves the range to each window it answers (``distinct``),
    adding the records that enter and removing those that leave, so that windows sliding
    forward event by event cost each record twice in all, not once per query; ingest and
    eviction keep it true to the buffer."""

    __slots__ = ("bit", "counts", "hi", "lo", "value")

    def __init__(self, buf: list[Any], lo: int, hi: int, value: int, bit: int | None) -> None:
        self.lo, self.hi, self.value, self.bit = lo, hi, value, bit
        self.counts: Counter[Any] = Counter(self.values(buf[lo:hi]))

    def values(self, recs: list[Any]) -> Iterable[Any]:
        """The non-null inputs of ``recs`` that pass the ``where``."""
        if len(recs) == 1:  # one record (most changes: an event enters or leaves), no iterators
            rec = recs[0]
            v = rec[self.value]
            if v is None or (self.bit is not None and not rec[REC_MASK] & self.bit):
                return ()
            return (v,)
        inputs: Iterator[Any] = map(itemgetter(self.value), recs)
        if self.bit is not None:
            inputs = compress(inputs, map(and_, map(itemgetter(REC_MASK), recs), repeat(self.bit)))
        return filter(_not_none, inputs)

    def add(self, recs: list[Any]) -> None:
        self.counts.update(self.values(recs))

    def remove(self, recs: list[Any]) -> None:
        counts = self.counts
        for v in self.values(recs):
            c = counts[v] - 1
            if c:
                counts[v] = c
            else:
                del counts[v]

    def inserted(self, rec: Any, pos: int) -> None:
        """``rec`` was inserted at buffer position ``pos``."""
        if pos < self.lo:
            self.lo += 1
            self.hi += 1
        elif pos < self.hi:  # among the counted records: counted too
            self.add([rec])
            self.hi += 1

    def compacting(self, rec: Any) -> None:
        """``rec`` is folded into the lifetime accumulators without entering the buffer."""

    def leaving(self, rec: Any) -> None:
        """``rec``, the buffer's first record, is evicted: folded into the lifetime
        accumulators (after this call), then removed from the buffer."""

    def evicted(self, cut: int) -> bool:
        """The buffer lost its first ``cut`` records; False: this is to be built again."""
        if self.lo < cut:
            return False
        self.lo -= cut
        self.hi -= cut
        return True


class LifetimeDistinct(DistinctWindow):
    """A lifetime count_distinct: ``counts`` over the whole buffer, and ``extra``, how many of
    its values the lifetime set (``compacted[i]``, the evicted events' values) lacks. The
    union of the set and the buffer's values has ``len(set) + extra`` values; a query at T
    leaves out the values only the records at or after T (the buffer's tail) hold. Kept
    exact through every change of either: a record entering the buffer, one evicted (its
    value joins the set), one folded into the set directly (very late)."""

    __slots__ = ("compacted", "extra", "i")

    def __init__(
        self, buf: list[Any], compacted: list[Any], i: int, value: int, bit: int | None
    ) -> None:
        super().__init__(buf, 0, len(buf), value, bit)
        self.compacted, self.i = compacted, i
        seen = compacted[i]
        self.extra = len(list(filterfalse(seen.__contains__, self.counts)))

    def count(self, buf: list[Any], hi: int) -> int:
        """The distinct values of the lifetime set and of ``buf[:hi]``."""
        seen = self.compacted[self.i]
        n = len(seen) + self.extra
        if hi == len(buf):
            return n
        counts = self.counts
        for v, c in Counter(self.values(buf[hi:])).items():
            if c == counts[v] and v not in seen:  # only the tail holds it
                n -= 1
        return n

    def inserted(self, rec: Any, pos: int) -> None:
        for v in self.values([rec]):
            c = self.counts.get(v, 0)
            if not c and v not in self.compacted[self.i]:
                self.extra += 1
            self.counts[v] = c + 1

    def compacting(self, rec: Any) -> None:
        for v in self.values([rec]):
            if v not in self.compacted[self.i] and v in self.counts:
                self.extra -= 1  # in the set from now on

    def leaving(self, rec: Any) -> None:
        for v in self.values([rec]):
            if v not in self.compacted[self.i]:
                self.extra -= 1  # in the set from now on
            self.remove([rec])

    def evicted(self, cut: int) -> bool:
        return True


def lifetime_distinct(
    state: State, i: int, buf: list[Any], hi: int, value: int, bit: int | None
) -> int:
    """The lifetime count_distinct of aggregation ``i`` (input at record position ``value``,
    ``where`` bit ``bit``) at a query whose visible records are ``buf[:hi]``, from the
    state's ``LifetimeDistinct``, built on the first query."""
    windows = state.windows
    if windows is None:
        windows = state.windows = {}
    w = windows.get(i)
    if not isinstance(w, LifetimeDistinct) or w.compacted is not state.compacted:
        w = windows[i] = LifetimeDistinct(buf, state.compacted, i, value, bit)
    return w.count(buf, hi)


class ExtremeWindow(DistinctWindow):
    """A min or max over a sliding window kept like ``DistinctWindow``: the non-NaN values
    counted, a heap of them (``sign`` * value: -1 for a max) whose top, once entries whose
    value left are popped, is the best; the non-null and NaN counts beside. ``acc`` is the
    accumulator the fold gives: [n, best, nan]."""

    __slots__ = ("heap", "n", "nan", "sign")

    def __init__(
        self, buf: list[Any], lo: int, hi: int, value: int, bit: int | None, smallest: bool
    ) -> None:
        self.lo, self.hi, self.value, self.bit = lo, hi, value, bit
        self.sign = 1 if smallest else -1
        inputs = list(self.values(buf[lo:hi]))
        kept = [p for p in inputs if p == p]  # NaN counted apart
        self.n, self.nan = len(inputs), len(inputs) - len(kept)
        self.counts = Counter(kept)
        self.heap = [self.sign * v for v in self.counts]
        heapify(self.heap)

    def add(self, recs: list[Any]) -> None:
        counts, heap, sign = self.counts, self.heap, self.sign
        for v in self.values(recs):
            self.n += 1
            if v != v:
                self.nan += 1
                continue
            c = counts.get(v, 0)
            if not c:
                heappush(heap, sign * v)
            counts[v] = c + 1

    def remove(self, recs: list[Any]) -> None:
        counts = self.counts
        for v in self.values(recs):
            self.n -= 1
            if v != v:
                self.nan -= 1
                continue
            c = counts[v] - 1
            if c:
                counts[v] = c
            else:
                del counts[v]  # its heap entry is dropped when it reaches the top

    def acc(self) -> list[Any]:
        heap, counts, sign = self.heap, self.counts, self.sign
        while heap and sign * heap[0] not in counts:
            heappop(heap)
        if len(heap) > 2 * len(counts) + 32:  # entries of values long gone: rebuilt
            self.heap = heap = [sign * v for v in counts]
            heapify(heap)
        return [self.n, sign * heap[0] if heap else None, self.nan]


def extreme(
    state: State,
    i: int,
    buf: list[Any],
    lo: int,
    hi: int,
    value: int,
    bit: int | None,
    smallest: bool,
) -> list[Any]:
    """The min (``smallest``) or max accumulator of aggregation ``i`` over ``buf[lo:hi]``,
    from the state's ``ExtremeWindow`` moved there (``distinct``'s moves)."""
    windows = state.windows
    if windows is None:
        windows = state.windows = {}
    w = windows.get(i)
    if w is None or lo > w.hi or hi < w.lo or abs(lo - w.lo) + abs(hi - w.hi) > hi - lo:
        w = windows[i] = ExtremeWindow(buf, lo, hi, value, bit, smallest)
    else:
        _move(w, buf, lo, hi)
    return w.acc()  # type: ignore[attr-defined,no-any-return]


def _move(w: DistinctWindow, buf: list[Any], lo: int, hi: int) -> None:
    """Move ``w`` to count ``buf[lo:hi]``, overlapping the range it counts."""
    if hi > w.hi:
        w.add(buf[w.hi : hi])
    elif hi < w.hi:
        w.remove(buf[hi : w.hi])
    if lo > w.lo:
        w.remove(buf[w.lo : lo])
    elif lo < w.lo:
        w.add(buf[lo : w.lo])
    w.lo, w.hi = lo, hi


def distinct(
    state: State, i: int, buf: list[Any], lo: int, hi: int, value: int, bit: int | None
) -> int:
    """The number of distinct non-null inputs (record position ``value``) of the records
    ``buf[lo:hi]`` passing the ``where`` bit, from the state's ``DistinctWindow`` of
    aggregation ``i`` moved to [lo, hi), or built afresh when moving costs more."""
    windows = state.windows
    if windows is None:
        windows = state.windows = {}
    w = windows.get(i)
    if w is None or lo > w.hi or hi < w.lo or abs(lo - w.lo) + abs(hi - w.hi) > hi - lo:
        w = windows[i] = DistinctWindow(buf, lo, hi, value, bit)
    else:
        _move(w, buf, lo, hi)
    return len(w.counts)


_not_none = partial(is_not, None)


# kinds whose fold gives the same accumulator in any order of the events: sums of exact
# integers, a strict best (equal values are the same value: -0.0 is 0.0 once prepared), a
# unique (ts, seq) order, sets, a list kept sorted by (ts, seq)
ORDER_FREE_FOLDS: frozenset[type[AggKind]] = frozenset(
    {
        kinds.Count,
        kinds.Sum,
        kinds.Mean,
        kinds.Var,
        kinds.Std,
        kinds.Min,
        kinds.Max,
        kinds.First,
        kinds.Last,
        kinds.CountDistinct,
        kinds.LastK,
        kinds.FirstK,
    }
)


def _constant(code: str) -> bool:
    """Whether prepared-input code is the literal True, False or None (count()'s True)."""
    try:
        value = ast.literal_eval(code)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return value is None or type(value) is bool


def _namespace(aggs: tuple[ir.Agg, ...]) -> dict[str, Any]:
    namespace: dict[str, Any] = {"_k": k}
    for agg in aggs:
        for name, value in kind_of(agg).namespace(agg).items():
            if namespace.setdefault(name, value) != value:
                raise AssertionError(f"aggregation kinds disagree on generated name {name}")
    return namespace


def _widest_first(span: ir.Span) -> tuple[int, int, int]:
    """Lifetime first, then by how far back the window can reach (w + h - 1), widest first."""
    if span is None:
        return (0, 0, 0)
    w, h = span
    return (1, -(w + h - 1), -h)


def _contains(a: ir.Span, b: ir.Span) -> bool:
    """Whether window ``a`` starts at or before window ``b`` at every query time T.

    start = T // h * h - w (``kernels.window_start``). Flooring to a coarser grid of which
    the finer is a refinement (h_b divides h_a) never gives a later start, so w_a >= w_b
    suffices then; otherwise a reaches back at least as far as b can whenever
    w_a >= w_b + h_b - 1 (start_a <= T - w_a and start_b > T - w_b - h_b)."""
    if a is None:
        return True
    if b is None:
        return False
    (wa, ha), (wb, hb) = a, b
    return (ha % hb == 0 and wa >= wb) or wa >= wb + hb - 1


class ViewProgram:
    """The per-event executor of one view."""

    def __init__(self, view: ir.ViewIR, *, bulk_from: int | None = None) -> None:
        self.view = view
        # BULK_FROM by default, read here (tests set it to take the bulk code everywhere)
        self.bulk_from = BULK_FROM if bulk_from is None else bulk_from
        self.aggs = view.aggs
        self.kinds = [kind_of(a) for a in self.aggs]
        self.max_window = view.max_window_us
        self.lateness = view.lateness_us
        self.lifetime = [i for i, a in enumerate(self.aggs) if a.window_us is None]
        # hopped windows, one group per hop: (hop, longest window, aggregation indices)
        hops: dict[int, list[int]] = {}
        for i, a in enumerate(self.aggs):
            if a.hop_us is not None:
                if not self.kinds[i].mergeable:
                    raise UnsupportedOperationError(
                        f"view '{view.name}': hop= is not offered for {a.kind} (its "
                        "accumulators cannot be merged per hop)"
                    )
                hops.setdefault(a.hop_us, []).append(i)
        self.groups = [
            (h, max(self.aggs[i].window_us or 0 for i in idx), idx)
            for h, idx in sorted(hops.items())
        ]
        sliding = [a.window_us for a in self.aggs if a.window_us is not None and a.hop_us is None]
        self._sliding_reach = max(sliding) if sliding else None
        # aggregation i -> the record position of its prepared input, or (``constants``) the
        # Python literal every event's input is; filled by _compile_rows
        self.slots: list[int | None] = [None] * len(self.aggs)
        self.constants: dict[int, str] = {}
        self.row_source, self._row = self._compile_rows()
        places = repr((self.slots, sorted(self.constants.items()))).encode()
        self.layout = f"{STATE_LAYOUT}:{hashlib.blake2b(places, digest_size=6).hexdigest()}"
        self.tile_source, self._tile_folds = self._compile_tile_folds()
        self.compact_source, self._compact = self._compile_compaction()
        self.query_source, self._answer = self._compile_query()
        self.feature_names = [f.name for f in view.features]
        self.request_fields = view.request_fields
        self._no_request: dict[str, Any] = {name: None for name, _ in self.request_fields}
        self._float_lists = [
            j for j, f in enumerate(self.view.features) if f.expr.dtype is DType.LIST_FLOAT
        ]
        self._float_maps = [
            j
            for j, f in enumerate(self.view.features)
            if f.expr.dtype.is_map and f.expr.dtype.map_value is DType.FLOAT
        ]
        # generated: one list literal of empty accumulators (a fresh entity per new key)
        empties = ", ".join(repr(k.empty(a)) for a, k in zip(self.aggs, self.kinds, strict=True))
        self._empty_compacted = eval(f"lambda: [{empties}]")  # reprs of ints, lists, sets
        # only the kinds whose wire form differs from the accumulator are converted
        self._to_wire = [
            (i, k.to_wire, k.grows_in_place)
            for i, k in enumerate(self.kinds)
            if type(k).to_wire is not AggKind.to_wire
        ]
        self._from_wire = [
            (i, k.from_wire)
            for i, k in enumerate(self.kinds)
            if type(k).from_wire is not AggKind.from_wire
        ]
        # aggregations whose kind converts its accumulator to and from the wire form
        self._wired = {i for i, _, _ in self._to_wire} | {i for i, _ in self._from_wire}
        self._accumulators_from_wire = self._compile_from_wire()
        self._encoder = msgspec.msgpack.Encoder()
        # records decode as tuples, as the row stage makes them (see _compile_rows)
        self._decoder = msgspec.msgpack.Decoder(
            tuple[int, int, list[tuple[Any, ...]], list[Any], str], ext_hook=_from_ext
        )
        # a view with hopped windows adds its tiles: [[[tile index, [accumulators]], ...], ...]
        self._tiled_decoder = msgspec.msgpack.Decoder(
            tuple[int, int, list[tuple[Any, ...]], list[Any], list[list[list[Any]]], str],
            ext_hook=_from_ext,
        )

    # -- compilation -----------------------------------------------------------------------
    def _compile_rows(self) -> tuple[str, Callable[..., Any]]:
        gen = CodeGen(lambda n: f"ev[{n.name!r}]" if isinstance(n, ir.Field) else None)
        outs: list[str] = []
        mask_terms: list[str] = []
        shared: dict[str, int] = {}  # identical prepared values are computed and kept once
        for i, (agg, kind) in enumerate(zip(self.aggs, self.kinds, strict=True)):
            v = gen.emit(agg.arg) if agg.arg is not None else "True"
            code = kind.prepare_code(agg, v)
            if agg.by is not None:  # (bucket, prepared value); None without a bucket
                b = gen.emit(agg.by)
                gen.lines.append(f"q{i} = {code}")
                code = f"(None if {b} is None or q{i} is None else ({b}, q{i}))"
            if _constant(code):  # e.g. count()'s True: the record does not carry it
                self.constants[i] = code
            elif code in shared:  # the same prepared value: one slot of the record
                self.slots[i] = shared[code]
            else:
                self.slots[i] = shared[code] = REC_INPUTS + len(outs)
                gen.lines.append(f"p{i} = {code}")
                outs.append(f"p{i}")
            if agg.where is None:
                mask_terms.append(str(1 << i))
            else:
                w = gen.emit(agg.where)
                mask_terms.append(f"({1 << i} if {w} is True else 0)")
        gen.lines.append("mask = " + (" | ".join(mask_terms) if mask_terms else "0"))
        ts = f"ev[{self.view.timestamp!r}]"
        # the record layout: REC_TS, REC_SEQ, REC_MASK, then from REC_INPUTS the distinct
        # prepared inputs (``slots``)
        # a tuple: the garbage collector stops tracking a tuple of plain values, so retained
        # records cost nothing at each full collection (lists would be traversed every time)
        return gen.function("prepare_event", "ev, seq", [ts, "seq", "mask", *outs])

    def _compile_compaction(self) -> tuple[str, Callable[..., Any]]:
        """Straight-line code folding one retained event into the lifetime accumulators, with
        the fold rules the query path uses (``_fold_block``); generated because compaction runs
        for nearly every ingested event."""
        lines = ["def compact(c, rec):"]
        if any(self.aggs[i].where is not None for i in self.lifetime):
            lines.append(f"    mask = rec[{REC_MASK}]")
        for i in self.lifetime:
            lines.append(f"    a{i} = c[{i}]")
            lines += [f"    {ln}" for ln in self._fold_block(i)]
            lines.append(f"    c[{i}] = a{i}")
        lines.append("    return None")
        src = "\n".join(lines) + "\n"
        namespace = _namespace(self.aggs)
        exec(compile(src, "<featurepipe:compact>", "exec"), namespace)
        return src, namespace["compact"]

    def _compile_query(self) -> tuple[str, Callable[..., Any]]:
        """Straight-line code computing every aggregation at T in one pass over the retained
        events, then each kind's finalizer (and the declared default).

        Windows nest: the events of a shorter window are the newest of a longer one's. Each
        window's start is a bisection of the buffer, widest (lifetime: the whole buffer) first,
        which cuts the visible events [0, hi) into segments; a segment's events are folded
        (``_fold_block``) into the accumulators of every window that contains it, each event
        read once."""
        windows: dict[ir.Span, list[int]] = {}
        for i, agg in enumerate(self.aggs):
            windows.setdefault(agg.span, []).append(i)
        widest_first = sorted(windows, key=_widest_first)
        nested = all(_contains(a, b) for a, b in pairwise(widest_first))
        lines = [
            "def answer(buf, compacted, t, tiles, state, req):",
            "    hi = _bisect(buf, t, key=_ts)",
            "    keep = state.kept_by is _KEEPER",
        ]
        starts: list[str] = []
        # lifetime aggregations answered from their accumulator without copying it: their
        # code sets a{i} to the finalized value
        final: dict[int, list[str]] = {}
        for i, agg in enumerate(self.aggs):
            if agg.span is None:
                code = self.kinds[i].lifetime_code(
                    agg, f"a{i}", f"compacted[{i}]", self._record_fields(i), "hi"
                )
                if code is not None and self._counts_distinct(i):
                    rec = self._record_fields(i)
                    kept = f"a{i} = _lifetime_distinct(state, {i}, buf, hi, {rec.value}, {rec.bit})"
                    # a buffer of many events in a state queried before: its LifetimeDistinct
                    many = "" if self.bulk_from <= 0 else f" and len(buf) >= {self.bulk_from}"
                    code = [
                        f"if keep{many}:",
                        f"    {kept}",
                        "else:",
                        *(f"    {ln}" for ln in code),
                    ]
                if code is not None:
                    final[i] = code
        for n, span in enumerate(widest_first):
            if span is None:
                lo = "0"
            else:
                w, h = span
                start = f"t - {w}" if h == 1 else f"t // {h} * {h} - {w}"  # kernels.window_start
                floor = starts[-1] if starts and nested else "0"
                lo = f"_bisect(buf, {start}, {floor}, hi, key=_ts)"
            lines.append(f"    lo{n} = {lo}")
            starts.append(f"lo{n}")
            for i in windows[span]:
                if i in final:
                    continue
                if span is None:
                    copy = self.kinds[i].copy_code(f"compacted[{i}]")
                    init = f"_copy{i}(compacted[{i}])" if copy is None else copy
                else:
                    init = repr(self.kinds[i].empty(self.aggs[i]))
                lines.append(f"    a{i} = {init}")
        # kinds that fold a window's events at once (the buffer is sorted by ts), the rest
        # event by event in the loops below
        ranged: dict[int, list[str]] = dict(final)
        picks: dict[tuple[bool, int, int | None], str] = {}  # first/last: one pick per window
        sharing: dict[tuple[bool, int, int | None], list[int]] = {}
        for n, span in enumerate(widest_first):
            for i in windows[span]:
                kind = self.kinds[i]
                if i not in final and isinstance(kind, kinds.First):
                    key = (kind.earliest, n, self._record_fields(i).bit)
                    sharing.setdefault(key, []).append(i)
        for n, span in enumerate(widest_first):
            for i in windows[span]:
                kind, rec = self.kinds[i], self._record_fields(i)
                if i in final:
                    continue
                if isinstance(kind, kinds.First):
                    pick = (kind.earliest, n, rec.bit)
                    r = picks.get(pick)
                    found: list[str] = []
                    if r is None:  # the first aggregation of the pick finds the record
                        r = picks[pick] = f"pick{len(picks)}"
                        found = kind.pick_code(rec, starts[n], "hi", r)
                        if span is None and kind.earliest:
                            # every record the lifetime accumulators hold is older than
                            # every buffered one (evicted, very late or, with hops, late
                            # behind the buffer: ts < raw_horizon <= a buffered ts; the
                            # horizon is at or before raw_horizon, a window being a multiple
                            # of its hop): once they hold one, no buffered event is first
                            held = " or ".join(f"a{j} is None" for j in sharing[pick])
                            found = [
                                f"{r} = None",
                                f"if {held}:",
                                *(f"    {ln}" for ln in found),
                            ]
                    fold = kind.picked_code(self.aggs[i], f"a{i}", rec, r)
                    ranged[i] = [*found, f"if {r} is not None:", *(f"    {ln}" for ln in fold)]
                    continue
                at_once = kind.range_code(self.aggs[i], f"a{i}", rec, starts[n], "hi")
                if at_once is not None:
                    ranged[i] = at_once
        # kinds that fold a window's many events with C-level iterators (``bulk_code``), per
        # window: when it holds at least ``bulk_from`` events, else event by event
        bulk: dict[int, list[int]] = {}
        for n, span in enumerate(widest_first):
            for i in windows[span]:
                code = self.kinds[i].bulk_code(
                    self.aggs[i], f"a{i}", self._record_fields(i), starts[n], "hi"
                )
                if i not in ranged and code is not None:
                    bulk.setdefault(n, []).append(i)
                    ranged[i] = code
        if nested:  # each window's events are the newest of the one before: segments
            ends = [*starts[1:], "hi"]
            active: list[int] = []
            for n, span in enumerate(widest_first):
                # the segment [lo{n}, next start) lies in windows 0..n
                active += [i for i in windows[span] if i not in ranged]
                lines += self._fold_loop(f"buf[{starts[n]}:{ends[n]}]", active)
        else:  # hops whose starts may cross (e.g. 2h/1h beside 90m sliding): one pass each
            for n, span in enumerate(widest_first):
                each = [i for i in windows[span] if i not in ranged]
                lines += self._fold_loop(f"buf[{starts[n]}:hi]", each)
        in_bulk = {i for idx in bulk.values() for i in idx}
        for i, code in ranged.items():
            if i not in in_bulk:
                lines += [f"    {ln}" for ln in code]
        prefix, prefix_source = self._prefix_code(sorted(in_bulk))
        counted = {i for i in in_bulk if self._counts_distinct(i)}
        for n, idx in bulk.items():
            # a state queried before keeps what makes the next query cheap (``keep``); a
            # state's first query (a lookup's only one) folds the window with the bulk code
            plain = [ln for i in idx for ln in ranged[i]]
            plain += [f"a{i} = len(a{i})" for i in idx if i in counted]
            codes = []
            if any(i in prefix for i in idx):  # running sums (Prefix) over [lo, hi)
                codes += [
                    f"pf = _ensure(state, buf, {starts[n]}, hi)",
                    "pc = pf.cols",
                    f"px = {starts[n]} - pf.start",
                    "py = hi - pf.start",
                ]
            for i in idx:
                if i in counted:  # the state's DistinctWindow, moved to this window
                    rec = self._record_fields(i)
                    codes.append(
                        f"a{i} = _distinct(state, {i}, buf, {starts[n]}, hi, {rec.value}, "
                        f"{rec.bit})"
                    )
                    continue
                if self._kept_extreme(i):  # the state's ExtremeWindow: the accumulator
                    rec = self._record_fields(i)
                    smallest = type(self.kinds[i]) is kinds.Min
                    codes.append(
                        f"a{i} = _extreme(state, {i}, buf, {starts[n]}, hi, {rec.value}, "
                        f"{rec.bit}, {smallest})"
                    )
                    continue
                if i not in prefix:
                    codes += ranged[i]
                    continue
                g, columns = prefix[i]
                codes.append(f"if pf.broken[{g}]:")  # a term that is not an int: fold
                codes += [f"    {ln}" for ln in ranged[i]]
                codes.append("else:")
                for field, j in columns:
                    target = f"a{i}" if field < 0 else f"a{i}[{field}]"
                    codes.append(f"    {target} += pc[{j}][py] - pc[{j}][px]")
            if codes != plain:
                codes = ["if keep:", *(f"    {ln}" for ln in codes), "else:"]
                codes += [f"    {ln}" for ln in plain]
            codes = [f"    {ln}" for ln in codes]
            if self.bulk_from <= 0:
                lines += codes
                continue
            lines.append(f"    if hi - {starts[n]} >= {self.bulk_from}:")
            lines += [f"    {ln}" for ln in codes]
            lines.append("    else:")
            lines += [f"    {ln}" for ln in self._fold_loop(f"buf[{starts[n]}:hi]", idx)]
            lines += [f"        a{i} = len(a{i})" for i in idx if i in counted]
        lines += self._tile_merges()
        lines += [
            "    if not keep:",  # queried once: from the next query on, kept (``keep``)
            "        state.windows = {}",
            "        state.prefix = None",
            "        state.kept_by = _KEEPER",
        ]
        outs = []
        for i, agg in enumerate(self.aggs):
            if i in final or i in counted:
                value = f"a{i}"
            else:
                value = self.kinds[i].finalize_code(agg, f"a{i}") or f"_finalize{i}(a{i})"
            if agg.default is None:
                outs.append(value)
            else:
                if value != f"a{i}":
                    lines.append(f"    a{i} = {value}")
                outs.append(f"(_default{i} if a{i} is None else a{i})")
        # the features from the aggregations' values, in the same function: no list of them
        # built and unpacked again
        leaves = []
        for i, out in enumerate(outs):
            if not out.isidentifier():
                lines.append(f"    r{i} = {out}")
                out = f"r{i}"
            leaves.append(out)
        finish, returned, consts = self._finish_code(leaves)
        lines += [f"    {ln}" for ln in finish]
        lines.append(f"    return ({', '.join(returned)}{',' if len(returned) == 1 else ''})")
        src = "\n".join([*lines, *prefix_source]) + "\n"
        namespace = _namespace(self.aggs)
        for name, value in consts.items():
            if namespace.setdefault(name, value) is not value:
                raise AssertionError(f"query and feature code disagree on generated name {name}")
        namespace.update(
            {
                "_Prefix": Prefix,
                "_KEEPER": object(),  # this program's mark on the states it keeps for
                "_accumulate": accumulate,
                "_islice": islice,
                "_distinct": distinct,
                "_lifetime_distinct": lifetime_distinct,
                "_extreme": extreme,
            }
        )
        namespace.update(
            {"_bisect": bisect_left, "_ts": _ts, "_NAN": math.nan}, **kinds.RANGE_NAMES
        )
        for i, (agg, kind) in enumerate(zip(self.aggs, self.kinds, strict=True)):
            namespace[f"_copy{i}"] = kind.copy
            namespace[f"_finalize{i}"] = kind.finalizer(agg)
            namespace[f"_default{i}"] = agg.default
        exec(compile(src, "<featurepipe:answer>", "exec"), namespace)
        return src, namespace["answer"]

    def _counts_distinct(self, i: int) -> bool:
        """Whether the query answers aggregation ``i`` over a big window with ``distinct`` or
        ``lifetime_distinct``: a count_distinct of a kept input over a sliding window or the
        lifetime (hopped ones merge tiles, which are sets)."""
        agg = self.aggs[i]
        return (
            type(self.kinds[i]) is kinds.CountDistinct
            and agg.hop_us is None
            and self.slots[i] is not None
        )

    def _kept_extreme(self, i: int) -> bool:
        """Whether the query answers aggregation ``i`` over a big window with ``extreme``: a
        min or max of a kept input over a sliding window."""
        agg = self.aggs[i]
        return (
            type(self.kinds[i]) in (kinds.Min, kinds.Max)
            and agg.window_us is not None
            and agg.hop_us is None
            and self.slots[i] is not None
        )

    def _prefix_code(
        self, aggs: list[int]
    ) -> tuple[dict[int, tuple[int, list[tuple[int, int]]]], list[str]]:
        """The running sums (``Prefix``) of the aggregations ``aggs`` whose kinds offer them
        (``AggKind.prefix_terms``): aggregation -> (its group, [(accumulator field, column)]),
        and the source of ``_ensure(state, buf, lo, hi)``, which returns the state's
        ``Prefix`` covering at least [lo, hi), extended (or started at lo) as needed, and of
        ``_extend``, which adds the records of ``seg`` to the sums of every group not broken."""
        prefix: dict[int, tuple[int, list[tuple[int, int]]]] = {}
        extend = ["def _extend(cols, broken, seg):"]
        # one record (the query after each event asks for just the newest): each sum is the
        # last one plus the record's term, without the accumulate/islice/extend chain
        one = ["    if len(seg) == 1:"]
        columns = 0
        for i in aggs:
            terms = self.kinds[i].prefix_terms(self.aggs[i], self._record_fields(i), "seg")
            if terms is None:
                continue
            g = len(prefix)
            placed = [(field, columns + j) for j, (field, _) in enumerate(terms)]
            columns += len(terms)
            prefix[i] = (g, placed)
            first = placed[0][1]
            one += [f"        if not broken[{g}]:", "            try:"]
            # sum() of the one term: an int, or TypeError for a saturation flag (a str)
            one += [
                f"                x{j} = cols[{j}][-1] + sum({term})"
                for (_, j), (_, term) in zip(placed, terms, strict=True)
            ]
            one += [
                "            except TypeError:",
                f"                broken[{g}] = True",
                "            else:",
                *(f"                cols[{j}].append(x{j})" for _, j in placed),
            ]
            extend += [
                f"    if not broken[{g}]:",
                f"        m = len(cols[{first}])",
                "        try:",
            ]
            for (_, j), (_, term) in zip(placed, terms, strict=True):
                extend.append(
                    f"            cols[{j}].extend("
                    f"_islice(_accumulate({term}, initial=cols[{j}][-1]), 1, None))"
                )
            extend += [
                "        except TypeError:",  # a saturation flag: this group folds instead
                *(f"            del cols[{j}][m:]" for _, j in placed),
                f"            broken[{g}] = True",
            ]
        if not prefix:
            return prefix, []
        extend[1:1] = [*one, "        return None"]
        ensure = [
            "def _ensure(state, buf, lo, hi):",
            "    pf = state.prefix",
            # a group broken by a saturation flag: summed afresh from the window's start
            # once it moved on (the flag may have left it)
            "    if pf is None or lo < pf.start or pf.end < lo or (lo > pf.start and True in pf.broken):",
            f"        pf = state.prefix = _Prefix(lo, {columns}, {len(prefix)})",
            "    if pf.end < hi:",
            "        _extend(pf.cols, pf.broken, buf[pf.end:hi])",
            "        pf.end = hi",
            "    return pf",
        ]
        return prefix, ["", *extend, "", *ensure]

    def _tile_merges(self) -> list[str]:
        """Code merging, into each hopped aggregation, the tiles inside its window: the tile of
        index i holds events with i * hop <= ts < (i + 1) * hop, and the window starts at the
        hop boundary T // hop * hop - w, so a tile is wholly in (i >= T // hop - w // hop) or
        out. Tiles hold only events evicted from the buffer, which the loops above did not
        see."""
        lines: list[str] = []
        for g, (h, _, idx) in enumerate(self.groups):
            by_window: dict[int, list[tuple[int, int]]] = {}  # one test per window, not per agg
            for j, i in enumerate(idx):
                w = self.aggs[i].window_us
                assert w is not None and w % h == 0
                by_window.setdefault(w, []).append((j, i))
            lines.append(f"    q = t // {h}")
            lines.append(f"    for i, ta in tiles[{g}].items():")
            for w, members in sorted(by_window.items(), reverse=True):
                lines.append(f"        if i >= q - {w // h}:")
                for j, i in members:
                    lines.append(f"            o = ta[{j}]")
                    merge = self.kinds[i].merge_code(self.aggs[i], f"a{i}", "o")
                    lines += [f"            {ln}" for ln in merge]
        return lines

    def _compile_tile_folds(
        self,
    ) -> tuple[str, list[tuple[Callable[[list[Any], Any], None], Callable[[], list[Any]]]]]:
        """Per hop group: code folding one evicted record into a tile's accumulators (the
        fold rules of the query path, ``_fold_block``)."""
        chunks: list[str] = []
        namespace = _namespace(self.aggs)
        for g, (_, _, idx) in enumerate(self.groups):
            lines = [f"def fold_tile{g}(ta, rec):"]
            if any(self.aggs[i].where is not None for i in idx):
                lines.append(f"    mask = rec[{REC_MASK}]")
            for j, i in enumerate(idx):
                lines.append(f"    a{i} = ta[{j}]")
                lines += [f"    {ln}" for ln in self._fold_block(i)]
                lines.append(f"    ta[{j}] = a{i}")
            lines.append("    return None")
            empties = ", ".join(repr(self.kinds[i].empty(self.aggs[i])) for i in idx)
            lines.append(f"def empty_tile{g}():\n    return [{empties}]")
            chunks.append("\n".join(lines) + "\n")
        src = "".join(chunks)
        exec(compile(src, "<featurepipe:tiles>", "exec"), namespace)
        folds = [
            (namespace[f"fold_tile{g}"], namespace[f"empty_tile{g}"])
            for g in range(len(self.groups))
        ]
        return src, folds

    def _fold_block(self, i: int) -> list[str]:
        """Inline code folding record ``rec`` into accumulator ``a{i}`` when it passes the
        aggregation's ``where``: the one statement of the fold rules, shared by compaction,
        tiles and queries. Bit i of a record's mask is tested only when the aggregation has a
        ``where``: without one, the row stage sets it on every record."""
        agg = self.aggs[i]
        value = self._record_fields(i).value_of("rec")
        body = kind_of(agg).fold_code(agg, f"a{i}", value, f"rec[{REC_TS}]", f"rec[{REC_SEQ}]")
        if agg.where is None:
            return list(body)
        return [f"if mask & {1 << i}:", *(f"    {line}" for line in body)]

    def _record_fields(self, i: int) -> RecordFields:
        """Where a record holds what aggregation ``i`` folds."""
        bit = None if self.aggs[i].where is None else 1 << i
        return RecordFields(REC_TS, REC_SEQ, self.slots[i], self.constants.get(i), REC_MASK, bit)

    def _fold_loop(self, events: str, aggs: list[int]) -> list[str]:
        if not aggs:
            return []
        lines = [f"    for rec in {events}:"]
        if any(self.aggs[i].where is not None for i in aggs):
            lines.append(f"        mask = rec[{REC_MASK}]")
        for i in aggs:
            lines += [f"        {ln}" for ln in self._fold_block(i)]
        return lines

    def _finish_code(self, leaves: list[str]) -> tuple[list[str], list[str], dict[str, Any]]:
        """The features from the aggregations' values (``leaves``: the name holding each):
        the lines computing them, the expressions returned (one per feature, in declaration
        order) and the names the lines use."""
        index = {a: i for i, a in enumerate(self.aggs)}

        def leaf(n: ir.Node) -> str | None:
            if isinstance(n, ir.Agg):
                return leaves[index[n]]
            if isinstance(n, ir.FeatureRef):
                return gen.names[self.view.feature(n.name).expr]
            if isinstance(n, ir.Request):
                return f"req[{n.name!r}]"
            if isinstance(n, ir.QueryTime):
                return "t"
            return None

        gen = CodeGen(leaf)
        outs = {f.name: gen.emit(f.expr) for f in self.view.dependency_order()}
        gen.consts["_NAN"] = math.nan
        returned = []
        for f in self.view.features:
            v = outs[f.name]
            if f.expr.dtype is DType.FLOAT:  # one NaN on the way out: sign/payload mean nothing
                v = f"({v} if {v} == {v} else _NAN)"  # None == None
            returned.append(v)
        return gen.lines, returned, gen.consts

    # -- state -----------------------------------------------------------------------------
    def new_state(self) -> State:
        return State(NO_TS, NO_TS, [], self._empty_compacted(), [{} for _ in self.groups])

    def raw_horizon(self, max_ts: int) -> int:
        """Events older than this leave the buffer: folded into the lifetime accumulators and,
        with hopped windows, into tiles. Without hops it is the horizon (``max_ts`` - the
        longest window - lateness). With hops, a query at T >= max_ts - lateness = L needs
        each hop's events from L // hop * hop on individually (the part of the current hop
        before T), and a sliding window's from L - w: the buffer keeps the earliest of these."""
        if not self.groups:
            return max_ts - self.max_window - self.lateness
        low = max_ts - self.lateness
        reach = [low // h * h for h, _, _ in self.groups]
        if self._sliding_reach is not None:
            reach.append(low - self._sliding_reach)
        return min(reach)

    def ingest(self, state: State, event: Mapping[str, Any], seq: int) -> None:
        """Fold one event (datetimes as epoch micros) into the entity's state."""
        self.ingest_record(state, self._row(event, seq))

    def record(self, event: Mapping[str, Any], seq: int) -> tuple[Any, ...]:
        """The event's record (``REC_*``): what ``ingest`` folds; ``compile.polars_records``
        computes the same for many events at once."""
        return self._row(event, seq)  # type: ignore[no-any-return]

    def ingest_record(self, state: State, rec: tuple[Any, ...]) -> None:
        """Fold one event's record (``record``) into the entity's state."""
        ts = rec[REC_TS]
        windows = state.windows  # what the query keeps (DistinctWindow): told of each change
        if ts < state.horizon:
            if windows:
                for w in windows.values():
                    w.compacting(rec)
            self._compact(state.compacted, rec)  # very late: only lifetime accumulators use it
        elif (
            self.groups
            and ts < state.max_ts - self.lateness
            and ts < self.raw_horizon(state.max_ts)
        ):
            if windows:
                for w in windows.values():
                    w.compacting(rec)
            self._compact(state.compacted, rec)  # late, behind the buffer: straight to tiles
            self._tile(state, [rec])
        else:
            buf = state.buffer
            pos = len(buf)
            if pos and buf[-1][REC_TS] > ts:
                pos = bisect_right(buf, ts, key=_ts)
                if state.prefix is not None:
                    state.prefix.inserted(state, pos)
            if windows:
                for w in windows.values():
                    w.inserted(rec, pos)
            buf.insert(pos, rec)
        if ts > state.max_ts:
            state.max_ts = ts
            horizon = ts - self.max_window - self.lateness
            if horizon > state.horizon:
                state.horizon = horizon
                self._evict(state)

    def _evict(self, state: State) -> None:
        buf = state.buffer
        horizon = self.raw_horizon(state.max_ts) if self.groups else state.horizon
        cut = 0
        end = len(buf)
        while cut < end and buf[cut][REC_TS] < horizon:  # usually 0-2 steps: beats bisection
            cut += 1
        if cut:
            compact, compacted = self._compact, state.compacted
            windows = state.windows
            if windows:
                leaving = [w.leaving for w in windows.values()]
                for rec in buf[:cut]:
                    for told in leaving:
                        told(rec)
                    compact(compacted, rec)
            else:
                for rec in buf[:cut]:
                    compact(compacted, rec)
            if self.groups:
                self._tile(state, buf[:cut])
            del buf[:cut]
            if state.prefix is not None:
                state.prefix.evicted(state, cut)
            if windows:
                for i, w in list(windows.items()):
                    if not w.evicted(cut):
                        del windows[i]
        elif self.groups:
            self._tile(state, [])  # drop the tiles that left every window

    def _tile(self, state: State, recs: list[Any]) -> None:
        """Fold ``recs`` (left the buffer) into each hop's tiles, skipping events no window
        can see again, and drop tiles wholly before the oldest window start any answerable
        query has: (max_ts - lateness) // hop * hop - the hop's longest window."""
        low = state.max_ts - self.lateness
        for g, ((h, longest, _), (fold, empty), tiles) in enumerate(
            zip(self.groups, self._tile_folds, state.tiles, strict=True)
        ):
            first = (low // h * h - longest) // h  # the oldest tile still inside a window
            for rec in recs:
                i = rec[REC_TS] // h
                if i >= first:
                    tile = tiles.get(i)
                    if tile is None:
                        tile = tiles[i] = empty()
                    fold(tile, rec)
            # no tile below ``first`` is ever created, so tiles need dropping only when it moved
            # (once per hop): the tiles kept are then {i >= first} whatever the order of events
            # and of loads, so equal event sequences give equal bytes
            if state.tile_floor[g] != first:
                for i in [i for i in tiles if i < first]:
                    del tiles[i]
                state.tile_floor[g] = first

    @property
    def assembles(self) -> bool:
        """Whether ``assemble`` builds the state ``ingest_record`` would: no hopped windows
        (tiles depend on when events left the buffer) and every lifetime aggregation folds
        its events to the same accumulator in any order."""
        return not self.groups and all(
            type(self.kinds[i]) in ORDER_FREE_FOLDS for i in self.lifetime
        )

    @property
    def retention_us(self) -> int:
        """How far behind the newest event the buffer reaches: the longest window plus the
        lateness (no hopped windows)."""
        return self.max_window + self.lateness

    def assemble(
        self,
        max_ts: int,
        older: Iterable[Any],
        newer: list[Any],
        accumulated: tuple[Sequence[int], Sequence[Any]] | None = None,
    ) -> State:
        """An entity's state after ingesting its records, built at once (``assembles``):
        ``newer``, its records with ts >= ``max_ts`` - ``retention_us`` in (ts, seq) order,
        is the buffer; ``older``, the others in any order, is folded into the lifetime
        accumulators. One by one, the buffer ends with exactly the records at or after the
        final horizon (``ingest_record``: the horizon only grows; a record behind it is
        folded on arrival or at the next eviction; ties stay in arrival order) and every
        other record is folded once: the same state. ``accumulated``: lifetime accumulators
        already holding some of the older records (aggregation indices, their accumulators:
        ``compile.polars_records.accumulation``), the rest of them folded on top."""
        state = self.new_state()
        state.max_ts = max_ts
        state.horizon = max(NO_TS, max_ts - self.retention_us)
        compact, compacted = self._compact, state.compacted
        if accumulated is not None:
            for i, acc in zip(*accumulated, strict=True):
                compacted[i] = acc
        for rec in older:
            compact(compacted, rec)
        state.buffer = newer
        return state

    def can_answer(self, state: State, t: int) -> bool:
        return bool(state.max_ts == NO_TS or t >= state.max_ts - self.lateness)

    def query(
        self, state: State | None, t: int, request: Mapping[str, Any] | None = None
    ) -> tuple[Any, ...]:
        """Every feature of the view as of T (events with ts < T), in declaration order.

        ``request``: the values of the view's request fields (``fp.request``; datetimes as
        epoch micros, already checked against their types); a field left out is null."""
        if state is None:
            state = self.new_state()
        elif t < state.max_ts - self.lateness and state.max_ts != NO_TS:  # not can_answer
            raise StateError(
                f"view '{self.view.name}': query at {format_us(t)} is more than the view's "
                f"lateness behind the newest event ({format_us(state.max_ts)}); retained state "
                "cannot answer it"
            )
        req = self._no_request if request is None else {**self._no_request, **request}
        # float features: one NaN already
        out = self._answer(state.buffer, state.compacted, t, state.tiles, state, req)
        if not self._float_lists and not self._float_maps:
            return out  # type: ignore[no-any-return]
        out = list(out)
        for j in self._float_lists:
            v = out[j]
            if v is not None:
                out[j] = [math.nan if x != x else x for x in v]
        for j in self._float_maps:
            v = out[j]
            if v is not None:
                out[j] = {b: (math.nan if x is not None and x != x else x) for b, x in v.items()}
        return tuple(out)

    # -- bytes -----------------------------------------------------------------------------
    def dumps(self, state: State) -> bytes:
        """msgpack of ``[horizon, max_ts, buffer, compacted, layout]``; deterministic (each
        kind's wire form is), so equal states give equal bytes.

        Exact fixed-point sums can exceed 64 bits; such integers travel as msgpack extension
        type 1 (big-endian two's complement)."""
        compacted = list(state.compacted)
        reuse = state.wire
        for i, to_wire, grows_in_place in self._to_wire:
            acc = compacted[i]
            if grows_in_place:
                seen = reuse.get(i)
                if seen is not None and seen[0] is acc and seen[1] == len(acc):
                    compacted[i] = seen[2]
                    continue
                compacted[i] = wire = to_wire(acc)
                reuse[i] = (acc, len(acc), wire)
            else:
                compacted[i] = to_wire(acc)
        body: list[Any] = [state.horizon, state.max_ts, state.buffer, compacted]
        if self.groups:
            body.append(self._tiles_to_wire(state.tiles))
        body.append(self.layout)
        try:
            return self._encoder.encode(body)
        except OverflowError:
            return self._encoder.encode(_wire(body))

    def loads(self, blob: bytes) -> State:
        wire_tiles: list[Any] = []
        if self.groups:
            horizon, max_ts, buffer, compacted, wire_tiles, layout = self._tiled_decoder.decode(
                blob
            )
        else:
            horizon, max_ts, buffer, compacted, layout = self._decoder.decode(blob)
        if layout != self.layout:
            raise ValueError(f"state layout {layout}, this version reads {self.layout}")
        tiles = self._tiles_from_wire(wire_tiles) if self.groups else []
        if len(compacted) != len(self.kinds):
            raise ValueError(f"state has {len(compacted)} accumulators, the view {len(self.kinds)}")
        self._accumulators_from_wire(compacted)
        return State(horizon, max_ts, buffer, compacted, tiles)

    def _compile_from_wire(self) -> Callable[[list[Any]], None]:
        """Straight-line code turning the stored accumulators into their in-memory form
        (``AggKind.from_wire``, inlined where the kind gives its code)."""
        lines = ["def from_wire(c):"]
        namespace: dict[str, Any] = {}
        for i, from_wire in self._from_wire:
            code = self.kinds[i].from_wire_code(f"c[{i}]")
            if code is None:
                namespace[f"_from_wire{i}"] = from_wire
                code = f"_from_wire{i}(c[{i}])"
            lines.append(f"    c[{i}] = {code}")
        lines.append("    return None")
        exec(compile("\n".join(lines) + "\n", "<featurepipe:from_wire>", "exec"), namespace)
        return namespace["from_wire"]  # type: ignore[no-any-return]

    def _tiles_to_wire(self, tiles: list[dict[int, list[Any]]]) -> list[Any]:
        """Each hop's tiles as [tile index, [accumulators]] in index order (deterministic)."""
        out = []
        for (_, _, idx), group in zip(self.groups, tiles, strict=True):
            convert = [(j, self.kinds[i].to_wire) for j, i in enumerate(idx) if i in self._wired]
            wire = []
            for i in sorted(group):
                accs = group[i]
                if convert:
                    accs = list(accs)
                    for j, to_wire in convert:
                        accs[j] = to_wire(accs[j])
                wire.append([i, accs])
            out.append(wire)
        return out

    def _tiles_from_wire(self, wire: list[list[list[Any]]]) -> list[dict[int, list[Any]]]:
        if len(wire) != len(self.groups):
            raise ValueError(f"state has {len(wire)} tile groups, the view {len(self.groups)}")
        out = []
        for (_, _, idx), group in zip(self.groups, wire, strict=True):
            convert = [(j, self.kinds[i].from_wire) for j, i in enumerate(idx) if i in self._wired]
            tiles: dict[int, list[Any]] = {}
            for i, accs in group:
                if len(accs) != len(idx):
                    raise ValueError(f"a tile has {len(accs)} accumulators, the hop {len(idx)}")
                for j, from_wire in convert:
                    accs[j] = from_wire(accs[j])
                tiles[i] = accs
            out.append(tiles)
        return out


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while states are built in bulk (the stream
    worker's batch, materialize's replay, parity's replay). Those allocate millions of small
    containers (events, records, accumulators) and form no reference cycles: every few hundred
    allocations the collector would scan the young ones, and every so often every state built
    so far (a fifth to a quarter of the time, and pauses of up to 300 ms in the worker)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_BIGINT = 1


def _wire(obj: Any) -> Any:
    """Replace integers outside msgpack's 64-bit range by extension objects."""
    if type(obj) is int:
        if -(2**63) <= obj < 2**64:
            return obj
        size = (obj.bit_length() + 8) // 8
        return msgspec.msgpack.Ext(_BIGINT, obj.to_bytes(size, "big", signed=True))
    if isinstance(obj, list | tuple):
        return [_wire(x) for x in obj]
    return obj


def _from_ext(code: int, data: memoryview) -> int:
    if code != _BIGINT:
        raise ValueError(f"unknown msgpack extension type {code} in feature state")
    return int.from_bytes(data, "big", signed=True)


# a record's timestamp, the key of the buffer's bisections (a C-level getter: bisection calls it
# at every probe)
_ts = itemgetter(REC_TS)
