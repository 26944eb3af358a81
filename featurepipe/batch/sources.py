"""Reading a source's events from Parquet: files, globs and hive-partitioned directories.

The Parquet schema is checked against the pydantic contract per file. A contract field with a
default may be absent from a file (an older file written before the field existed): it reads as
that default, as the stream fills it in a message that omits it; any other absent field stops
the read, naming the file and the column. Rows that break the contract (null in a required
field, unparsable timestamp, value of the wrong type) are never coerced: they are counted,
reported with examples and written to a quarantine file that keeps each field's original value
as text (datetimes as ISO-8601), with the file, the row number in it (0-based) and the reason.
Output is a lazy frame in the shape the batch compiler reads: datetimes as int64 epoch
microseconds, ``__ts`` (event time) and ``__seq`` (arrival order: the arrival column if the
source declares one, else file order then row order).

The rules are the stream's, with the same reason texts (``featurepipe.ir.contract``): text that
reads as a non-finite or out-of-range number (``NaN``, ``inf``, ``1e400``) where a number is
expected; a column name given twice (every row of that file); a number, or text that reads as
one, for a datetime; an event time outside [1970, 2100) or more than the future tolerance past
the wall clock of the run (settings: ``FEATUREPIPE_FUTURE_TOLERANCE``, default one day). A NaN
or infinity stored in a float column is a float value, not text, and is kept. An int field
takes a float (or text) that is integral and within int64 (``1.0`` reads as 1), as the stream
takes the JSON number ``1.0``; ``1.5`` is not a valid int on either path.

``read_table`` reads a table a user hands in (label rows): Parquet, CSV or Arrow IPC by extension.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from featurepipe.compile.polars_aggs import SEQ, TS
from featurepipe.dsl.definitions import Source
from featurepipe.errors import DataError, FeaturepipeError
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
from featurepipe.ir.timebase import MAX_US, MIN_US, as_utc, parse_instant, to_epoch_us
from featurepipe.ir.types import DType
from featurepipe.settings import future_tolerance as configured_tolerance

ROW = "__row"
FILE_NO = "__file_no"  # the file's place in the read order
FILE = "__file"
REASON = "__reason"
_ISO = "%Y-%m-%dT%H:%M:%S%.f"  # as Python's isoformat: no fraction when it is zero

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
    """What a read found: files, rows kept, rows quarantined (with examples), time range.

    Every row of the files read is counted once: ``rows_in_files == rows + quarantined +
    outside_range``. ``rows``: events kept (they passed the contract and lie in the time range
    asked for); ``quarantined``: rows that broke the contract; ``outside_range``: rows dated
    outside the range, skipped (neither used nor checked further). Each entry of ``files`` counts the same per file
    (``rows_in_file``, ``rows``, ``quarantined``) and names the optional columns the file
    lacks (``absent``, read as their defaults).
    """

    source: str
    files: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0
    rows_in_files: int = 0
    outside_range: int = 0
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
    pattern = any(ch in str(path) for ch in "*?[")
    if pattern:
        # the root is a directory, not a pattern: escape its glob characters
        pattern_text = (
            str(p) if Path(path).is_absolute() else str(Path(glob.escape(str(root))) / path)
        )
        files = sorted(Path(f) for f in glob.glob(pattern_text, recursive=True))
    elif p.is_dir():
        files = sorted(p.rglob("*.parquet"))
    elif p.exists():
        files = [p]
    else:
        raise DataError(f"Parquet source path '{path}' does not exist{_resolved(path, root)}")
    if not files:
        what = "matches no files" if pattern else "holds no .parquet files"
        raise DataError(f"Parquet source path '{path}' {what}{_resolved(path, root)}")
    return files


def _resolved(path: str | Path, root: str | Path) -> str:
    """Where a relative source path was looked for, for a message ("" for an absolute one)."""
    if Path(path).is_absolute():
        return ""
    base = Path(root).resolve()
    return f" (resolved against data_root {base}: {os.path.join(base, path)})"


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
    """Refuse a file that lacks a required column or holds a column of an incompatible type.

    A field with a default in the contract may be absent (see ``absent_defaults``).
    """
    defaults = absent_defaults(source, schema)
    for name, (dtype, nullable) in source.fields.items():
        if name in defaults:
            continue
        if name not in schema:
            hint = (
                f"; to let files omit it, give the field a default in {source.schema.__name__} "
                "(e.g. '= None')"
                if nullable
                else ""
            )
            raise DataError(
                f"{file}: column '{name}' of source '{source.name}' is missing "
                f"(file has: {', '.join(schema.names())}){hint}"
            )
        actual = schema[name]
        ok = _COMPATIBLE[dtype] + _CHECKED_ROWS.get(dtype, ())
        if not isinstance(actual, ok):
            raise DataError(
                f"{file}: column '{name}' has type {actual}, incompatible with the contract's "
                f"{dtype} (source '{source.name}')"
            )


_RAW: dict[DType, pl.DataType] = {
    DType.INT: pl.Int64(),
    DType.FLOAT: pl.Float64(),
    DType.BOOL: pl.Boolean(),
    DType.STR: pl.String(),
    DType.DATETIME: pl.Datetime("us", "UTC"),
}


def absent_defaults(source: Source, schema: pl.Schema) -> dict[str, pl.Expr]:
    """The contract fields with a default that ``schema`` lacks, each as a literal column.

    The stream fills a field that a message omits with the field's default (pydantic), so a
    Parquet file that lacks the column reads the same (typically ``None``: a null typed per the
    contract). A field without a default has no such reading: ``check_schema`` refuses the file.
    """
    out: dict[str, pl.Expr] = {}
    for name, (dtype, _nullable) in source.fields.items():
        info = source.schema.model_fields[name]
        if name in schema or info.is_required():
            continue
        value = info.get_default(call_default_factory=True)
        if isinstance(value, datetime) and dtype is DType.DATETIME:
            value = as_utc(value)
        try:
            out[name] = pl.lit(value, _RAW[dtype])
        except (TypeError, ValueError, pl.exceptions.PolarsError) as e:
            raise DataError(
                f"source '{source.name}': the default {value!r} of field '{name}' is not a "
                f"{dtype} ({e})"
            ) from None
    return out


def _original_text(name: str, actual: pl.DataType) -> pl.Expr:
    """A field's value as the file holds it, as text: what the quarantine file shows."""
    col = pl.col(name)
    if isinstance(actual, pl.Datetime):
        return col.dt.to_string(_ISO if actual.time_zone is None else _ISO + "%:z")
    if isinstance(actual, pl.Date):
        return col.dt.to_string("%Y-%m-%d")
    return col.cast(pl.String)


