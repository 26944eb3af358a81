"""In-process parity: replay an event log through the per-event evaluator and compare every
sampled query with the Polars batch plan, bit for bit.

The log's row order is its arrival order. A query made at some point of the replay is compared
with the batch value over the events that had *arrived* by then (``__arrived``), so out-of-order
events are held to the bi-temporal rule.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import polars.selectors as cs

from featurepipe.batch.sources import SourceReport, read_events
from featurepipe.compile.polars_aggs import ARRIVED, SEQ, TS, BatchProgram
from featurepipe.compile.polars_rows import PL_TYPES
from featurepipe.compile.python_state import State, ViewProgram
from featurepipe.dsl.definitions import FeatureView, Source
from featurepipe.errors import DataError
from featurepipe.ir.timebase import format_us
from featurepipe.ir.types import DType


@dataclass
class FeatureResult:
    name: str
    dtype: DType
    compared: int = 0
    mismatched: int = 0
    first: dict[str, Any] | None = None


@dataclass
class ParityReport:
    view: str
    fingerprint: str
    events: int
    queries: int
    skipped_beyond_lateness: int
    skipped_null_entity: int
    features: list[FeatureResult] = field(default_factory=list)
    seconds_stream: float = 0.0
    seconds_batch: float = 0.0

    @property
    def mismatches(self) -> int:
        return sum(f.mismatched for f in self.features)

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values (``featurepipe parity --json``); the time of a
        first difference as ISO text (``time``) and epoch microseconds (``time_us``)."""
        return {
            "view": self.view,
            "fingerprint": self.fingerprint,
            "ok": self.ok,
            "events": self.events,
            "queries": self.queries,
            "values": self.queries * len(self.features),
            "mismatches": self.mismatches,
            "skipped_beyond_lateness": self.skipped_beyond_lateness,
            "skipped_null_entity": self.skipped_null_entity,
            "seconds_stream": self.seconds_stream,
            "seconds_batch": self.seconds_batch,
            "features": [
                {
                    "name": f.name,
                    "type": str(f.dtype),
                    "compared": f.compared,
                    "mismatched": f.mismatched,
                    "first_difference": None if f.first is None else show_first(f.first),
                }
                for f in self.features
            ],
        }


def show_first(first: dict[str, Any]) -> dict[str, Any]:
    """A first difference with its query time as ISO text too (``time``)."""
    return {
        "entity": first["entity"],
        "time": format_us(first["time_us"]),
        "time_us": first["time_us"],
        "arrived": first["arrived"],
        "batch": first["batch"],
        "stream": first["stream"],
    }


def source_log(
    source: Source, *, root: str | Path = ".", path: str | Path | None = None
) -> tuple[pl.DataFrame, SourceReport]:
    """The event log of ``source`` as the batch path reads it: its Parquet files (a file, a
    directory, a glob; relative to ``root``), contract-checked (rows breaking the contract are
    left out and counted in the report), in arrival order (the arrival column, else file then
    row order). Returned as an event log: the contract's fields only, datetimes as UTC
    datetimes, row order = arrival order, ready for ``run_parity`` or a Kafka topic."""
    lf, report = read_events(source, root=root, path=path)
    fields = list(source.fields)
    log = lf.select(fields).collect()
    datetimes = [n for n, (dtype, _) in source.fields.items() if dtype is DType.DATETIME]
    return log.with_columns(pl.col(n).cast(pl.Datetime("us", "UTC")) for n in datetimes), report


def normalize_events(view: FeatureView, events: pl.DataFrame) -> pl.DataFrame:
    """Datetimes to int64 epoch micros (UTC), arrival order as ``__seq``, checks the contract."""
    missing = [f for f in view.source.fields if f not in events.columns]
    if missing:
        raise DataError(
            f"view '{view.name}': event log lacks field(s) {missing} of source '{view.source.name}'"
        )
    ts_col = view.source.timestamp
    nulls = events[ts_col].null_count()
    if nulls:
        row = events.with_row_index("__row").filter(pl.col(ts_col).is_null())["__row"][0]
        raise DataError(
            f"view '{view.name}': {nulls} event(s) have a null '{ts_col}' (first at row {row})"
        )
    out = events.with_columns(
        cs.datetime().dt.replace_time_zone(None).cast(pl.Datetime("us")).cast(pl.Int64)
    )
    return out.with_columns(
        pl.col(ts_col).alias(TS), pl.int_range(pl.len(), dtype=pl.Int64).alias(SEQ)
    )


