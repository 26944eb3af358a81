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
from typing import Protocol

import polars as pl

from featurepipe.batch.lineage import Lineage, source_lineage
from featurepipe.batch.sources import SourceReport, in_arrival_order, read_events
from featurepipe.compile.polars_aggs import ARRIVED, TS, BatchProgram, Engine
from featurepipe.compile.polars_rows import PL_TYPES, edge_type
from featurepipe.dsl.definitions import FeatureView
from featurepipe.errors import DataError
from featurepipe.ir import nodes as ir
from featurepipe.ir.entity_keys import with_composite_key
from featurepipe.ir.timebase import format_us, from_epoch_us
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
    if isinstance(col.dtype, pl.Datetime | pl.Date):
        return _epoch_us(col)
    hint = (
        " (parse it first, e.g. pl.col(...).str.to_datetime(); `featurepipe training-set` "
        "parses ISO-8601 text itself)"
        if isinstance(col.dtype, pl.String)
        else " (epoch numbers are ambiguous: seconds? microseconds?)"
        if col.dtype.is_numeric()
        else ""
    )
    raise DataError(
        f"entity frame timestamp column '{name}' has type {col.dtype}; expected Datetime "
        f"(or Date){hint}"
    )


def _epoch_us(col: pl.Series) -> pl.Series:
    """A Datetime or Date series as int64 epoch microseconds (UTC; naive means UTC)."""
    if isinstance(col.dtype, pl.Date):
        return col.cast(pl.Datetime("us")).cast(pl.Int64)
    assert isinstance(col.dtype, pl.Datetime)
    if col.dtype.time_zone is None:
        col = col.dt.replace_time_zone("UTC")
    return (
        col.dt.convert_time_zone("UTC")
        .dt.cast_time_unit("us")
        .dt.replace_time_zone(None)
        .cast(pl.Int64)
    )


# entity frame column types that hold each contract type's values exactly
_INTS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
_KEY_TYPES: dict[DType, tuple[type[pl.DataType], ...]] = {
    DType.STR: (pl.String, pl.Categorical, pl.Enum),
    DType.INT: _INTS,
    DType.FLOAT: (pl.Float32, pl.Float64),
    DType.BOOL: (pl.Boolean,),
    DType.DATETIME: (pl.Datetime, pl.Date),
}
_KEY_NAMES = {
    DType.STR: "String (the contract's str)",
    DType.INT: "Int64 or another integer type (the contract's int)",
    DType.FLOAT: "Float64 (the contract's float)",
    DType.BOOL: "Boolean (the contract's bool)",
    DType.DATETIME: "Datetime (the contract's datetime)",
}


def entity_key(frame: pl.DataFrame, view: FeatureView) -> pl.Series:
    """The entity frame's key column for ``view``, checked against the contract's key type and
    widened to the events' representation (int64, string, epoch microseconds).

    Types are never converted across kinds: text keys for an int entity (or the reverse) are a
    ``DataError`` naming the column, its type and the expected one.
    """
    if view.entity.composite:  # each part checked alone, then the composite key of each row
        parts = [_key_part(frame, view, p) for p in view.entity.parts]
        return with_composite_key(pl.DataFrame(parts), view.entity.parts)[view.entity.key]
    return _key_part(frame, view, view.entity.key)


def _key_part(frame: pl.DataFrame, view: FeatureView, key: str) -> pl.Series:
    if key not in frame.columns:
        raise DataError(
            f"entity frame lacks column '{key}', the key of entity '{view.entity.name}' "
            f"needed by view '{view.name}' (frame has: {', '.join(frame.columns)})"
        )
    col = frame[key]
    expected = view.source.fields[key][0]
    if isinstance(col.dtype, pl.Null):
        return col.cast(PL_TYPES[expected])
    if not isinstance(col.dtype, _KEY_TYPES[expected]):
        raise DataError(
            f"entity frame column '{key}' has type {col.dtype}; expected {_KEY_NAMES[expected]}, "
            f"the type of the key of entity '{view.entity.name}' (field '{key}' of source "
            f"'{view.source.name}', used by view '{view.name}'){_cast_hint(col, expected)}"
        )
    if expected is DType.DATETIME:
        return _epoch_us(col).alias(key)
    if expected is DType.INT and isinstance(col.dtype, pl.UInt64):
        wide = col.cast(pl.Int64, strict=False)
        if (wide.is_null() & col.is_not_null()).any():
            raise DataError(f"entity frame column '{key}' holds values beyond int64")
        return wide
    return col.cast(PL_TYPES[expected])


