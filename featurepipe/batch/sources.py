"""Reading a source's events from Parquet: files, globs and hive-partitioned directories.

The Parquet schema is checked against the pydantic contract per file. Rows that break the
contract (null in a required field, unparsable timestamp, value of the wrong type) are never
coerced: they are counted, reported with examples and written to a quarantine file. Output is a
lazy frame in the shape the batch compiler reads: datetimes as int64 epoch microseconds,
``__ts`` (event time) and ``__seq`` (arrival order: the arrival column if the source declares
one, else file order then row order).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from featurepipe.compile.polars_aggs import SEQ, TS
from featurepipe.dsl.definitions import Source
from featurepipe.errors import DataError
from featurepipe.ir.timebase import MAX_US, MIN_US, as_utc, to_epoch_us
from featurepipe.ir.types import DType

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
# read as text and checked row by row: a bad value is quarantined, not a failed job
_CHECKED_ROWS: dict[DType, tuple[type[pl.DataType], ...]] = {
    DType.INT: (pl.String, pl.Float64, pl.Float32, pl.UInt64),
    DType.FLOAT: (pl.String,),
    DType.BOOL: (pl.String,),
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


def _column(name: str, dtype: DType, actual: pl.DataType) -> tuple[pl.Expr, pl.Expr]:
    """(typed value, reason the row is bad or null) for one contract field."""
    col = pl.col(name)
    if dtype is DType.DATETIME:
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
        reason = (
            pl.when(col.is_not_null() & value.is_null())
            .then(pl.lit(f"{name}: not a valid datetime"))
            .when(value.is_not_null() & ~in_range)
            .then(pl.lit(f"{name}: outside the accepted range [1970, 2100)"))
        )
        return pl.when(in_range).then(value), reason
    target = {
        DType.INT: pl.Int64,
        DType.FLOAT: pl.Float64,
        DType.BOOL: pl.Boolean,
        DType.STR: pl.String,
    }[dtype]
    if isinstance(actual, _CHECKED_ROWS.get(dtype, ())):
        if dtype is DType.INT and isinstance(actual, pl.Float64 | pl.Float32):
            value = pl.when(col == col.round(0)).then(col.cast(pl.Int64, strict=False))
        elif dtype is DType.BOOL:
            low = col.str.to_lowercase()
            value = pl.when(low == "true").then(True).when(low == "false").then(False)
        else:
            value = col.cast(target, strict=False)
        return value, pl.when(col.is_not_null() & value.is_null()).then(
            pl.lit(f"{name}: not a valid {dtype}")
        )
    return col.cast(target), pl.lit(None, pl.String)


def read_events(
    source: Source,
    *,
    root: str | Path = ".",
    path: str | Path | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    quarantine_dir: str | Path | None = None,
    ordered: bool = True,
) -> tuple[pl.LazyFrame, SourceReport]:
    """Events of ``source`` with ``start <= ts < end``, validated, in arrival order.

    ``ordered=False`` skips the arrival ordering (and ``__seq``) so that a caller can first
    split the events into entity partitions in one streaming pass and order each partition
    with ``in_arrival_order``: arrival order only matters within an entity.
    """
    if path is None:
        if source.batch is None:
            raise DataError(f"source '{source.name}' declares no ParquetSource")
        path = source.batch.path
    files = _prune(resolve_files(path, root), start, end)
    report = SourceReport(source=source.name)
    frames: list[pl.LazyFrame] = []
    for i, file in enumerate(files):
        schema = pl.read_parquet_schema(file)
        check_schema(source, file, pl.Schema(schema))
        cols: list[pl.Expr] = []
        bad: list[pl.Expr] = []
        reasons: list[pl.Expr] = []
        for name, (dtype, nullable) in source.fields.items():
            value, reason = _column(name, dtype, schema[name])
            cols.append(value.alias(name))
            reasons.append(reason)
            bad.append(reason.is_not_null())
            if not nullable:
                missing = pl.col(name).is_null()
                reasons.append(pl.when(missing).then(pl.lit(f"{name}: null in a required field")))
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
