"""The batch runtime behind ``FeatureStore``: point-in-time-correct training sets from Parquet.

``FeatureStore`` validates a request and resolves feature references; ``BatchEngine`` does the
work: it reads each source once (validated, quarantined), bounds what a query row may see (event
time, and arrival time where the source declares it), processes entities in hash partitions
when asked to bound memory, runs the compiled batch plan and records the lineage.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import polars as pl

from featurepipe.batch.lineage import Lineage, source_lineage
from featurepipe.batch.sources import FILE_NO, ROW, SourceReport, in_arrival_order, read_events
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
        each source's event count (``auto_partitions``), and each pass over the input reads
        about ``PASS_ROWS`` events, several partitions' worth; ``partitions`` given: at most
        one partition's events in memory at once (one pass over the input per partition).
        Only the requested features, and those they reference, are computed.
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
                names,
                # chosen partitions: read ~PASS_ROWS events per pass; given ones bound memory
                # to one partition's events: one pass each
                passes_for(report.rows, parts) if partitions is None else parts,
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
        names: Sequence[str],
        passes: int,
        partitions: int,
        engine: Engine,
        runner: PartitionRunner | None = None,
    ) -> pl.DataFrame:
        key = view.entity.key
        # only the requested features and what they reference: the same values, fewer
        # aggregations (9 features of a 25-feature view: 9 of its 22 aggregations)
        view_ir = view.ir.restricted_to(names)
        events = with_composite_key(events, view_ir.entity_parts)
        queries = pl.DataFrame([keys.alias(key), t_us.alias(TS), *request]).with_row_index(ROW_ID)
        if runner is not None:
            tasks = partition_tasks(view, view_ir, queries, events, partitions, engine)
            if tasks:
                return _reassemble(runner.run(tasks), partitions)
        program = BatchProgram(view_ir)
        arrival = view.source.arrival
        if queries.height == 0:  # no label rows: the whole (empty) query at once
            if partitions > 1:
                events = events.pipe(in_arrival_order, view.source)
            return partition_features(program, arrival, queries, events, engine)
        if partitions <= 1:
            return partition_features(program, arrival, queries, events, engine)
        # here: each pass over the input reads the events of several partitions at once (the
        # filter runs inside the scan), where a scan per partition would read it P times
        by_part = queries.with_columns(_partition_of(key, partitions).alias(PART))
        label_rows = {
            int(p): q
            for (p,), q in by_part.partition_by(PART, as_dict=True, include_key=False).items()
        }
        columns = _columns_read(view, view_ir, events)
        results = [
            partition_features(
                program, arrival, label_rows[p], ev.pipe(in_arrival_order, view.source), engine
            )
            for p, ev in events_by_partition(
                events.select(columns), key, partitions, passes, set(label_rows), engine
            )
        ]
        return _reassemble(results, partitions)


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
    view_ir: ir.ViewIR,
    queries: pl.DataFrame,
    events: pl.LazyFrame,
    partitions: int,
    engine: Engine,
) -> list[PartitionTask]:
    """The view's work (``view_ir``: the view, or the part of it requested) as tasks, one per
    entity-hash partition that holds label rows.

    One partition (``partitions <= 1``): every row, the events as read (already in arrival
    order). Several: each partition's events are read by a streaming scan of their own (the
    filter runs inside the scan: a plan a remote worker can run, at the cost of one scan of
    the input per partition; ``events_by_partition`` is the local path), then ordered and
    computed alone. Memory ~ one partition.
    """
    if queries.height == 0:
        return []

    def task(p: int, q: pl.DataFrame, ev: pl.LazyFrame) -> PartitionTask:
        return PartitionTask(
            view.name, view_ir, view.source.arrival, p, max(partitions, 1), q, ev, engine
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
        ev = events.filter(_partition_of(key, partitions) == p)
        tasks.append(task(p, q, ev.pipe(in_arrival_order, view.source)))
    return tasks


def _partition_of(key: str, partitions: int) -> pl.Expr:
    """A row's entity-hash partition: the same expression for events and label rows."""
    return pl.col(key).hash(7) % partitions


def _columns_read(view: FeatureView, view_ir: ir.ViewIR, events: pl.LazyFrame) -> list[str]:
    """The columns of ``events`` that computing ``view_ir`` reads: the key (and its parts),
    the time, the arrival order's columns and the fields its aggregations read."""
    src = view.source
    wanted = {
        view.entity.key,
        *(view_ir.entity_parts or ()),
        src.timestamp,
        *([src.arrival] if src.arrival else []),
        FILE_NO,
        ROW,
        *view_ir.fields_read,
    }
    return [c for c in events.collect_schema().names() if c in wanted]


# events read per pass over the input: ~60 MB of a few narrow columns, plus their copy into
# partitions. 10M events x 1M labels, 9 features, 25 partitions: 5 passes, 7.1 s and 1.0 GB;
# a scan per partition (and every aggregation of the view) took 17 s and 1.4 GB (RESULTS.md)
PASS_ROWS = 2_000_000
PART = "__part"


def passes_for(rows: int, partitions: int) -> int:
    """Passes over an input of ``rows`` events for ``partitions`` partitions: about
    ``PASS_ROWS`` events each, at least 1, at most one per partition."""
    return max(1, min(partitions, -(-rows // PASS_ROWS)))


def events_by_partition(
    events: pl.LazyFrame,
    key: str,
    partitions: int,
    passes: int,
    wanted: set[int],
    engine: Engine,
) -> Iterator[tuple[int, pl.LazyFrame]]:
    """Each wanted entity-hash partition's events, read in ``passes`` passes over ``events``:
    pass g reads the partitions p with p % passes == g (the filter runs inside the scan),
    then splits them. Rows keep their input order within a partition (``partition_by`` keeps
    it), so numbering them in arrival order gives what a filtered scan of the input gives.
    Memory: one pass's rows (``events``: only the columns needed), then its partitions."""
    part = _partition_of(key, partitions)
    for g in range(passes):
        mine = [p for p in range(g, partitions, passes) if p in wanted]
        if not mine:
            continue
        read = events.filter(part % passes == g).with_columns(part.alias(PART))
        split = read.collect(engine=engine).partition_by(PART, as_dict=True, include_key=False)
        empty = events.clear()
        for p in mine:
            frame = split.pop((p,), None)
            yield p, frame.lazy() if frame is not None else empty
        del split


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
