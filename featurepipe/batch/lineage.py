"""Lineage of a training set: which data and which code produced it, kept in the Parquet file.

Per source (``sources[<name>]``), every row of the files read is counted once, under a name
that says which rows it counts::

    rows_in_files == events_used + quarantined + rows_after_last_label

* ``rows_in_files``: every row of the source's files that were read;
* ``events_used``: rows that passed the contract and are dated at or before
  ``last_label_time`` (a source with an arrival column reads them all: arrival ranks count
  every event); a label row at T sees those dated before T;
* ``quarantined``: rows that broke the contract (see the quarantine file);
* ``rows_after_last_label``: rows dated after the last label time, which no label row can
  see: skipped (neither used nor checked further).

``rows`` is the former name of ``events_used``, still written for readers of older training
sets; ``read_lineage`` adds ``events_used`` to a file written before it existed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from featurepipe.errors import DataError

if TYPE_CHECKING:
    from featurepipe.batch.sources import SourceReport


@dataclass
class Lineage:
    """Which data and which code produced a training set."""

    featurepipe_version: str
    created_at: str
    entity_rows: int
    features: list[str]
    views: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    # what asked for this training set, when not a person: a monitoring alarm's report
    trigger: dict[str, Any] | None = None

    def to_json(self) -> str:
        fields = {k: v for k, v in self.__dict__.items() if not (k == "trigger" and v is None)}
        return json.dumps(fields, default=str, sort_keys=True)


def source_lineage(report: SourceReport, last_label_time: str) -> dict[str, Any]:
    """A source's lineage entry (see the module docstring for what each count counts)."""
    return {
        "rows_in_files": report.rows_in_files,
        "events_used": report.rows,
        "quarantined": report.quarantined,
        "rows_after_last_label": report.outside_range,
        "last_label_time": last_label_time,
        "rows": report.rows,  # former name of events_used, for readers of older files
        "files": report.files,
        "min_ts": report.min_ts,
        "max_ts": report.max_ts,
    }


def write_training_set(df: pl.DataFrame, path: str | Path, lineage: Lineage) -> None:
    """Parquet with the lineage JSON under the ``featurepipe`` schema-metadata key."""
    import pyarrow.parquet as pq

    table = df.to_arrow()
    meta = dict(table.schema.metadata or {})
    meta[b"featurepipe"] = lineage.to_json().encode()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(meta), str(path))


def read_lineage(path: str | Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    meta = pq.read_schema(str(path)).metadata or {}
    if b"featurepipe" not in meta:
        raise DataError(f"{path} carries no featurepipe lineage")
    out: dict[str, Any] = json.loads(meta[b"featurepipe"])
    for entry in out.get("sources", {}).values():
        if "events_used" not in entry and "rows" in entry:  # written before the name existed
            entry["events_used"] = entry["rows"]
    return out