def request_columns(
    frame: pl.DataFrame, view: FeatureView, features: Sequence[str]
) -> list[pl.Series]:
    """The label table's columns named like the request fields (``fp.request``) that the
    requested ``features`` read; a missing one raises ``DataError`` naming the view, the field
    and the features reading it (types are checked by the batch compiler). The view's other
    request fields are null: the features reading them are not returned."""
    needed = {name for name, _ in view.ir.request_fields_read(features)}
    out = []
    for name, dtype in view.ir.request_fields:
        if name not in needed:
            out.append(pl.Series(name, [None] * frame.height, dtype=PL_TYPES[dtype]))
            continue
        if name not in frame.columns:
            readers = [
                f.name
                for f in view.ir.features
                if any(isinstance(n, ir.Request) and n.name == name for n in f.expr.walk())
            ]
            raise DataError(
                f"view '{view.name}': feature(s) {', '.join(readers)} read the request field "
                f"'{name}' ({dtype}); the entity frame has no column '{name}': add it (the "
                "value a lookup request would carry at that row's time)"
            )
        out.append(frame[name])
    return out


def _cast_hint(col: pl.Series, expected: DType) -> str:
    """Say so when every value would convert exactly (featurepipe never converts it itself)."""
    if expected is DType.INT and isinstance(col.dtype, pl.String):
        values = col.drop_nulls()
        exact = values.str.contains(r"^-?[1-9][0-9]*$|^0$").all() and (
            values.cast(pl.Int64, strict=False).null_count() == 0
        )
        if exact:
            return (
                f"; its values are all integers written as text: convert the column if they "
                f"are the same keys (pl.col('{col.name}').cast(pl.Int64))"
            )
    if expected is DType.STR and col.dtype.is_integer():
        return (
            f"; convert the column if the keys are the same text "
            f"(pl.col('{col.name}').cast(pl.String)); note that text such as '007' is not 7"
        )
    return ""


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
        partitions: int | None = None,
        engine: Engine = "auto",
        runner: PartitionRunner | None = None,
    ) -> TrainingSet:
        """Point-in-time-correct values of the requested features of each view for each row.

        A row at time T sees only events with ts < T and, where the source declares an arrival
        column, only events that had arrived before T. Rows keep their order and their other
        columns. ``references`` are the feature references as the user wrote them (lineage).
        ``runner``: computes the partitions elsewhere (``featurepipe.batch.distributed``);
        by default they are computed here, one after another. ``partitions`` None: chosen from
        each source's event count (``auto_partitions``).
        """
        t_us = query_times(frame, timestamp)
        if t_us.null_count():
            raise DataError(f"entity frame: {t_us.null_count()} row(s) with a null '{timestamp}'")
        # every key checked before any data is read: one clear error, not a failed join later
        keys = {view.name: entity_key(frame, view) for view, _ in requests}
        # request fields (fp.request) come from the label table's columns of those names
        requests_of = {view.name: request_columns(frame, view, names) for view, names in requests}
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
        last_label = int(t_us.max() or 0)  # type: ignore[arg-type]
        end = from_epoch_us(last_label + 1)
        taken: set[str] = set()
        for view, names in requests:
            src = view.source
            if src.name not in events_cache:
                events_cache[src.name] = read_events(
                    src,
                    ordered=partitions is not None and partitions <= 1,
                    root=self.root,
                    end=end if src.arrival is None else None,
                    quarantine_dir=self.quarantine_dir,
                )
            events, report = events_cache[src.name]
            parts = (
                partitions if partitions is not None else auto_partitions(report.rows, len(t_us))
            )
            if partitions is None and parts <= 1:  # read unordered to count it first
                events = in_arrival_order(events, src)
            out.reports[src.name] = report
            lineage.sources[src.name] = source_lineage(report, format_us(last_label))
            lineage.views[view.name] = {"fingerprint": view.fingerprint, "features": names}
            values = self._view_features(
                view,
                keys[view.name],
                t_us,
                requests_of[view.name],
                events,
                parts,
                engine,
                runner,
            )
            for n in names:
                out_name = f"{view.name}__{n}" if full_feature_names else n
                if out_name in out.frame.columns or out_name in taken:
                    raise DataError(
                        f"feature column '{out_name}' clashes with another column; "
                        "pass full_feature_names=True"
                    )
                taken.add(out_name)
                col = values[n].cast(edge_type(view.ir.feature(n).expr.dtype))
                out.frame = out.frame.with_columns(col.alias(out_name))
        return out

    def _view_features(
        self,
        view: FeatureView,
        keys: pl.Series,
        t_us: pl.Series,
        request: list[pl.Series],
        events: pl.LazyFrame,
        partitions: int,
        engine: Engine,
        runner: PartitionRunner | None = None,
    ) -> pl.DataFrame:
        key = view.entity.key
        events = with_composite_key(events, view.ir.entity_parts)
        queries = pl.DataFrame([keys.alias(key), t_us.alias(TS), *request]).with_row_index(ROW_ID)
        tasks = partition_tasks(view, queries, events, partitions, engine)
        if runner is not None and tasks:
            return _reassemble(runner.run(tasks), partitions)
        program = BatchProgram(view.ir)
        arrival = view.source.arrival
        if not tasks:  # no label rows: the whole (empty) query at once
            if partitions > 1:
                events = events.pipe(in_arrival_order, view.source)
            return partition_features(program, arrival, queries, events, engine)
        return _reassemble(
            [partition_features(program, arrival, t.queries, t.events, engine) for t in tasks],
            partitions,
        )


