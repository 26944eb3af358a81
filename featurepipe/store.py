"""``FeatureStore``: the user-facing entry point over a repository of definitions and data.

The facade loads the definitions, validates requests and resolves feature references, then
delegates: training sets to the batch runtime (``featurepipe.batch.engine.BatchEngine``), online
lookups to the online store (``featurepipe.online.lookup.OnlineReader``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from featurepipe.batch.engine import BatchEngine
from featurepipe.batch.lineage import Lineage, read_lineage, write_training_set
from featurepipe.batch.registry import Registry, load_definitions
from featurepipe.batch.sources import SourceReport
from featurepipe.compile.polars_aggs import Engine
from featurepipe.dsl.loader import Definitions
from featurepipe.errors import DataError, DefinitionError
from featurepipe.ir.timebase import to_epoch_us
from featurepipe.project import load_project

DEFAULT_TIMESTAMP = "event_timestamp"
LOG_ENDPOINT = "python"  # the served-feature log's endpoint for in-process lookups


class FeatureStore:
    """Definitions plus where their data lives.

    Parameters
    ----------
    repo_path:
        The project root. Its ``featurepipe.toml`` (or ``[tool.featurepipe]`` in
        ``pyproject.toml``), when present, sets the definitions path, the data root against
        which relative source paths resolve, the Redis URL and the key prefix.
    definitions:
        The definitions package, relative to ``repo_path`` (default: the project's
        ``definitions``, else ``feature_defs``).
    log_dir, log_sample:
        Keep a served-feature log of ``get_online_features`` (a ``log_sample`` share of the
        lookups, as rolling Parquet files in ``log_dir``, docs/serving-http.md's schema, what
        `featurepipe monitor` reads); written from a background thread, flushed by ``close()``
        (or leaving a ``with`` block) and at exit.
    """

    def __init__(
        self,
        repo_path: str | Path = ".",
        definitions: str | Path | None = None,
        *,
        quarantine_dir: str | Path | None = None,
        redis_url: str | None = None,
        prefix: str | None = None,
        log_dir: str | Path | None = None,
        log_sample: float = 1.0,
        log_endpoint: str = LOG_ENDPOINT,
    ) -> None:
        project = load_project(repo_path).with_definitions(definitions)
        self.project = project
        # argument, else $REDIS_URL, this project's file, its dev up record (at connect)
        self.redis_url = redis_url
        self.prefix = prefix if prefix is not None else project.prefix
        self._reader: Any = None
        self.root = project.data_root
        self.registry = Registry(project.state_dir / "registry")
        self.definitions: Definitions = load_definitions(
            project.definitions, registry=self.registry.path
        )
        self.quarantine_dir = (
            Path(quarantine_dir) if quarantine_dir else project.state_dir / "quarantine"
        )
        self.last_lineage: Lineage | None = None
        self.source_reports: dict[str, SourceReport] = {}
        self._served_log: Any = None
        self._log_endpoint = log_endpoint  # the log's `endpoint` column: who looked up
        if log_dir is not None:
            self._served_log = self._open_log(project.path(log_dir), log_sample)

    def _open_log(self, directory: Path, sample: float) -> Any:
        """The served-feature log of this store's lookups (docs/serving-http.md's schema, what
        `featurepipe monitor` reads), written from a background thread; flushed by ``close``
        and at exit."""
        import atexit

        from featurepipe.online.served_log import ServedLog

        if not 0.0 <= sample <= 1.0:
            raise DataError(f"log_sample={sample!r} must be a share between 0 and 1")
        dtypes = {
            name: {f.name: f.expr.dtype for f in view.ir.features}
            for name, view in self.definitions.views.items()
        }
        log = ServedLog(directory, sample, dtypes, flush_seconds=5.0)
        atexit.register(log.close)
        return log

    def close(self) -> None:
        """Write what the served-feature log holds (when ``log_dir`` was given)."""
        if self._served_log is not None:
            self._served_log.close()
            self._served_log = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- online ----------------------------------------------------------------------------------
    def get_online_features(
        self,
        entities: Any,
        features: Sequence[str],
        *,
        at: datetime | None = None,
        fingerprints: dict[str, str] | None = None,
        as_dicts: bool = False,
        request: Any = None,
    ) -> Any:
        """Features of many entities from the online store, in one Redis round trip.

        ``entities`` holds one request row per position, as parallel columns of entity keys
        (``{"user_id": ["u1", "u2"]}``), a DataFrame, or a list of dicts, one per row
        (``[{"user_id": "u1"}, ...]``). It must give exactly the entity keys of the requested
        views, each with one value per row, of the key's declared type (an int key takes
        ints, not "42"); anything else raises ``DataError`` naming the key. Views of
        different entities join row by row, each looked up with its own key's column::

            store.get_online_features(
                {"user_id": ["u1", "u2"], "merchant_id": ["m1", "m1"]},
                ["user_spend:amount_sum_24h", "merchant_stats:txn_count_1h"],
            )

        returns a Polars DataFrame with one row per request row, in request order: the entity
        key columns (in the order the requested views use them), then for each view (in
        request order) its requested features and ``<view>_found``. ``as_dicts=True`` returns
        the same rows as dicts of features and ``<view>_found`` only (without the keys).

        Windows are finalized at ``at`` (default: now), so values never go stale. Pin versions
        with ``fingerprints={"view": "<fingerprint>"}`` (e.g. from a training set's lineage):
        a different served version raises ``VersionMismatchError``. Entities without online
        state get the declared defaults and ``<view>_found = False``. A feature name requested
        from two views raises ``DataError`` (request them in separate lookups).

        ``request`` gives the request fields (``fp.request``) the requested views read, one
        value per request row, as a mapping of field -> list (``{"amount": [12.5, 3.0]}``) or a
        DataFrame::

            store.get_online_features(
                {"user_id": ["u1", "u1"]}, ["user_risk"], request={"amount": [12.5, 300.0]}
            )

        Values must have the declared type: a float field takes floats and ints, an int field
        ints (not bools), a str field str, a bool field bools, a datetime field timezone-aware
        ``datetime``s; None is null. A field a requested view reads but the request lacks, a
        field no requested view reads, a column of another length than the entity keys', or a
        value of another type raises ``DataError``. Features of such views are computed per
        request row (two rows of one entity with different request values differ); an entity
        without online state still gets its request-only features (and ``<view>_found =
        False``).
        """
        from featurepipe.online.lookup import OnlineReader, entity_columns, request_columns
        from featurepipe.online.redis_conn import connect

        wanted = self.resolve(features)
        views = [self.definitions.view(v) for v in wanted]
        keys = entity_columns(entities)
        req = None if request is None else request_columns(request)
        if self._reader is None or set(self._reader.views) != {v.name for v in views}:
            self._reader = OnlineReader(
                connect(self.redis_url, project=self.project), views, self.prefix
            )
        at_us = None if at is None else to_epoch_us(at)
        on_rows = None
        if self._served_log is not None:
            from featurepipe.online.served_log import Lookup

            if at_us is None:  # the log records the request time used: fix "now" here
                at_us = time.time_ns() // 1000
            log, t, endpoint = self._served_log, at_us, self._log_endpoint
            served = {name: self.definitions.view(name).fingerprint for name in wanted}

            def on_rows(rows: list[dict[str, Any]]) -> None:
                log.offer(endpoint, None, Lookup(dict(wanted), keys, req, t, rows, served))

        if as_dicts:
            rows = self._reader.read_keyed(
                keys, wanted, at_us=at_us, fingerprints=fingerprints, request=req
            )
            if on_rows is not None:
                on_rows(rows)
            return rows
        return self._reader.frame(
            keys, wanted, at_us=at_us, fingerprints=fingerprints, request=req, on_rows=on_rows
        )

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
        partitions: int | None = None,
        engine: Engine = "auto",
        cluster: str | None = None,
    ) -> pl.DataFrame:
        """Point-in-time-correct features for each row of ``entity_df``.

        A row at time T sees only events with ts < T and, where the source declares an arrival
        column, only events that had arrived before T. Rows keep their order and their other
        columns (labels). Entities are processed in hash partitions, one at a time, which
        bounds memory and, measured, also saves time: ``partitions`` sets their count, and
        then at most one partition's events are in memory at once (one pass over the input
        per partition); by default about one per 400,000 events of the source (one below
        800,000 events, at most one per 10,000 label rows), read several per pass (about 2M
        events each). Only the requested features, and those they reference, are computed.
        The result does not depend on any of it, bit for bit.

        ``cluster``: compute the partitions as tasks on a Dask cluster instead, at this
        scheduler address (``"tcp://10.0.0.5:8786"``), or ``"local"`` (``"local:N"``) for N
        worker processes on this machine, started for the call; the result is the same, bit
        for bit (``docs/distributed.md``; needs ``pip install 'featurepipe[distributed]'``).
        Workers read the sources themselves: they must see the files at the same paths.

        Before any data is read, each view's entity key column and the timestamp column are
        checked: a missing column, or one whose type is not the contract's (text keys for an
        int key, text times), raises ``DataError`` naming the column, its type and the
        expected one; nothing is converted across types. ``featurepipe.batch.sources.
        read_table`` reads label files (Parquet, CSV, Arrow IPC), parsing text times.
        """
        frame = _to_polars(entity_df)
        if timestamp not in frame.columns:
            raise DataError(
                f"entity frame has no timestamp column '{timestamp}' (pass timestamp=...)"
            )
        wanted = self.resolve(features)
        requests = [(self.definitions.view(v), names) for v, names in wanted.items()]
        if cluster is None:
            batch = BatchEngine(
                self.root, quarantine_dir=self.quarantine_dir, featurepipe_version=_version()
            )
            out = batch.historical_features(
                frame,
                requests,
                timestamp=timestamp,
                references=list(features),
                full_feature_names=full_feature_names,
                partitions=partitions,
                engine=engine,
            )
        else:
            from featurepipe.batch.distributed import dask_runner

            # workers resolve the source paths the plan names: absolute, not this process's cwd
            batch = BatchEngine(
                self.root.resolve(),
                quarantine_dir=self.quarantine_dir,
                featurepipe_version=_version(),
            )
            with dask_runner(cluster) as runner:  # reachable, with workers, before any read
                out = batch.historical_features(
                    frame,
                    requests,
                    timestamp=timestamp,
                    references=list(features),
                    full_feature_names=full_feature_names,
                    partitions=partitions,
                    engine=engine,
                    runner=runner,
                )
        self.source_reports.update(out.reports)
        self.last_lineage = out.lineage
        return out.frame


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


def _version() -> str:
    from featurepipe import __version__

    return __version__


__all__ = ["FeatureStore", "Lineage", "read_lineage", "write_training_set"]
