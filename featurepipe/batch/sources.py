"""Reading a source's events from Parquet: files, globs and hive-partitioned directories.

The Parquet schema is checked against the pydantic contract per file. Rows that break the
contract (null in a required field, unparsable timestamp, value of the wrong type) are never
coerced: they are counted, reported with examples and written to a quarantine file. Output is a
lazy frame in the shape the batch compiler reads: datetimes as int64 epoch microseconds,
``__ts`` (event time) and ``__seq`` (arrival order: the arrival column if the source declares
one, else file order then row order).

The rules are the stream's, with the same reason texts (``featurepipe.ir.contract``): text that
reads as a non-finite or out-of-range number (``NaN``, ``inf``, ``1e400``) where a number is
expected; a column name given twice (every row of that file); a number, or text that reads as
one, for a datetime; an event time outside [1970, 2100) or more than the future tolerance past
the wall clock of the run (settings: ``FEATUREPIPE_FUTURE_TOLERANCE``, default one day). A NaN
or infinity stored in a float column is a float value, not text, and is kept.
"""

from __future__ import annotations

import glob
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from featurepipe.compile.polars_aggs import SEQ, TS
from featurepipe.dsl.definitions import Source
from featurepipe.errors import DataError
from featurepipe.ir.contract import (
    DATETIME_NUMBER,
    DUPLICATE_KEY,
    NON_FINITE,
    NOT_DATETIME,
    NOT_INT64,
    NULL_REQUIRED,
    NUMBER_TEXT,
    OUT_OF_RANGE,
    future_limit_us,
    in_future,
    not_valid,
    reason,
)
from featurepipe.ir.timebase import MAX_US, MIN_US, as_utc, to_epoch_us
from featurepipe.ir.types import DType
from featurepipe.settings import future_tolerance as configured_tolerance

ROW = "__row"
FILE = "__file"
REASON = "__reason"

_COMPATIBLE: dict[DType, tuple[type[pl.DataType], ...]] = {
    DType.INT: (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32),
    DType.FLOAT: (pl.Float32, pl.Float64, pl.Int8, pl.Int16, pl.Int32, pl.Int64),
    DType.BOOL: (pl.Boolean,),
    DType.STR: (pl.String, pl.Categorical, pl.Enum),
    DType.DATETIME: (pl.Datetime, pl.Date, pl.String),
}
_NUMBERS = (
    pl.Int8,
    pl.Int16,
    pl.Int32,
    pl.Int64,
    pl.UInt8,
    pl.UInt16,
    pl.UInt32,
    pl.UInt64,
    pl.Float32,
    pl.Float64,
)
# read as text and checked row by row: a bad value is quarantined, not a failed job
_CHECKED_ROWS: dict[DType, tuple[type[pl.DataType], ...]] = {
    DType.INT: (pl.String, pl.Float64, pl.Float32, pl.UInt64),
    DType.FLOAT: (pl.String,),
    DType.BOOL: (pl.String,),
    DType.DATETIME: _NUMBERS,  # never a datetime: every value is quarantined, as on the stream
}
_TARGET: dict[DType, pl.DataType] = {
    DType.INT: pl.Int64(),
    DType.FLOAT: pl.Float64(),
    DType.BOOL: pl.Boolean(),
    DType.STR: pl.String(),
    DType.DATETIME: pl.Int64(),  # epoch microseconds
}


@dataclass
class SourceReport:
    """What a read found: files, rows kept, rows quarantined (with examples), time range."""

    source: str
    files: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    quarantine_file: str | None = None
    min_ts: int | None = None
    max_ts: int | None = None


def resolve_files(path: str | Path, root: str | Path = ".") -> list[Path]:
    """The Parquet files of a source path: a file, a directory (recursively), or a glob.

    A relative path resolves against ``root``; only ``path`` is a pattern, ``root`` is taken
    literally even if its name holds glob characters.
    """
    p = Path(path)
    if not p.is_absolute():
        p = Path(root) / p
    if any(ch in str(path) for ch in "*?["):
        # the root is a directory, not a pattern: escape its glob characters
        pattern = str(p) if Path(path).is_absolute() else str(Path(glob.escape(str(root))) / path)
        files = sorted(Path(f) for f in glob.glob(pattern, recursive=True))
    elif p.is_dir():
        files = sorted(p.rglob("*.parquet"))
    elif p.exists():
        files = [p]
    else:
        raise DataError(f"Parquet source path '{path}' does not exist")
    if not files:
        raise DataError(f"Parquet source path '{path}' holds no .parquet files")
    return files