# events per entity-hash partition when the caller chooses no count: measured on 5M events x
# 500k labels (9 features, 2 cores), one partition took 13.3 s and 6.0 GB, 8 partitions 6.7 s
# and 1.4 GB, 16 6.6 s and 0.8 GB, 32 8.5 s and 0.7 GB (each partition scans the whole input);
# 10M x 1M: 16 partitions 15.5 s and 1.6 GB, 32 16.4 s and 1.3 GB (benchmarks/RESULTS.md)
AUTO_EVENTS_PER_PARTITION = 400_000
AUTO_LABELS_PER_PARTITION = 10_000  # fewer label rows: a partition's scan costs more than it saves
MAX_AUTO_PARTITIONS = 64


def auto_partitions(events: int, labels: int) -> int:
    """Entity-hash partitions for a source of ``events`` rows and ``labels`` label rows: about
    400,000 events each (one below 800,000 events), at most one per 10,000 label rows, at most
    64."""
    if events < 2 * AUTO_EVENTS_PER_PARTITION:
        return 1
    by_events = -(-events // AUTO_EVENTS_PER_PARTITION)
    return max(1, min(MAX_AUTO_PARTITIONS, by_events, labels // AUTO_LABELS_PER_PARTITION))


@dataclass(frozen=True)
class PartitionTask:
    """One entity-hash partition of one view's training-set rows: all a worker needs.

    ``ir``: the view, compiled where it runs; ``queries``: the partition's label rows (row id,
    key, time, request fields); ``events``: the lazy plan that reads the partition's events,
    contract-checked and in arrival order (a Polars plan: paths and expressions, no data).
    """

    view: str
    ir: ir.ViewIR
    arrival: str | None
    partition: int
    partitions: int
    queries: pl.DataFrame
    events: pl.LazyFrame
    engine: Engine

    def compute(self) -> pl.DataFrame:
        """The partition's features and ``__row_id``, as the local engine computes them."""
        return partition_features(
            BatchProgram(self.ir), self.arrival, self.queries, self.events, self.engine
        )


class PartitionRunner(Protocol):
    """Computes partition tasks elsewhere; returns their results in the tasks' order."""

    def run(self, tasks: Sequence[PartitionTask]) -> list[pl.DataFrame]: ...


def partition_tasks(
    view: FeatureView,
    queries: pl.DataFrame,
    events: pl.LazyFrame,
    partitions: int,
    engine: Engine,
) -> list[PartitionTask]:
    """The view's work as tasks, one per entity-hash partition that holds label rows.

    One partition (``partitions <= 1``): every row, the events as read (already in arrival
    order). Larger than memory: each entity-hash partition is read by its own streaming scan
    (the filter runs inside the scan; Polars' partitioned sink buffers too much to keep memory
    flat), then ordered and computed alone. Memory ~ one partition; cost: one scan each.
    """
    if queries.height == 0:
        return []

    def task(p: int, q: pl.DataFrame, ev: pl.LazyFrame) -> PartitionTask:
        return PartitionTask(
            view.name, view.ir, view.source.arrival, p, max(partitions, 1), q, ev, engine
        )

    if partitions <= 1:
        return [task(0, queries, events)]
    key = view.entity.key
    q_part = queries.with_columns((pl.col(key).hash(7) % partitions).alias("__part"))
    tasks = []
    for p in range(partitions):
        q = q_part.filter(pl.col("__part") == p).drop("__part")
        if q.height == 0:
            continue
        ev = events.filter(pl.col(key).hash(7) % partitions == p).pipe(
            in_arrival_order, view.source
        )
        tasks.append(task(p, q, ev))
    return tasks


def _reassemble(parts: list[pl.DataFrame], partitions: int) -> pl.DataFrame:
    """The partitions' rows back in label-row order (one partition: already in it)."""
    return parts[0] if partitions <= 1 else pl.concat(parts).sort(ROW_ID)


def partition_features(
    program: BatchProgram,
    arrival: str | None,
    q: pl.DataFrame,
    ev: pl.LazyFrame,
    engine: Engine,
) -> pl.DataFrame:
    """The features of the label rows ``q`` from the events ``ev`` (one partition, or all)."""
    if arrival is not None:
        # __seq is the arrival rank; a row at T sees only events that arrived before T
        arrivals = ev.select(pl.col(arrival)).collect(engine=engine).to_series()
        q = q.with_columns(
            pl.Series(ARRIVED, arrivals.search_sorted(q[TS], side="left")).cast(pl.Int64)
        )
    out = program.features(ev, q.drop(ROW_ID), engine=engine)
    return out.with_columns(q[ROW_ID])