def _float_bits(s: pl.Series) -> pl.Series:
    """The IEEE bit patterns of a float column (nulls stay null): -0.0 != 0.0, NaN by payload."""
    s = s.cast(pl.Float64)
    bits = pl.Series(s.name, s.fill_null(0.0).to_numpy().astype(np.float64).view(np.int64))
    return pl.select(pl.when(s.is_null()).then(None).otherwise(bits)).to_series()


def run_parity(
    view: FeatureView,
    events: pl.DataFrame,
    *,
    sample: float = 1.0,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> ParityReport:
    """Replay ``events`` (arrival order) through both paths and compare every query point.

    Query points: at each sampled event's own timestamp just before ingesting it, midway
    between that event and the entity's previous one, and after the log at the last event
    plus each window length (an exact window edge) and plus a day past the longest window.
    """
    import time

    rng = random.Random(seed)
    prog = ViewProgram(view.ir)
    ev = normalize_events(view, events)
    key = view.entity.key
    ts_col = view.source.timestamp
    names = list(view.source.fields)
    states: dict[Any, State] = {}
    last_ts: dict[Any, int] = {}
    q_key: list[Any] = []
    q_ts: list[int] = []
    q_arr: list[int] = []
    expected: list[tuple[Any, ...]] = []
    skipped = 0
    null_entity = 0

    def ask(e: Any, t: int, arrived: int) -> None:
        nonlocal skipped
        st = states.get(e)
        if st is not None and not prog.can_answer(st, t):
            skipped += 1
            return
        q_key.append(e)
        q_ts.append(t)
        q_arr.append(arrived)
        expected.append(prog.query(st, t))

    t0 = time.perf_counter()
    for seq, row in enumerate(ev.select(names).iter_rows()):
        event = dict(zip(names, row, strict=True))
        e = event[key]
        if e is None:
            null_entity += 1
            continue
        t = event[ts_col]
        if rng.random() < sample:
            ask(e, t, seq)
            prev = last_ts.get(e)
            if prev is not None and prev != t:
                ask(e, (prev + t) // 2, seq)
        st = states.get(e)
        if st is None:
            st = states[e] = prog.new_state()
        prog.ingest(st, event, seq)
        if t > last_ts.get(e, t - 1):
            last_ts[e] = t
        if progress is not None and seq % 10_000 == 0:
            progress(seq)
    n = ev.height
    windows = sorted({a.window_us for a in view.ir.aggs if a.window_us is not None})
    tail = [*windows, view.ir.max_window_us + 86_400_000_000]
    for e, t in last_ts.items():
        for w in tail:
            ask(e, t + w, n)
    seconds_stream = time.perf_counter() - t0

    t1 = time.perf_counter()
    key_type = ev.schema[key]
    queries = pl.DataFrame(
        {key: pl.Series(q_key, dtype=key_type), TS: q_ts, ARRIVED: q_arr},
        schema={key: key_type, TS: pl.Int64, ARRIVED: pl.Int64},
    )
    batch = BatchProgram(view.ir).features(ev.lazy(), queries)
    seconds_batch = time.perf_counter() - t1

    report = ParityReport(
        view=view.name,
        fingerprint=view.fingerprint,
        events=n,
        queries=len(expected),
        skipped_beyond_lateness=skipped,
        skipped_null_entity=null_entity,
        seconds_stream=seconds_stream,
        seconds_batch=seconds_batch,
    )
    report.features = compare(view, batch, expected, q_key, q_ts, q_arr)
    return report


def compare(
    view: FeatureView,
    batch: pl.DataFrame,
    expected: list[tuple[Any, ...]],
    q_key: list[Any],
    q_ts: list[int],
    q_arr: list[int],
) -> list[FeatureResult]:
    """Per feature: values from the per-event side vs the batch frame, bit for bit."""
    results = []
    for j, feat in enumerate(view.ir.features):
        dtype = feat.expr.dtype
        stream_col = pl.Series(
            feat.name, [r[j] for r in expected], dtype=PL_TYPES[dtype], strict=True
        )
        batch_col = batch[feat.name]
        if dtype is DType.FLOAT:
            same = _float_bits(batch_col).eq_missing(_float_bits(stream_col))
        else:
            same = batch_col.cast(PL_TYPES[dtype]).eq_missing(stream_col)
        bad = (~same).arg_true()
        result = FeatureResult(feat.name, dtype, compared=len(expected), mismatched=bad.len())
        if bad.len():
            i = int(bad[0])
            result.first = {
                "entity": q_key[i],
                "time_us": q_ts[i],
                "arrived": q_arr[i],
                "batch": _show(batch_col[i]),
                "stream": _show(expected[i][j]),
            }
        results.append(result)
    return results


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v!r} (0x{struct.unpack('<Q', struct.pack('<d', v))[0]:016x})"
    return repr(v)
