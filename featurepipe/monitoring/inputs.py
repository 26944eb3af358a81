"""What ``featurepipe monitor`` compares with a baseline: feature columns per view version.

Two layouts of Parquet are read, told apart by their columns:

* a training set (``featurepipe training-set``) or any frame of feature columns: one column
  per feature (``name`` or ``<view>__<name>``); its lineage, when the file carries one, says
  which view version produced each feature;
* served-feature logs (``featurepipe serve``): one row per request row, view and feature, with
  the columns ``view``, ``fingerprint``, ``feature``, ``dtype``, ``value`` (JSON text) and
  ``value_num`` (numbers and bools as floats), and ``served_at``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from featurepipe.errors import DataError

SERVED_COLUMNS = {"view", "fingerprint", "feature", "dtype", "value", "value_num"}


@dataclass
class CurrentView:
    """The feature columns of one view version in the current data."""

    view: str | None  # None: a frame without lineage (matched to a baseline by column names)
    fingerprint: str | None
    columns: dict[str, tuple[pl.Series, str | None]] = field(default_factory=dict)
    rows: int = 0
    origin: str = ""


def read_current(
    files: list[Path], *, since: datetime | None = None, until: datetime | None = None
) -> list[CurrentView]:
    """The feature columns of ``files``, per view version; ``since``/``until`` keep served
    rows with ``since <= served_at < until`` (served-feature logs only)."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(str(files[0]))
    if set(schema.names) >= SERVED_COLUMNS:
        return _served(files, since, until)
    if since is not None or until is not None:
        raise DataError(
            "--since/--until select a window of served-feature logs; "
            f"{files[0]} is a frame of feature columns (select its rows before monitoring)"
        )
    return _wide(files)


def _wide(files: list[Path]) -> list[CurrentView]:
    from featurepipe.batch.lineage import read_lineage

    frames = [pl.read_parquet(f) for f in files]
    frame = pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]
    origin = str(files[0]) if len(files) == 1 else f"{len(files)} files under {files[0].parent}"
    views: dict[tuple[str, str], list[str]] = {}
    for f in files:
        try:
            lineage = read_lineage(f)
        except DataError:
            lineage = None
        if lineage is None:
            if views:
                raise DataError(f"{f} carries no featurepipe lineage, unlike {files[0]}")
            continue
        for view, info in lineage.get("views", {}).items():
            names = views.setdefault((view, info["fingerprint"]), [])
            names.extend(n for n in info["features"] if n not in names)
    if not views:
        whole = CurrentView(None, None, rows=frame.height, origin=origin)
        whole.columns = {c: (frame[c], None) for c in frame.columns}
        return [whole]
    out: list[CurrentView] = []
    for (view, fingerprint), names in views.items():
        cv = CurrentView(view, fingerprint, rows=frame.height, origin=origin)
        for n in names:
            for column in (f"{view}__{n}", n):
                if column in frame.columns:
                    cv.columns[n] = (frame[column], None)
                    break
        out.append(cv)
    return out


def _served(files: list[Path], since: datetime | None, until: datetime | None) -> list[CurrentView]:
    lf = pl.scan_parquet([str(f) for f in files])
    if since is not None:
        lf = lf.filter(pl.col("served_at") >= since)
    if until is not None:
        lf = lf.filter(pl.col("served_at") < until)
    log = lf.select(*SERVED_COLUMNS).collect()
    origin = (
        f"served-feature log {files[0]}"
        if len(files) == 1
        else f"served-feature logs: {len(files)} files under {files[0].parent}"
    )
    out: list[CurrentView] = []
    groups = log.partition_by(["view", "fingerprint"], as_dict=True, maintain_order=True)
    for (view, fingerprint), part in groups.items():
        cv = CurrentView(str(view), str(fingerprint), origin=origin)
        for (feature,), rows in part.partition_by(
            "feature", as_dict=True, maintain_order=True
        ).items():
            dtype = str(rows["dtype"][0])
            cv.columns[str(feature)] = (_served_values(rows, dtype), dtype)
            cv.rows = max(cv.rows, rows.height)
        out.append(cv)
    return out


def _served_values(rows: pl.DataFrame, dtype: str) -> pl.Series:
    """A served feature's values, typed: numbers from ``value_num``, text and datetimes from
    the JSON text of ``value`` (RFC 3339 for datetimes), bools from ``value_num``."""
    if dtype in ("int", "float"):
        return rows["value_num"]
    if dtype == "bool":
        return rows["value_num"].cast(pl.Boolean)
    decoded = {v: _json(v) for v in rows["value"].unique().to_list()}
    values = [decoded[v] for v in rows["value"].to_list()]
    if dtype == "datetime":
        return pl.Series(values, dtype=pl.String).str.to_datetime(
            time_zone="UTC", time_unit="us", strict=False
        )
    if dtype == "str":
        return pl.Series(values, dtype=pl.String)
    return pl.Series([None] * len(values), dtype=pl.String)  # lists and maps: not monitored


def _json(text: Any) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError):
        return None
