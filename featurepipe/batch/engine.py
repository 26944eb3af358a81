"""The batch runtime behind ``FeatureStore``: point-in-time-correct training sets from Parquet.

``FeatureStore`` validates a request and resolves feature references; ``BatchEngine`` does the
work: it reads each source once (validated, quarantined), bounds what a query row may see (event
time, and arrival time where the source declares it), processes entities in hash partitions
when asked to bound memory, runs the compiled batch plan and records the lineage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from featurepipe.batch.lineage import Lineage
from featurepipe.batch.sources import SourceReport, in_arrival_order, read_events
from featurepipe.compile.polars_aggs import ARRIVED, TS, BatchProgram, Engine
from featurepipe.dsl.definitions import FeatureView
from featurepipe.errors import DataError
from featurepipe.ir.timebase import from_epoch_us
from featurepipe.ir.types import DType

ROW_ID = "__row_id"


@dataclass
class TrainingSet:
    """Features joined to the entity rows, with where they came from."""

    frame: pl.DataFrame
    lineage: Lineage
    reports: dict[str, SourceReport] = field(default_factory=dict)


def query_times(frame: pl.DataFrame, name: str) -> pl.Series:
    """The entity frame's timestamp column as int64 epoch microseconds (UTC; naive means UTC)."""
    col = frame[name]
    if isinstance(col.dtype, pl.Datetime):
        if col.dtype.time_zone is None:
            col = col.dt.replace_time_zone("UTC")
        return (
            col.dt.convert_time_zone("UTC")
            .dt.cast_time_unit("us")
            .dt.replace_time_zone(None)
            .cast(pl.Int64)
        )
    if isinstance(col.dtype, pl.Date):
        return col.cast(pl.Datetime("us")).cast(pl.Int64)
    raise DataError(f"entity frame column '{name}' must be a datetime, got {col.dtype}")


class BatchEngine:
    """Computes training sets over the Parquet sources of one repository.

    ``root``: relative source paths resolve against it. ``quarantine_dir``: where rows that
    break a source's contract are written. ``featurepipe_version`` is recorded in lineage.
    """

    def __init__(self, root: Path, *, quarantine_dir: Path, featurepipe_version: str) -> None:
        self.root = root
        self.quarantine_dir = quarantine_dir
        self.featurepipe_version = featurepipe_version

    def historical_features(
        self,
        frame: pl.DataFrame,
        requests: Sequence[tuple[FeatureView, list[str]]],
        *,
        timestamp: str,
        references: Sequence[str],
        full_feature_names: bool = False,
        partitions: int = 1,
        engine: Engine = "auto",
    ) -> TrainingSet:
        """Point-in-time-correct values of the requested features of each view for each row.

        A row at time T sees only events with ts < T and, where the source declares an arrival
        column, only events that had arrived before T. Rows keep their order and their other
        columns. ``references`` are the feature references as the user wrote them (lineage).
        """
        t_us = query_times(frame, timestamp)
        if t_us.null_count():
            raise DataError(f"entity frame: {t_us.null_count()} row(s) with a null '{timestamp}'")
        for view, _ in requests:
            key = view.entity.key
            if key not in frame.columns:
                raise DataError(
                    f"entity frame lacks column '{key}', the key of entity '{view.entity.name}' "
                    f"needed by view '{view.name}'"
                )
        lineage = Lineage(
            featurepipe_version=self.featurepipe_version,
            created_at=datetime.now(UTC).isoformat(),
            entity_rows=frame.height,
            features=list(references),
        )
        out = TrainingSet(frame, lineage)
        events_cache: dict[str, tuple[pl.LazyFrame, SourceReport]] = {}
        # no row sees an event at or after the last query time: read no further, unless the
        # source has an arrival column (arrival ranks count every event, so all are read)
        end = from_epoch_us(int(t_us.max() or 0) + 1)  # type: ignore[arg-type]
        taken: set[str] = set()
        for view, names in requests:
            src = view.source
            if src.name not in events_cache:
                events_cache[src.name] = read_events(
                    src,
                    ordered=partitions <= 1,
                    root=self.root,
                    end=end if src.arrival is None else None,
                    quarantine_dir=self.quarantine_dir,
                )
            events, report = events_cache[src.name]
            out.reports[src.name] = report
            lineage.sources[src.name] = {
                "files": report.files,
                "rows": report.rows,
                "quarantined": report.quarantined,
                "min_ts": report.min_ts,
                "max_ts": report.max_ts,
            }
            lineage.views[view.name] = {"fingerprint": view.fingerprint, "features": names}
            values = self._view_features(view, frame, t_us, events, partitions, engine)
            for n in names:
                out_name = f"{view.name}__{n}" if full_feature_names else n
                if out_name in out.frame.columns or out_name in taken:
                    raise DataError(
                        f"feature column '{out_name}' clashes with another column; "
                        "pass full_feature_names=True"
                    )
                taken.add(out_name)
                col = values[n]
                if view.ir.feature(n).expr.dtype is DType.DATETIME:
                    col = col.cast(pl.Datetime("us", "UTC"))
                out.frame = out.frame.with_columns(col.alias(out_name))
        return out

    def _view_features(
        self,
        view: FeatureView,
        frame: pl.DataFrame,
        t_us: pl.Series,
        events: pl.LazyFrame,
        partitions: int,
        engine: Engine,
    ) -> pl.DataFrame:
        key = view.entity.key
        queries = pl.DataFrame({key: frame[key], TS: t_us}).with_row_index(ROW_ID)
        program = BatchProgram(view.ir)
        if partitions <= 1:
            return _partition_features(program, view, queries, events, engine)
        # Larger than memory: each entity-hash partition is read by its own streaming scan (the
        # filter runs inside the scan; Polars' partitioned sink buffers too much to keep memory
        # flat), then ordered and computed alone. Memory ~ one partition; cost: one scan each.
        part = (pl.col(key).hash(7) % partitions).alias("__part")
        parts = []
        q_part = queries.with_columns(part)
        for p in range(partitions):
            q = q_part.filter(pl.col("__part") == p).drop("__part")
            if q.height == 0:
                continue
            ev = events.filter(pl.col(key).hash(7) % partitions == p).pipe(
                in_arrival_order, view.source
            )
            parts.append(_partition_features(program, view, q, ev, engine))
        if not parts:
            return _partition_features(
                program, view, queries, events.pipe(in_arrival_order, view.source), engine
            )
        return pl.concat(parts).sort(ROW_ID)


def _partition_features(
    program: BatchProgram,
    view: FeatureView,
    q: pl.DataFrame,
    ev: pl.LazyFrame,
    engine: Engine,
) -> pl.DataFrame:
    arrival = view.source.arrival
    if arrival is not None:
        # __seq is the arrival rank; a row at T sees only events that arrived before T
        arrivals = ev.select(pl.col(arrival)).collect(engine=engine).to_series()
        q = q.with_columns(
            pl.Series(ARRIVED, arrivals.search_sorted(q[TS], side="left")).cast(pl.Int64)
        )
    out = program.features(ev, q.drop(ROW_ID), engine=engine)
    return out.with_columns(q[ROW_ID])
