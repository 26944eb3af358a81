"""Per-event compiler, aggregation level: explicit per-entity state, one event at a time.

State of one entity for one view::

    [horizon, max_ts, buffer, compacted]

``buffer`` holds the retained events sorted by (ts, arrival seq), each as
``[ts, seq, mask, p0, p1, ...]`` where bit i of ``mask`` says the event passes aggregation i's
``where`` and ``pi`` is its *prepared* input (fixed-point integer for float sums, canonical float
for min/max, ...). Events older than ``horizon`` are folded into ``compacted`` (lifetime
accumulators only) and dropped, so state stays bounded. ``horizon`` trails the newest event by
the longest window plus the view's lateness; a query at T is answered exactly iff
T >= max_ts - lateness (see docs/semantics.md).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from featurepipe import kernels as k
from featurepipe.compile.python_rows import CodeGen
from featurepipe.errors import StateError
from featurepipe.ir import nodes as ir
from featurepipe.ir.types import DType

State = list[Any]
_FLAG = {"+": 2, "-": 3, "nan": 4}  # saturation flag -> slot of a sum accumulator
NO_TS = -(2**63)


def _fixed_code(x: str) -> str:
    """Inline ``kernels.to_fixed`` for the common in-range case (NaN and +-big fall through)."""
    big = repr(k.BIG)
    return f"(round({x} * {k.SCALE!r}) if -{big} < {x} < {big} else _k.to_fixed({x}))"


def _prepare_code(agg: ir.Agg, v: str) -> str:
    """Python expression turning a raw input value into what the accumulators hold."""
    arg_t = agg.arg.dtype if agg.arg is not None else None
    if agg.kind in ("sum", "mean") and arg_t is DType.FLOAT:
        return f"(None if {v} is None else {_fixed_code(v)})"
    if agg.kind in ("var", "std"):
        return f"(None if {v} is None else ({_fixed_code(v)}, _k.to_fixed({v} * {v})))"
    if agg.kind in ("min", "max") and arg_t is DType.FLOAT:
        return f"(None if {v} is None else ({v} + 0.0 if {v} == 0.0 else {v}))"
    if agg.kind == "count_distinct" and arg_t is DType.FLOAT:
        return f"(None if {v} is None else _k.distinct_key({v}))"
    return v


class ViewProgram:
    """The per-event executor of one view."""

    def __init__(self, view: ir.ViewIR) -> None:
        self.view = view
        self.aggs = view.aggs
        self.max_window = view.max_window_us
        self.lateness = view.lateness_us
        self.lifetime = [i for i, a in enumerate(self.aggs) if a.window_us is None]
        self.row_source, self._row = self._compile_rows()
        self.final_source, self._final = self._compile_features()
        self.compact_source, self._compact_fn = self._compile_compaction()
        self.query_source, self._aggregate = self._compile_query()
        self.feature_names = [f.name for f in view.features]
        self._float_outputs = [
            j for j, f in enumerate(view.features) if f.expr.dtype is DType.FLOAT
        ]
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(ext_hook=_from_ext)

    # -- compilation -----------------------------------------------------------------------
    def _compile_rows(self) -> tuple[str, Callable[..., Any]]:
        gen = CodeGen(lambda n: f"ev[{n.name!r}]" if isinstance(n, ir.Field) else None)
        outs: list[str] = []
        mask_terms: list[str] = []
        shared: dict[str, str] = {}  # identical prepared values are computed once
        for i, agg in enumerate(self.aggs):
            v = gen.emit(agg.arg) if agg.arg is not None else "True"
            code = _prepare_code(agg, v)
            if code not in shared:
                shared[code] = f"p{i}"
                gen.lines.append(f"p{i} = {code}")
            outs.append(shared[code])
            if agg.where is None:
                mask_terms.append(str(1 << i))
            else:
                w = gen.emit(agg.where)
                mask_terms.append(f"({1 << i} if {w} is True else 0)")
        gen.lines.append("mask = " + (" | ".join(mask_terms) if mask_terms else "0"))
        ts = f"ev[{self.view.timestamp!r}]"
        return gen.function("prepare_event", "ev, seq", [ts, "seq", "mask", *outs], as_list=True)

    def _compile_compaction(self) -> tuple[str, Callable[..., Any]]:
        """Straight-line code folding one retained event into the lifetime accumulators, with
        the fold rules the query path uses (``_fold_lines``); generated because compaction runs
        for nearly every ingested event."""
        lines = ["def compact(c, rec):", "    mask = rec[2]"]
        for i in self.lifetime:
            lines.append(f"    a{i} = c[{i}]")
            lines += [f"    {ln}" for ln in _fold_lines(self.aggs[i], i)]
            lines.append(f"    c[{i}] = a{i}")
        lines.append("    return None")
        src = "\n".join(lines) + "\n"
        namespace: dict[str, Any] = {"_FLAG": _FLAG}
        exec(compile(src, "<featurepipe:compact>", "exec"), namespace)
        return src, namespace["compact"]

    def _compile_query(self) -> tuple[str, Callable[..., Any]]:
        """Straight-line code computing every aggregation at T: one pass over the retained
        events per distinct window (``_fold_lines``), then ``_finalize``."""
        lines = [
            "def aggregate(buf, compacted, t):",
            "    hi = _bisect(buf, t, key=_ts)",
            f"    out = [None] * {len(self.aggs)}",
        ]
        windows: dict[int | None, list[int]] = {}
        for i, agg in enumerate(self.aggs):
            windows.setdefault(agg.window_us, []).append(i)
        for w, idx in windows.items():
            lo = "0" if w is None else f"_bisect(buf, t - {w}, 0, hi, key=_ts)"
            lines.append(f"    lo = {lo}")
            for i in idx:
                agg = self.aggs[i]
                init = f"_copy(_AGGS[{i}], compacted[{i}])" if w is None else f"_empty(_AGGS[{i}])"
                lines.append(f"    a{i} = {init}")
            lines.append("    for j in range(lo, hi):")
            lines.append("        rec = buf[j]")
            lines.append("        mask = rec[2]")
            for i in idx:
                lines += [f"        {ln}" for ln in _fold_lines(self.aggs[i], i)]
            for i in idx:
                lines.append(f"    out[{i}] = _finalize(_AGGS[{i}], a{i})")
        lines.append("    return out")
        src = "\n".join(lines) + "\n"
        namespace: dict[str, Any] = {
            "_bisect": bisect_left,
            "_ts": _ts,
            "_copy": _copy_acc,
            "_empty": _empty_acc,
            "_finalize": _finalize,
            "_AGGS": self.aggs,
            "_FLAG": _FLAG,
        }
        exec(compile(src, "<featurepipe:aggregate>", "exec"), namespace)
        return src, namespace["aggregate"]

    def _compile_features(self) -> tuple[str, Callable[..., Any]]:
        index = {a: i for i, a in enumerate(self.aggs)}

        def leaf(n: ir.Node) -> str | None:
            if isinstance(n, ir.Agg):
                return f"aggs[{index[n]}]"
            if isinstance(n, ir.FeatureRef):
                return gen.names[self.view.feature(n.name).expr]
            return None

        gen = CodeGen(leaf)
        order = _dependency_order(self.view)
        outs = {f.name: gen.emit(f.expr) for f in order}
        return gen.function("finish_features", "aggs", [outs[f.name] for f in self.view.features])

    # -- state -----------------------------------------------------------------------------
    def new_state(self) -> State:
        return [NO_TS, NO_TS, [], [_empty_acc(a) for a in self.aggs]]

    def ingest(self, state: State, event: Mapping[str, Any], seq: int) -> None:
        """Fold one event (datetimes as epoch micros) into the entity's state."""
        rec = self._row(event, seq)  # [ts, seq, mask, prepared inputs...]
        ts = rec[0]
        if ts < state[0]:
            self._compact(state[3], rec)  # very late: only lifetime accumulators can use it
        else:
            buf = state[2]
            pos = len(buf)
            if pos and buf[-1][0] > ts:
                pos = bisect_right(buf, ts, key=_ts)
            buf.insert(pos, rec)
        if ts > state[1]:
            state[1] = ts
            horizon = ts - self.max_window - self.lateness
            if horizon > state[0]:
                state[0] = horizon
                self._evict(state)

    def _evict(self, state: State) -> None:
        buf = state[2]
        horizon = state[0]
        cut = 0
        end = len(buf)
        while cut < end and buf[cut][0] < horizon:  # usually 0-2 steps: cheaper than bisection
            cut += 1
        if cut:
            compact, compacted = self._compact_fn, state[3]
            for rec in buf[:cut]:
                compact(compacted, rec)
            del buf[:cut]

    def _compact(self, compacted: list[Any], rec: list[Any]) -> None:
        self._compact_fn(compacted, rec)

    def can_answer(self, state: State, t: int) -> bool:
        return bool(state[1] == NO_TS or t >= state[1] - self.lateness)

    def query(self, state: State | None, t: int) -> tuple[Any, ...]:
        """Every feature of the view as of T (events with ts < T), in declaration order."""
        if state is None:
            state = self.new_state()
        elif not self.can_answer(state, t):
            raise StateError(
                f"view '{self.view.name}': query at {t} is more than the view's lateness "
                f"behind the newest event ({state[1]}); retained state cannot answer it"
            )
        values = self._aggregate(state[2], state[3], t)
        out = list(self._final(values))
        for j in self._float_outputs:  # one NaN on the way out: sign/payload carry no meaning
            v = out[j]
            if v is not None and v != v:
                out[j] = math.nan
        return tuple(out)

    # -- bytes -----------------------------------------------------------------------------
    def dumps(self, state: State) -> bytes:
        """msgpack of the state; deterministic (sets are sorted) so equal states give equal bytes.

        Exact fixed-point sums can exceed 64 bits; such integers travel as msgpack extension
        type 1 (big-endian two's complement)."""
        compacted = [sorted(a, key=_sort_key) if isinstance(a, set) else a for a in state[3]]
        body = [state[0], state[1], state[2], compacted]
        try:
            return self._encoder.encode(body)
        except OverflowError:
            return self._encoder.encode(_wire(body))

    def loads(self, blob: bytes) -> State:
        h, m, buf, compacted = self._decoder.decode(blob)
        # var/std inputs come back as [q, q2] lists: every reader indexes them, so they stay lists
        for i, agg in enumerate(self.aggs):
            if agg.kind == "count_distinct":
                compacted[i] = set(compacted[i])
            elif agg.kind in ("first", "last") and compacted[i] is not None:
                compacted[i] = tuple(compacted[i])
        return [h, m, buf, compacted]


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


