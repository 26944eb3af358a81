"""Served-feature log: a sample of lookups, with what was served, as rolling Parquet files,
written by the HTTP server and by ``FeatureStore(log_dir=...)`` (in-process lookups, ``get``).

The request path only draws the sample and puts the lookup on a bounded queue (never blocking:
a full queue drops the lookup and counts it); a background thread turns lookups into rows and
writes a file every ``flush_rows`` rows or ``flush_seconds`` seconds, whichever comes first,
and at shutdown. Each file is written under a temporary name and renamed when complete, so a
reader never sees a partial file. The schema (one row per request row, view and feature) is
``SCHEMA``, documented in docs/serving-http.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import polars as pl

from featurepipe.ir.types import DType
from featurepipe.online.lookup import copied

log = logging.getLogger("featurepipe.served_log")


@dataclass
class Lookup:
    """One answered lookup: what was asked and the rows read."""

    wanted: dict[str, list[str]]  # view -> features, in request order
    keys: dict[str, list[Any]]  # entity key -> one value per request row
    request: dict[str, list[Any]] | None
    at_us: int  # the request time the windows were finalized at
    rows: list[dict[str, Any]]  # per request row: features and <view>_found
    fingerprints: dict[str, str]  # view -> the version served


# ---- values as the HTTP endpoints send them (JSON) ----------------------------------------
# JSON has no NaN or infinity, and a JSON encoder would turn them into null silently: such
# floats are the strings "NaN", "Infinity" and "-Infinity" (as protobuf's JSON mapping does).
# Datetime features (epoch microseconds inside featurepipe) are RFC 3339 text in UTC. Anything
# else (numbers, strings, booleans, null, lists, maps) is sent as it is.

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def rfc3339(us: int) -> str:
    """Epoch microseconds as RFC 3339 UTC text, fractional digits only when needed."""
    t = _EPOCH + timedelta(microseconds=us)
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    frac = us % 1_000_000
    if frac == 0:
        return base + "Z"
    if frac % 1000 == 0:
        return f"{base}.{frac // 1000:03d}Z"
    return f"{base}.{frac:06d}Z"


def _float(v: Any) -> Any:
    if v is None or math.isfinite(v):
        return v
    return "NaN" if v != v else _NON_FINITE[v]


def _datetime(v: Any) -> Any:
    return None if v is None else rfc3339(v)


def _generic(v: Any) -> Any:
    """Lists and maps (and what they hold) with their non-finite floats spelled out."""
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, list | tuple):
        return [_generic(x) for x in v]
    if isinstance(v, dict):  # a map: keys as JSON object keys (text), in the map's order
        return {_key(k): _generic(x) for k, x in v.items()}
    return v


def _key(k: Any) -> str:
    """A map key as the JSON text of the key (``true``, ``42``, or the string itself)."""
    if isinstance(k, bool):
        return "true" if k else "false"
    return k if isinstance(k, str) else str(k)


def column_encoder(dtype: DType | None) -> Callable[[list[Any]], list[Any]] | None:
    """A function making a column of ``dtype`` JSON-safe; None when it already is."""
    if dtype is DType.FLOAT:
        return lambda column: [v if v is None or math.isfinite(v) else _float(v) for v in column]
    if dtype is DType.DATETIME:
        return lambda column: [_datetime(v) for v in column]
    if dtype in (DType.INT, DType.BOOL, DType.STR):
        return None
    return lambda column: [_generic(v) for v in column]


SCHEMA: dict[str, Any] = {
    "request_id": pl.String,  # one per HTTP request
    "endpoint": pl.String,  # /features or /get-online-features
    "served_at": pl.Datetime("us", "UTC"),  # when the answer was made
    "request_time": pl.Datetime("us", "UTC"),  # the time the windows were finalized at
    "row": pl.Int32,  # the request row, from 0
    "entity": pl.String,  # JSON object: entity key -> value of this row
    "request": pl.String,  # JSON object: request field -> value of this row; null if none
    "view": pl.String,
    "fingerprint": pl.String,  # the view version served
    "found": pl.Boolean,  # whether the entity had online state (else the defaults)
    "feature": pl.String,
    "dtype": pl.String,  # int, float, bool, str, datetime
    "value": pl.String,  # JSON text of the value, as the /features endpoint sends it
    "value_num": pl.Float64,  # numbers and bools (1.0/0.0) as floats; null otherwise
}
_NUMERIC = (DType.INT, DType.FLOAT, DType.BOOL)
_encode = msgspec.json.encode
_IDLE: Any = object()  # what the thread gets when nothing came before the next flush


def _snapshot(got: Lookup) -> Lookup:
    """``got`` with its own rows (lists and maps copied) and plain key and request values
    (a NumPy scalar, which a lookup accepts, as the Python number it stands for)."""
    rows = [{k: copied(v) for k, v in row.items()} for row in got.rows]
    keys = {k: [_plain(v) for v in col] for k, col in got.keys.items()}
    request = (
        None
        if got.request is None
        else {k: [_plain(v) for v in col] for k, col in got.request.items()}
    )
    return Lookup(dict(got.wanted), keys, request, got.at_us, rows, dict(got.fingerprints))


def _plain(v: Any) -> Any:
    if v is None or type(v) in (bool, int, float, str):
        return v
    item = getattr(v, "item", None)  # NumPy scalars (numpy.str_ too)
    return item() if callable(item) else v


class ServedLog:
    """Samples lookups and writes them from a background thread.

    Parameters
    ----------
    directory:
        Where the Parquet files go (created).
    sample:
        The share of lookups logged, 0 to 1.
    dtypes:
        view -> feature -> declared type.
    dropped, written:
        Called when lookups or rows are lost (with why: ``queue_full`` and ``unencodable``
        count lookups, ``write_failed`` rows) and when rows are written (metrics).
    """

    def __init__(
        self,
        directory: str | Path,
        sample: float,
        dtypes: dict[str, dict[str, DType]],
        *,
        queue_size: int = 10_000,
        flush_rows: int = 50_000,
        flush_seconds: float = 30.0,
        dropped: Callable[[str, int], None] = lambda why, n: None,
        written: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sample = sample
        self.dtypes = dtypes
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._dropped = dropped
        self._written = written
        self._queue: queue.Queue[tuple[str, str, int, Lookup] | None] = queue.Queue(queue_size)
        self._seq = 0
        self._random = random.Random()
        self._thread = threading.Thread(target=self._run, name="served-log", daemon=True)
        self._thread.start()

    def offer(self, endpoint: str, request_id: str | None, got: Lookup) -> None:
        """Log ``got`` if it falls in the sample; never blocks. ``request_id``: the client's
        (its ``X-Request-ID`` header, to join the log with outcomes), else a new one."""
        if self.sample < 1.0 and self._random.random() >= self.sample:
            return
        rid = request_id or uuid.uuid4().hex
        try:  # a snapshot: the caller may change its rows (lists, maps) once answered
            self._queue.put_nowait((endpoint, rid, time.time_ns() // 1000, _snapshot(got)))
        except queue.Full:
            self._dropped("queue_full", 1)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the thread."""
        with contextlib.suppress(queue.Full):  # a wedged thread: give up after the timeout
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    # -- background thread ---------------------------------------------------------------------
    def _run(self) -> None:
        columns: dict[str, list[Any]] = {k: [] for k in SCHEMA}
        deadline = time.monotonic() + self.flush_seconds
        while True:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                item = _IDLE
            if item is None:
                self._flush(columns)
                return
            if item is not _IDLE:
                try:
                    self._rows(item, columns)
                except Exception:  # a value the log cannot encode must not stop the thread
                    log.exception("served-feature log: a lookup could not be logged")
                    self._dropped("unencodable", 1)
            full = len(columns["row"]) >= self.flush_rows
            if full or time.monotonic() >= deadline:
                self._flush(columns)
                deadline = time.monotonic() + self.flush_seconds

    def _rows(self, item: tuple[str, str, int, Lookup], out: dict[str, list[Any]]) -> None:
        endpoint, request_id, served_at, got = item
        n = len(got.rows)
        key_names = list(got.keys)
        entity = [_encode({k: got.keys[k][i] for k in key_names}).decode() for i in range(n)]
        req = got.request
        request: list[str | None] = (
            [None] * n
            if not req
            else [_encode({k: _generic(req[k][i]) for k in req}).decode() for i in range(n)]
        )
        for view, feats in got.wanted.items():
            found = [r[f"{view}_found"] for r in got.rows]
            fingerprint = got.fingerprints[view]
            for f in feats:
                dtype = self.dtypes[view][f]
                raw = [r[f] for r in got.rows]
                encode = column_encoder(dtype)
                shown = raw if encode is None else encode(raw)
                numeric = dtype in _NUMERIC
                for i in range(n):
                    v = raw[i]
                    out["request_id"].append(request_id)
                    out["endpoint"].append(endpoint)
                    out["served_at"].append(served_at)
                    out["request_time"].append(got.at_us)
                    out["row"].append(i)
                    out["entity"].append(entity[i])
                    out["request"].append(request[i])
                    out["view"].append(view)
                    out["fingerprint"].append(fingerprint)
                    out["found"].append(found[i])
                    out["feature"].append(f)
                    out["dtype"].append(str(dtype))
                    out["value"].append(_encode(shown[i]).decode())
                    out["value_num"].append(float(v) if numeric and v is not None else None)

    def _flush(self, columns: dict[str, list[Any]]) -> None:
        rows = len(columns["row"])
        if not rows:
            return
        data = {
            k: pl.Series(k, v, dtype=pl.Int64 if SCHEMA[k] == pl.Datetime("us", "UTC") else None)
            for k, v in columns.items()
        }
        for v in columns.values():
            v.clear()
        try:
            frame = pl.DataFrame(data).with_columns(
                pl.col("served_at", "request_time").cast(pl.Datetime("us", "UTC"))
            )
            frame = frame.cast({k: t for k, t in SCHEMA.items()})
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            self._seq += 1
            name = f"served-{stamp}-{os.getpid()}-{self._seq:06d}.parquet"
            tmp = self.directory / f".{name}.tmp"
            frame.write_parquet(tmp)
            os.replace(tmp, self.directory / name)
            self._written(rows)
        except Exception:  # a full disk must not stop serving: count the loss, keep going
            log.exception("served-feature log: %d rows could not be written", rows)
            self._dropped("write_failed", rows)
