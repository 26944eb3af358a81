"""``FeatureStore``: the user-facing entry point over a repository of definitions and data."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from featurepipe.batch.sources import SourceReport, in_arrival_order, read_events
from featurepipe.compile.polars_aggs import ARRIVED, TS, BatchProgram, Engine
from featurepipe.dsl.definitions import FeatureView
from featurepipe.dsl.loader import Definitions, load_definitions
from featurepipe.errors import DataError, DefinitionError
from featurepipe.ir.types import DType

DEFAULT_TIMESTAMP = "event_timestamp"
_ROW = "__row_id"


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


class FeatureStore:
    """Definitions plus where their data lives.

    Parameters
    ----------
    repo_path:
        The repository root; relative source paths resolve against it.
    definitions:
        The definitions package, relative to ``repo_path`` (default ``feature_defs``).
    """

    def __init__(
        self,
        repo_path: str | Path = ".",
        definitions: str | Path = "feature_defs",
        *,
        quarantine_dir: str | Path | None = None,
        redis_url: str | None = None,
        prefix: str = "fp",
    ) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self._reader: Any = None
        self.root = Path(repo_path)
        defs_path = Path(definitions)
        if not defs_path.is_absolute():
            defs_path = self.root / defs_path
        self.definitions: Definitions = load_definitions(defs_path)
        self.quarantine_dir = (
            Path(quarantine_dir) if quarantine_dir else self.root / ".featurepipe" / "quarantine"
        )
        self.last_lineage: Lineage | None = None
        self.source_reports: dict[str, SourceReport] = {}

    # -- online ----------------------------------------------------------------------------------
    def get_online_features(
        self,
        entities: Any,
        features: Sequence[str],
        *,
        at: datetime | None = None,
        fingerprints: dict[str, str] | None = None,
        as_dicts: bool = False,
    ) -> Any:
        """Features of many entities from the online store, in one Redis round trip.

        ``entities``: ``{"user_id": ["u1", "u2"]}`` (or a list of dicts with the key). Windows
        are finalized at ``at`` (default: now), so values never go stale. Pin versions with
        ``fingerprints={"view": "<fingerprint>"}`` (e.g. from a training set's lineage): a
        different served version raises ``VersionMismatchError``. Entities without online
        state get the declared defaults and ``<view>_found = False``.
        """
        from featurepipe.online.lookup import OnlineReader
        from featurepipe.online.redis_conn import connect

        wanted = self.resolve(features)
        views = [self.definitions.view(v) for v in wanted]
        keys = {v.entity.key for v in views}
        if len(keys) != 1:
            raise DataError(f"one lookup serves one entity key; these views use {sorted(keys)}")
        key = keys.pop()
        if isinstance(entities, dict):
            if key not in entities:
                raise DataError(f"entities lack '{key}' (got {sorted(entities)})")
            values = list(entities[key])
        else:
            values = [row[key] for row in entities]
        if self._reader is None or set(self._reader.views) != {v.name for v in views}:
            self._reader = OnlineReader(connect(self.redis_url), views, self.prefix)
        at_us = None if at is None else (at - datetime(1970, 1, 1, tzinfo=UTC)) // _td_us(1)
        if as_dicts:
            return self._reader.read(values, wanted, at_us=at_us, fingerprints=fingerprints)
        return self._reader.frame(key, values, wanted, at_us=at_us, fingerprints=fingerprints)

    # -- references --------------------------------------------------------------------------
    def resolve(self, features: Sequence[str]) -> dict[str, list[str]]:
        """'view:feature' or 'view' references -> {view: [features]} in request order."""
        out: dict[str, list[str]] = {}
        for ref in features:
            view_name, _, feat = ref.partition(":")
            view = self.definitions.view(view_name)
            names = view.feature_names if not feat else [feat]
            for n in names:
                if n not in view.feature_names:
                    raise DefinitionError(
                        f"no feature '{n}' in view '{view_name}' "
                        f"(has: {', '.join(view.feature_names)})"
                    )
                out.setdefault(view_name, [])
                if n not in out[view_name]:
                    out[view_name].append(n)
        if not out:
            raise DefinitionError("no features requested")
        return out

    # -- training data -------------------------------------------------------------------------
    def get_historical_features(
        self,
        entity_df: Any,
        features: Sequence[str],
        *,
        timestamp: str = DEFAULT_TIMESTAMP,
        full_feature_names: bool = False,
        partitions: int = 1,
        engine: Engine = "auto",
    ) -> pl.DataFrame:
        """Point-in-time-correct features for each row of ``entity_df``.

        A row at time T sees only events with ts < T and, where the source declares an arrival
        column, only events that had arrived before T. Rows keep their order and their other
        columns (labels). ``partitions > 1`` processes entities in hash partitions, one at a
        time, to bound memory.
        """
        frame = _to_polars(entity_df)
        if timestamp not in frame.columns:
            raise DataError(
                f"entity frame has no timestamp column '{timestamp}' (pass timestamp=...)"
            )
        wanted = self.resolve(features)
        t_us = _timestamp_us(frame, timestamp)
        if t_us.null_count():
            raise DataError(f"entity frame: {t_us.null_count()} row(s) with a null '{timestamp}'")
        result = frame
        taken: dict[str, str] = {}
        lineage = Lineage(
            featurepipe_version=_version(),
            created_at=datetime.now(UTC).isoformat(),
            entity_rows=frame.height,
            features=list(features),
        )
        events_cache: dict[str, tuple[pl.LazyFrame, SourceReport]] = {}
        t_max = int(t_us.max() or 0)  # type: ignore[arg-type]
        for view_name, names in wanted.items():
            view = self.definitions.view(view_name)
            key = view.entity.key
            if key not in frame.columns:
                raise DataError(
                    f"entity frame lacks column '{key}', the key of entity '{view.entity.name}' "
                    f"needed by view '{view_name}'"
                )
            src = view.source
            if src.name not in events_cache:
                end = datetime.fromtimestamp(0, UTC) + _td_us(t_max + 1)
                events_cache[src.name] = read_events(
                    src,
                    ordered=partitions <= 1,
                    root=self.root,
                    end=end if src.arrival is None else None,
                    quarantine_dir=self.quarantine_dir,
                )
            events, report = events_cache[src.name]
            self.source_reports[src.name] = report
            lineage.sources[src.name] = {
                "files": report.files,
                "rows": report.rows,
                "quarantined": report.quarantined,
                "min_ts": report.min_ts,
                "max_ts": report.max_ts,
            }
            lineage.views[view_name] = {"fingerprint": view.fingerprint, "features": names}
            values = self._view_features(view, frame, t_us, events, partitions, engine)
            for n in names:
                out_name = f"{view_name}__{n}" if full_feature_names else n
                if out_name in result.columns or out_name in taken:
                    raise DataError(
                        f"feature column '{out_name}' clashes with another column; "
                        "pass full_feature_names=True"
                    )
                taken[out_name] = view_name
                col = values[n]
                if view.ir.feature(n).expr.dtype is DType.DATETIME:
                    col = col.cast(pl.Datetime("us", "UTC"))
                result = result.with_columns(col.alias(out_name))
        self.last_lineage = lineage
        return result

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
        queries = pl.DataFrame({key: frame[key], TS: t_us}).with_row_index(_ROW)
        program = BatchProgram(view.ir)
        if partitions <= 1:
            return self._partition_features(program, view, queries, events, engine)
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
            parts.append(self._partition_features(program, view, q, ev, engine))
        if not parts:
            return self._partition_features(
                program, view, queries, events.pipe(in_arrival_order, view.source), engine
            )
        return pl.concat(parts).sort(_ROW)

    def _partition_features(
        self,
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
        out = program.features(ev, q.drop(_ROW), engine=engine)
        return out.with_columns(q[_ROW])


def _to_polars(df: Any) -> pl.DataFrame:
    if isinstance(df, pl.DataFrame):
        return df
    if isinstance(df, pl.LazyFrame):
        return df.collect()
    try:
        import pyarrow as pa

        if isinstance(df, pa.Table):
            out = pl.from_arrow(df)
            assert isinstance(out, pl.DataFrame)
            return out
    except ImportError:  # pragma: no cover
        pass
    if type(df).__module__.startswith("pandas"):
        return pl.from_pandas(df)
    if isinstance(df, dict):
        return pl.DataFrame(df)
    raise DataError(
        f"entity frame of type {type(df).__name__} is not supported (Polars, pandas, Arrow)"
    )


def _timestamp_us(frame: pl.DataFrame, name: str) -> pl.Series:
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


def _td_us(us: int) -> Any:
    from datetime import timedelta

    return timedelta(microseconds=us)


def _version() -> str:
    from featurepipe import __version__

    return __version__


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


__all__ = ["FeatureStore", "Lineage", "read_lineage", "write_training_set"]