def _hive_values(file: Path) -> dict[str, str]:
    return dict(part.split("=", 1) for part in file.parts if "=" in part)


def _prune(files: list[Path], start: datetime | None, end: datetime | None) -> list[Path]:
    """Drop hive partitions ``date=YYYY-MM-DD`` (or ``day=``) wholly outside [start, end)."""
    if start is None and end is None:
        return files
    kept = []
    for f in files:
        hive = _hive_values(f)
        day = hive.get("date") or hive.get("day") or hive.get("dt")
        if day is None:
            kept.append(f)
            continue
        try:
            d = as_utc(datetime.fromisoformat(day[:10]))
        except ValueError:
            kept.append(f)
            continue
        if end is not None and d >= end:  # the partition holds [d, d + 1 day)
            continue
        if start is not None and d + timedelta(days=1) <= start:
            continue
        kept.append(f)
    return kept


def check_schema(source: Source, file: Path, schema: pl.Schema) -> None:
    for name, (dtype, _nullable) in source.fields.items():
        if name not in schema:
            raise DataError(
                f"{file}: column '{name}' of source '{source.name}' is missing "
                f"(file has: {', '.join(schema.names())})"
            )
        actual = schema[name]
        ok = _COMPATIBLE[dtype] + _CHECKED_ROWS.get(dtype, ())
        if not isinstance(actual, ok):
            raise DataError(
                f"{file}: column '{name}' has type {actual}, incompatible with the contract's "
                f"{dtype} (source '{source.name}')"
            )


def _column(
    name: str, dtype: DType, actual: pl.DataType, future: tuple[int, str] | None = None
) -> tuple[pl.Expr, pl.Expr]:
    """(typed value, reason the row is bad or null) for one contract field.

    ``future``: for the event time, the latest accepted value (epoch micros: the wall clock of
    the run plus the tolerance) and the reason text of a later one.
    """
    col = pl.col(name)
    target = _TARGET[dtype]
    if dtype is DType.DATETIME:
        if isinstance(actual, _NUMBERS):  # epoch numbers are ambiguous and refused
            return pl.lit(None, target), pl.when(col.is_not_null()).then(
                pl.lit(reason(name, DATETIME_NUMBER))
            )
        if isinstance(actual, pl.String):
            parsed = col.str.to_datetime(time_zone="UTC", strict=False, time_unit="us")
        elif isinstance(actual, pl.Date):
            parsed = col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        elif isinstance(actual, pl.Datetime) and actual.time_zone is None:
            parsed = col.dt.replace_time_zone("UTC").dt.cast_time_unit("us")
        else:
            parsed = col.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
        value = parsed.dt.replace_time_zone(None).cast(pl.Int64)
        # the accepted range is the stream path's too: a 1900 or 2200 timestamp is bad input
        in_range = (value >= MIN_US) & (value < MAX_US)
        number_text = (
            col.str.contains(f"^(?:{NUMBER_TEXT})$")
            if isinstance(actual, pl.String)
            else pl.lit(False)
        )
        why = (
            pl.when(col.is_not_null() & number_text)
            .then(pl.lit(reason(name, DATETIME_NUMBER)))
            .when(col.is_not_null() & value.is_null())
            .then(pl.lit(reason(name, NOT_DATETIME)))
            .when(value.is_not_null() & ~in_range)
            .then(pl.lit(reason(name, OUT_OF_RANGE)))
        )
        if future is not None:
            why = why.when(value > future[0]).then(pl.lit(future[1]))
        return pl.when(in_range & ~number_text).then(value), why
    if isinstance(actual, _CHECKED_ROWS.get(dtype, ())):
        if dtype is DType.INT and isinstance(actual, pl.Float64 | pl.Float32):
            integral = col == col.round(0)
            value = pl.when(integral).then(col.cast(pl.Int64, strict=False))
            non_finite = col.is_nan() | col.is_infinite()
            too_large = integral & ~non_finite & value.is_null()
        elif dtype is DType.INT and isinstance(actual, pl.UInt64):
            value = col.cast(pl.Int64, strict=False)
            non_finite, too_large = pl.lit(False), value.is_null()
        elif dtype is DType.BOOL:
            low = col.str.to_lowercase()
            value = pl.when(low == "true").then(True).when(low == "false").then(False)
            non_finite = too_large = pl.lit(False)
        else:  # text for a number: the stream's JSON numbers, with the same refusals
            value = col.cast(target, strict=False)
            as_float = col.cast(pl.Float64, strict=False)
            non_finite = as_float.is_nan() | as_float.is_infinite()
            too_large = (
                col.str.contains(r"^[+-]?[0-9]+$") & value.is_null()
                if dtype is DType.INT
                else pl.lit(False)
            )
        why = (
            pl.when(col.is_not_null() & non_finite)
            .then(pl.lit(reason(name, NON_FINITE)))
            .when(col.is_not_null() & too_large)
            .then(pl.lit(reason(name, NOT_INT64)))
            .when(col.is_not_null() & value.is_null())
            .then(pl.lit(reason(name, not_valid(dtype))))
        )
        return pl.when(~(col.is_not_null() & non_finite)).then(value), why
    return col.cast(target), pl.lit(None, pl.String)