def _int_from_text(col: pl.Expr) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(value, non-finite, beyond int64) of text for an int field, as the stream reads a JSON
    number: an integer literal, or a float literal that is integral (``1.0``, ``1e3``)."""
    integer_text = col.str.contains(r"^[+-]?[0-9]+$")
    as_int = col.cast(pl.Int64, strict=False)
    as_float = col.cast(pl.Float64, strict=False)
    non_finite = as_float.is_nan() | as_float.is_infinite()
    integral = ~integer_text & ~non_finite & (as_float == as_float.round(0))
    from_float = as_float.cast(pl.Int64, strict=False)
    value = pl.when(integer_text).then(as_int).when(integral).then(from_float)
    too_large = (integer_text & as_int.is_null()) | (integral & from_float.is_null())
    return value, non_finite, too_large


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
        elif dtype is DType.INT:  # text for an int: the stream's JSON numbers, same refusals
            value, non_finite, too_large = _int_from_text(col)
        else:  # text for a float: the stream's JSON numbers, with the same refusals
            value = col.cast(target, strict=False)
            non_finite = value.is_nan() | value.is_infinite()
            too_large = pl.lit(False)
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
    return pl.LazyFrame().select(
        pl.int_range(0, _rows_in(file), dtype=pl.get_index_type()).alias(ROW),
        pl.lit(str(file)).alias(FILE),
        pl.lit(i, pl.Int64).alias(FILE_NO),
        *[pl.lit(None, _TARGET[dtype]).alias(n) for n, (dtype, _) in source.fields.items()],
        pl.lit(why).alias(REASON),
        pl.lit(True).alias("__bad"),
    )


def _rows_in(file: Path) -> int:
    """Rows of a Parquet file, from its footer (nothing else is read)."""
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(file).metadata.num_rows)


@dataclass
class _Read:
    """How one file was read: its columns' types and the absent ones read as defaults; or, for a
    file refused whole, the column names it holds ``twice``."""

    file: Path
    schema: dict[str, pl.DataType]
    defaults: dict[str, pl.Expr]
    twice: list[str] = field(default_factory=list)


def _originals(read: _Read, source: Source, rows: pl.Series) -> pl.DataFrame:
    """``ROW`` and each contract field's value as the file holds it, as text, for ``rows``.

    Read again, for the refused rows only: a clean file costs nothing. A column the file lacks
    (read as its default) or holds twice (no one value) is null.
    """
    if read.twice:  # Polars cannot read the file: only its columns held once are rendered
        import pyarrow.parquet as pq

        names = pq.read_schema(read.file).names
        once = [n for n in source.fields if n not in read.twice and n in names]
        table = pl.from_arrow(pq.read_table(read.file, columns=once)) if once else None
        assert table is None or isinstance(table, pl.DataFrame)
        frame = pl.DataFrame({ROW: pl.int_range(0, _rows_in(read.file), eager=True)})
        if table is not None:
            frame = frame.hstack(table)
        lf = frame.lazy().with_columns(pl.col(ROW).cast(rows.dtype))
        schema = {n: table.schema[n] for n in once} if table is not None else {}
    else:
        lf = pl.scan_parquet(read.file).with_row_index(ROW)
        schema = {n: t for n, t in read.schema.items() if n not in read.defaults}
    texts = [
        (_original_text(n, schema[n]) if n in schema else pl.lit(None, pl.String)).alias(n)
        for n in source.fields
    ]
    return (
        lf.filter(pl.col(ROW).is_in(rows.implode()))
        .select(pl.col(ROW), *texts)
        .collect(engine="streaming")
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

    The quarantine file (``<quarantine_dir>/<source>.quarantine.parquet``) has one row per
    refused row: ``__row`` (its 0-based row number in its file), ``__file``, one text column per
    contract field holding the value as the file holds it (datetimes in ISO-8601; null where
    the file holds a null or lacks the column) and ``__reason``.
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
    reads: list[_Read] = []
    for i, file in enumerate(files):
        try:
            schema = pl.read_parquet_schema(file)
        except pl.exceptions.DuplicateError:
            twice = _duplicated(file)
            if not twice:
                raise
            why = "; ".join(reason(n, DUPLICATE_KEY) for n in twice)
            frames.append(_whole_file_refused(file, i, source, why))
            reads.append(_Read(file, {}, {}, twice))
            continue
        check_schema(source, file, pl.Schema(schema))
        defaults = absent_defaults(source, pl.Schema(schema))
        reads.append(_Read(file, dict(schema), defaults))
        for name in defaults:
            schema[name] = _RAW[source.fields[name][0]]
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
            .with_columns(**defaults)
            .with_row_index(ROW)
            .select(
                pl.col(ROW),
                pl.lit(str(file)).alias(FILE),
                pl.lit(i, pl.Int64).alias(FILE_NO),
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
    # bad rows, one file at a time on the streaming engine: memory stays flat. The quarantine
    # keeps each field as the file holds it, as text: the typed value of a refused row is often
    # null (text "four" for a float), and datetimes read as ISO-8601, not epoch micros.
    refused: list[pl.DataFrame] = []
    for read, f in zip(reads, frames, strict=True):
        flagged = f.filter(pl.col("__bad")).select(ROW, FILE, REASON).collect(engine="streaming")
        if flagged.height:
            originals = _originals(read, source, flagged[ROW])
            refused.append(
                flagged.join(originals, on=ROW, how="left", maintain_order="left").select(
                    ROW, FILE, *source.fields, REASON
                )
            )
    quarantined_in: dict[str, int] = {}
    if refused:
        quarantine = pl.concat(refused, how="vertical")
        report.quarantined = quarantine.height
        quarantined_in = {str(q[FILE][0]): q.height for q in refused}
        for reason_list in quarantine[REASON].to_list():
            for why in str(reason_list).split("; "):
                report.reasons[why] = report.reasons.get(why, 0) + 1
        report.examples = quarantine.head(5).to_dicts()
        if quarantine_dir is not None:
            qdir = Path(quarantine_dir)
            qdir.mkdir(parents=True, exist_ok=True)
            qfile = qdir / f"{source.name}.quarantine.parquet"
            quarantine.write_parquet(qfile)
            report.quarantine_file = str(qfile)
    good = allrows.filter(~pl.col("__bad")).drop("__bad", REASON)
    events = in_arrival_order(good, source) if ordered else good
    for read, frame in zip(reads, frames, strict=True):
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
        entry: dict[str, Any] = {
            "path": str(read.file),
            "rows": int(r["rows"]),
            "rows_in_file": _rows_in(read.file),
            "quarantined": quarantined_in.get(str(read.file), 0),
            "min_ts": r["min_ts"],
            "max_ts": r["max_ts"],
        }
        if read.defaults:
            entry["absent"] = sorted(read.defaults)
        report.files.append(entry)
    report.rows = sum(f["rows"] for f in report.files)
    report.rows_in_files = sum(f["rows_in_file"] for f in report.files)
    report.outside_range = report.rows_in_files - report.rows - report.quarantined
    mins = [f["min_ts"] for f in report.files if f["min_ts"] is not None]
    maxs = [f["max_ts"] for f in report.files if f["max_ts"] is not None]
    report.min_ts = min(mins) if mins else None
    report.max_ts = max(maxs) if maxs else None
    return events, report


def in_arrival_order(events: pl.LazyFrame, source: Source) -> pl.LazyFrame:
    """Sort by arrival (the arrival column, else file then row order); number as ``__seq``."""
    if source.arrival is None:
        # file then row order is the order the files are concatenated in: number the rows as
        # they stream by (no sort, so a caller's later filter keeps memory flat)
        names = events.collect_schema().names()
        return events.with_row_index(SEQ).select(
            *(n for n in names if n != FILE_NO),
            pl.col(source.timestamp).alias(TS),
            pl.col(SEQ).cast(pl.Int64),
        )
    order = [source.arrival, FILE_NO, ROW]
    return (
        events.sort(order)
        .with_columns(
            pl.col(source.timestamp).alias(TS), pl.int_range(pl.len(), dtype=pl.Int64).alias(SEQ)
        )
        .drop(FILE_NO)
    )


def _us(t: datetime) -> int:
    if t.tzinfo is None:
        raise DataError(f"time bound {t} must be timezone-aware (UTC)")
    return to_epoch_us(t)


# -- tables a user hands in (label rows) ----------------------------------------------------------
TABLE_FORMATS: dict[str, str] = {
    ".parquet": "Parquet",
    ".csv": "CSV",
    ".arrow": "Arrow IPC",
    ".ipc": "Arrow IPC",
    ".feather": "Arrow IPC",
}
ACCEPTED_TABLES = "Parquet (.parquet), CSV (.csv) or Arrow IPC (.arrow, .ipc, .feather)"


def read_table(
    path: str | Path,
    *,
    timestamp: str | None = None,
    text_columns: Sequence[str] = (),
    name: str | None = None,
) -> pl.DataFrame:
    """A table file, by its extension: Parquet, CSV or Arrow IPC (``TABLE_FORMATS``).

    ``timestamp``: the column of that name, when it holds text (always in a CSV whose times
    Polars cannot read as one format), is parsed as ISO-8601 instants as
    ``featurepipe.ir.timebase.parse_instant`` reads them (naive means UTC); a value that does
    not parse is a ``DataError`` naming the column, the row and the value. ``text_columns``: in
    a CSV, columns read as text whatever they look like (an entity key ``007`` stays ``007``).
    A file that does not exist, has another extension or does not read as its format is a
    ``DataError`` naming the file (as ``name`` when given, e.g. the path as a user typed it)
    and the accepted formats.
    """
    p = Path(path)
    shown = str(p) if name is None else name
    kind = TABLE_FORMATS.get(p.suffix.lower())
    if kind is None:
        raise DataError(
            f"{shown}: unsupported table format '{p.suffix or p.name}' (accepted: "
            f"{ACCEPTED_TABLES}, chosen by the file's extension)"
        )
    if not p.is_file():
        raise DataError(f"{shown}: no such file ({kind} expected)")
    try:
        if kind == "CSV":
            frame = pl.read_csv(
                p, try_parse_dates=True, schema_overrides={c: pl.String for c in text_columns}
            )
        elif kind == "Parquet":
            frame = pl.read_parquet(p)
        else:
            frame = pl.read_ipc(p)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise DataError(
            f"{shown}: cannot be read as {kind} ({type(e).__name__}: {e}); accepted: "
            f"{ACCEPTED_TABLES}, chosen by the file's extension"
        ) from None
    if timestamp in frame.columns and isinstance(frame.schema[timestamp], pl.String):
        frame = frame.with_columns(_parse_instants(frame[timestamp], shown))
    return frame


def _parse_instants(text: pl.Series, file: str) -> pl.Series:
    """ISO-8601 text as UTC datetimes (microseconds); naive means UTC, a date is midnight."""
    parsed = text.str.to_datetime(time_zone="UTC", strict=False, time_unit="us")
    if not (parsed.is_null() & text.is_not_null()).any():
        return parsed
    # Polars reads one format per column: mixed forms ("...Z" and "... 02:00") read one by one
    values: list[datetime | None] = []
    for row, value in enumerate(text.to_list()):
        if value is None:
            values.append(None)
            continue
        try:
            values.append(parse_instant(value, f"column '{text.name}'"))
        except FeaturepipeError:
            raise DataError(
                f"{file}: column '{text.name}', row {row + 1}: {value!r} is not an ISO-8601 date "
                "or date-time (e.g. 2026-01-15 or 2026-01-15T08:30:00Z; naive times are UTC)"
            ) from None
    return pl.Series(text.name, values, dtype=pl.Datetime("us", "UTC"))
