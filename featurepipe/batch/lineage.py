"""Lineage of a training set: which data and which code produced it, kept in the Parquet file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from featurepipe.errors import DataError


@dataclass
class Lineage:
    """Which data and which code produced a training set."""

    featurepipe_version: str
    created_at: str
    entity_rows: int
    features: list[str]
    views: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, default=str, sort_keys=True)


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
    return out