def _duplicated(file: Path) -> list[str]:
    """Column names that ``file`` holds more than once (Polars cannot read such a file)."""
    import pyarrow.parquet as pq

    names = Counter(pq.read_schema(file).names)
    return sorted(n for n, count in names.items() if count > 1)


def _whole_file_refused(file: Path, i: int, source: Source, why: str) -> pl.LazyFrame:
    """Every row of ``file`` quarantined for ``why`` (a file Polars cannot read as a table)."""
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(file).metadata.num_rows
    return pl.LazyFrame().select(
        pl.int_range(0, rows, dtype=pl.get_index_type()).alias(ROW),
        pl.lit(str(file)).alias(FILE),
        pl.lit(i, pl.Int64).alias("__file_no"),
        *[pl.lit(None, _TARGET[dtype]).alias(n) for n, (dtype, _) in source.fields.items()],
        pl.lit(why).alias(REASON),
        pl.lit(True).alias("__bad"),
    )


def read_events(
    source: Source,
    *,
    root: str | Path = ".",
    path: str | Path | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    quarantine_dir: str | Path | None = None,
    ordered: bool = True,
    future_tolerance: timedelta | None = None,
    now: datetime | None = None,
) -> tuple[pl.LazyFrame, SourceReport]:
    """Events of ``source`` with ``start <= ts < end``, validated, in arrival order.

    ``ordered=False`` skips the arrival ordering (and ``__seq``) so that a caller can first
    split the events into entity partitions in one streaming pass and order each partition
    with ``in_arrival_order``: arrival order only matters within an entity.

    Event times later than ``now`` (default: the wall clock when the read starts) plus
    ``future_tolerance`` (default: the setting, ``featurepipe.settings.future_tolerance``) are
    quarantined, as the stream refuses them.
    """
    if path is None:
        if source.batch is None:
            raise DataError(f"source '{source.name}' declares no ParquetSource")
        path = source.batch.path
    files = _prune(resolve_files(path, root), start, end)
    report = SourceReport(source=source.name)
    tolerance = future_tolerance if future_tolerance is not None else configured_tolerance()
    now_us = to_epoch_us(now if now is not None else datetime.now(UTC))
    future = (future_limit_us(now_us, tolerance), reason(source.timestamp, in_future(tolerance)))
    frames: list[pl.LazyFrame] = []
    for i, file in enumerate(files):
        try:
            schema = pl.read_parquet_schema(file)
        except pl.exceptions.DuplicateError:
            twice = _duplicated(file)
            if not twice:
                raise
            why = "; ".join(reason(n, DUPLICATE_KEY) for n in twice)
            frames.append(_whole_file_refused(file, i, source, why))
            continue
        check_schema(source, file, pl.Schema(schema))
        cols: list[pl.Expr] = []
        bad: list[pl.Expr] = []
        reasons: list[pl.Expr] = []
        for name, (dtype, nullable) in source.fields.items():
            value, why_not = _column(
                name, dtype, schema[name], future if name == source.timestamp else None
            )
            cols.append(value.alias(name))
            reasons.append(why_not)
            bad.append(why_not.is_not_null())
            if not nullable:
                missing = pl.col(name).is_null()
                reasons.append(pl.when(missing).then(pl.lit(reason(name, NULL_REQUIRED))))
                bad.append(missing)
        lf = (
            pl.scan_parquet(file)
            .with_row_index(ROW)
            .select(
                pl.col(ROW),
                pl.lit(str(file)).alias(FILE),
                pl.lit(i, pl.Int64).alias("__file_no"),
                *cols,
                pl.concat_str(reasons, separator="; ", ignore_nulls=True).alias(REASON),
                pl.any_horizontal(bad).alias("__bad"),
            )
        )
        frames.append(lf)
    ts = source.timestamp

    def window(lf: pl.LazyFrame) -> pl.LazyFrame:
        if start is not None:
            lf = lf.filter(pl.col(ts).is_null() | (pl.col(ts) >= _us(start)))
        if end is not None:
            lf = lf.filter(pl.col(ts).is_null() | (pl.col(ts) < _us(end)))
        return lf

    frames = [window(f) for f in frames]
    allrows = pl.concat(frames, how="vertical")
    # bad rows, one file at a time on the streaming engine: memory stays flat
    flagged = pl.concat(
        [f.filter(pl.col("__bad")).collect(engine="streaming") for f in frames], how="vertical"
    )
    if flagged.height:
        report.quarantined = flagged.height
        for reason_list in flagged[REASON].to_list():
            for why in str(reason_list).split("; "):
                report.reasons[why] = report.reasons.get(why, 0) + 1
        report.examples = flagged.head(5).drop("__bad", "__file_no").to_dicts()
        if quarantine_dir is not None:
            qdir = Path(quarantine_dir)
            qdir.mkdir(parents=True, exist_ok=True)
            qfile = qdir / f"{source.name}.quarantine.parquet"
            flagged.drop("__bad", "__file_no").write_parquet(qfile)
            report.quarantine_file = str(qfile)
    good = allrows.filter(~pl.col("__bad"))
    events = (
        in_arrival_order(good.drop("__bad", REASON), source)
        if ordered
        else good.drop("__bad", REASON)
    )
    for file, frame in zip(files, frames, strict=True):
        # one streaming aggregate per file: memory stays flat however many files there are
        r = (
            frame.filter(~pl.col("__bad"))
            .select(
                pl.len().alias("rows"),
                pl.col(ts).min().alias("min_ts"),
                pl.col(ts).max().alias("max_ts"),
            )
            .collect(engine="streaming")
            .row(0, named=True)
        )
        report.files.append(
            {
                "path": str(file),
                "rows": int(r["rows"]),
                "min_ts": r["min_ts"],
                "max_ts": r["max_ts"],
            }
        )
    report.rows = sum(f["rows"] for f in report.files)
    mins = [f["min_ts"] for f in report.files if f["min_ts"] is not None]
    maxs = [f["max_ts"] for f in report.files if f["max_ts"] is not None]
    report.min_ts = min(mins) if mins else None
    report.max_ts = max(maxs) if maxs else None
    return events, report


def in_arrival_order(events: pl.LazyFrame, source: Source) -> pl.LazyFrame:
    """Sort by arrival (the arrival column, else file then row order); number as ``__seq``."""
    order = [source.arrival, "__file_no", ROW] if source.arrival else ["__file_no", ROW]
    return (
        events.sort(order)
        .with_columns(
            pl.col(source.timestamp).alias(TS), pl.int_range(pl.len(), dtype=pl.Int64).alias(SEQ)
        )
        .drop("__file_no")
    )


def _us(t: datetime) -> int:
    if t.tzinfo is None:
        raise DataError(f"time bound {t} must be timezone-aware (UTC)")
    return to_epoch_us(t)