def _ts(rec: list[Any]) -> int:
    return int(rec[0])


def _sort_key(v: Any) -> tuple[str, Any]:
    return (type(v).__name__, v)


def _dependency_order(view: ir.ViewIR) -> list[ir.Feature]:
    done: dict[str, ir.Feature] = {}

    def visit(f: ir.Feature) -> None:
        if f.name in done:
            return
        for n in f.expr.walk():
            if isinstance(n, ir.FeatureRef):
                visit(view.feature(n.name))
        done[f.name] = f

    for f in view.features:
        visit(f)
    return list(done.values())


# ---- accumulators: one small, order-independent record per aggregation ----------------------
# count: n | sum/mean: [n, total, pos, neg, nan] | var/std: [n, s1, s2, flags]
# min/max: [n, best, nan] | first/last: (ts, seq, value) or None | count_distinct: set


def _fold_lines(agg: ir.Agg, i: int) -> list[str]:
    """Inline code folding ``rec`` into accumulator ``a{i}``: the one statement of the fold
    rules, shared by compaction and queries (the accumulator shapes are listed above)."""
    bit, j, kind = 1 << i, 3 + i, agg.kind
    head = f"if mask & {bit}:"
    if kind == "count":
        return [f"if mask & {bit} and rec[{j}] is not None: a{i} += 1"]
    if kind == "first":
        return [
            head,
            f"    if a{i} is None or (rec[0], rec[1]) < (a{i}[0], a{i}[1]): a{i} = (rec[0], rec[1], rec[{j}])",
        ]
    if kind == "last":
        return [
            head,
            f"    if a{i} is None or (rec[0], rec[1]) > (a{i}[0], a{i}[1]): a{i} = (rec[0], rec[1], rec[{j}])",
        ]
    lines = [head, f"    p = rec[{j}]", "    if p is not None:"]
    if kind == "count_distinct":
        return [*lines, f"        a{i}.add(p)"]
    if kind in ("sum", "mean"):
        return [
            *lines,
            f"        a{i}[0] += 1",
            f"        if type(p) is int: a{i}[1] += p",
            f"        else: a{i}[_FLAG[p]] += 1",
        ]
    if kind in ("var", "std"):
        return [
            *lines,
            f"        a{i}[0] += 1",
            "        if type(p[0]) is int and type(p[1]) is int:",
            f"            a{i}[1] += p[0]",
            f"            a{i}[2] += p[1]",
            f"        else: a{i}[3] += 1",
        ]
    better = "<" if kind == "min" else ">"
    return [
        *lines,
        f"        a{i}[0] += 1",
        f"        if p != p: a{i}[2] += 1",
        f"        elif a{i}[1] is None or p {better} a{i}[1]: a{i}[1] = p",
    ]


def _empty_acc(agg: ir.Agg) -> Any:
    kind = agg.kind
    if kind == "count":
        return 0
    if kind in ("sum", "mean"):
        return [0, 0, 0, 0, 0]
    if kind in ("var", "std"):
        return [0, 0, 0, 0]
    if kind in ("min", "max"):
        return [0, None, 0]
    if kind in ("first", "last"):
        return None
    return set()


def _copy_acc(agg: ir.Agg, acc: Any) -> Any:
    if isinstance(acc, list):
        return list(acc)
    if isinstance(acc, set):
        return set(acc)
    return acc


def _finalize(agg: ir.Agg, acc: Any) -> Any:
    out = _finalize_raw(agg, acc)
    return agg.default if out is None else out


def _finalize_raw(agg: ir.Agg, acc: Any) -> Any:
    kind = agg.kind
    is_float = agg.arg is not None and agg.arg.dtype is DType.FLOAT
    if kind == "count":
        return acc
    if kind in ("first", "last"):
        return None if acc is None else acc[2]
    if kind == "count_distinct":
        return len(acc)
    if kind in ("sum", "mean"):
        n, total, pos, neg, nan = acc
        if n == 0:
            return None
        if is_float:
            s = k.finalize_float_sum(total, pos, neg, nan)
        elif kind == "sum":
            return total if k.INT_MIN <= total <= k.INT_MAX else None
        else:
            s = float(total)
        return s if kind == "sum" else s / float(n)
    if kind in ("var", "std"):
        n, s1, s2, flags = acc
        var = k.finalize_var(n, float(s1) * k.INV_SCALE, float(s2) * k.INV_SCALE, flags)
        if var is None or kind == "var":
            return var
        return math.sqrt(var) if var == var else var
    n, best, nan = acc
    if n == 0:
        return None
    return math.nan if nan else best
