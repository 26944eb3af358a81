"""Batch commands: plan, generate, fit, training-set, parity."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer
from rich.markup import escape
from rich.progress import Progress, TaskID

from featurepipe.cli.app import app
from featurepipe.cli.common import (
    AddressOpt,
    DefsOpt,
    JsonOpt,
    RepoOpt,
    console,
    event_log_files,
    load_defs,
    print_json,
    project_for,
    table,
    typed_and_resolved,
    typed_path,
    when,
)
from featurepipe.errors import FeaturepipeError
from featurepipe.progress import progress_bar
from featurepipe.project import Project


@app.command()
def plan(
    defs: DefsOpt = None,
    repo: RepoOpt = None,
    view: Annotated[str | None, typer.Option(help="Only this view.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Load definitions, check them, show each view's fingerprint and both compiled plans.

    Before `featurepipe fit`, views with fitted transforms are shown with their artifacts
    marked "not fitted yet" (the plans hold placeholders for them)."""
    from featurepipe.compile.polars_aggs import BatchProgram
    from featurepipe.compile.python_state import ViewProgram
    from featurepipe.ir.aggs import kind_of
    from featurepipe.ir.describe import describe

    d, artifacts = _plan_definitions(project_for(repo, defs))
    views = [d.view(view)] if view else list(d.views.values())
    if as_json:
        print_json(
            {
                "fitted": all(a["fitted"] for a in artifacts),
                "views": [
                    _plan_json(v, [a for a in artifacts if a["view"] == v.name]) for v in views
                ],
            }
        )
        return
    for v in views:
        # artifacts are listed only when some are not fitted yet: then every fitted op of
        # every view is built with a placeholder, and those views' fingerprints are not final
        mine = [a for a in artifacts if a["view"] == v.name]
        console.rule(
            f"[bold]{escape(v.name)}[/]  "
            + ("fingerprint not final (not fitted yet)" if mine else f"fingerprint {v.fingerprint}")
        )
        console.print(
            f"entity [cyan]{escape(v.entity.name)}[/] (key {escape(v.entity.key)}), "
            f"source [cyan]{escape(v.source.name)}[/], "
            f"{len(v.ir.features)} features, {len(v.ir.aggs)} aggregations, "
            f"lateness {v.ir.lateness_us // 1_000_000}s"
        )
        if mine:
            console.print("fitted artifacts:")
            for a in mine:
                where = ", ".join(a["features"]) or "(no feature found)"
                status = "in the registry" if a["fitted"] else "[yellow]not fitted yet[/]"
                console.print(f"  {escape(where)}: {escape(a['op'])} {a['artifact']} {status}")
            console.print(
                "[yellow]the plans below hold placeholders[/] for fitted values (empty "
                "vocabularies, mean 0 and std 1, one bucket boundary at 0): run `featurepipe fit "
                "--start ... --end ...` to fit them; training-set, materialize, stream, get and "
                "parity need them fitted"
            )
        unfitted = {f for a in mine if not a["fitted"] for f in a["features"]}
        features = table("feature", "type", "definition")
        for f in v.ir.features:
            text = escape(describe(f.expr))
            if f.name in unfitted:
                text += "  [yellow](not fitted yet: placeholder)[/]"
            features.add_row(escape(f.name), escape(str(f.expr.dtype)), text)
        console.print(features)
        prog = ViewProgram(v.ir)
        console.print("[bold]per-event plan[/] (generated Python):")
        console.print(prog.row_source, markup=False, highlight=False)
        console.print(prog.compact_source, markup=False, highlight=False)
        console.print(prog.query_source, markup=False, highlight=False)
        console.print("[bold]batch plan[/] (Polars, row stage; aggregation kernels listed below):")
        schema = {name: _pl_type(t) for name, t in v.ir.fields}
        empty = pl.LazyFrame(schema=schema).with_columns(
            pl.col(v.source.timestamp).alias("__ts"), pl.lit(0, pl.Int64).alias("__seq")
        )
        console.print(BatchProgram(v.ir).prepare(empty).explain(), markup=False, highlight=False)
        for i, agg in enumerate(v.ir.aggs):
            w = "lifetime" if agg.window_us is None else f"{agg.window_us // 1_000_000}s"
            if agg.hop_us is not None:
                w += f" hopped every {agg.hop_us // 1_000_000}s"
            console.print(f"  agg{i}: {agg.kind} over {w} -> {kind_of(agg).plan}")


_FITTED_OP = {"encode": "encode", "standardize": "standardize", "quantiles": "bucketize"}


def _plan_definitions(project: Project) -> tuple[Any, list[dict[str, Any]]]:
    """The definitions to plan, and each fitted artifact they use with whether it is fitted.

    With every artifact in the registry: the definitions as every other command loads them,
    and no artifacts listed. Otherwise (before `featurepipe fit`, or after a fitted op was
    added): loaded in fitting mode, where every fitted op is built with a placeholder, and
    each artifact listed with whether the registry holds it."""
    from featurepipe.batch.registry import Registry
    from featurepipe.errors import UnsupportedOperationError
    from featurepipe.ir.describe import describe

    try:
        return load_defs(project), []
    except UnsupportedOperationError as refused:
        d = load_defs(project, fitting=True)
        if not d.fit_requests:
            raise refused from None
    in_force = Registry(project.state_dir / "registry").current_artifacts()
    artifacts: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for req in d.fit_requests:
        if (req.view, req.artifact_id) in seen:
            continue
        seen.add((req.view, req.artifact_id))
        args = [describe(req.arg), *(f"{k}={v!r}" for k, v in req.params)]
        artifacts.append(
            {
                "view": req.view,
                "artifact": req.artifact_id,
                "kind": req.kind,
                "op": f"{_FITTED_OP.get(req.kind, req.kind)}({', '.join(args)})",
                "features": _features_using(d.view(req.view), req),
                "fitted": req.artifact_id in in_force.get(req.view, {}),
            }
        )
    return d, artifacts


def _features_using(view: Any, req: Any) -> list[str]:
    """The features whose expression holds the placeholder built for fit request ``req``."""
    from featurepipe.ir import nodes as ir

    def holds_arg(n: ir.Node) -> bool:
        return n == req.arg or (isinstance(n, ir.Call) and n.op == "cast" and n.args[0] == req.arg)

    def is_placeholder(n: ir.Node) -> bool:
        if not isinstance(n, ir.Call) or not n.args:
            return False
        if req.kind == "encode":
            return n.op == "encode" and n.args[0] == req.arg and n.param("vocabulary") == ()
        if req.kind == "quantiles":
            return n.op == "bucketize" and holds_arg(n.args[0]) and n.param("boundaries") == (0.0,)
        if req.kind == "standardize":
            inner = n.args[0]
            return (
                n.op == "truediv"
                and isinstance(inner, ir.Call)
                and inner.op == "sub"
                and holds_arg(inner.args[0])
            )
        return False

    return [f.name for f in view.ir.features if any(is_placeholder(n) for n in f.expr.walk())]


def _plan_json(v: Any, artifacts: list[dict[str, Any]]) -> dict[str, Any]:
    from featurepipe.ir.aggs import kind_of
    from featurepipe.ir.describe import describe

    src = v.source
    return {
        "name": v.name,
        "fingerprint": None if artifacts else v.fingerprint,  # placeholders: not final
        "fitted": all(a["fitted"] for a in artifacts),
        "entity": v.entity.name,
        "key": v.entity.key,
        "source": {
            "name": src.name,
            "timestamp": src.timestamp,
            "batch": None if src.batch is None else str(src.batch.path),
            "stream": None if src.stream is None else src.stream.topic,
        },
        "lateness_s": v.ir.lateness_us // 1_000_000,
        "features": [
            {"name": f.name, "type": str(f.expr.dtype), "definition": describe(f.expr)}
            for f in v.ir.features
        ],
        "aggregations": [
            {
                "kind": agg.kind,
                "window_s": None if agg.window_us is None else agg.window_us // 1_000_000,
                "hop_s": None if agg.hop_us is None else agg.hop_us // 1_000_000,
                "definition": describe(agg),
                "batch_kernel": kind_of(agg).plan,
            }
            for agg in v.ir.aggs
        ],
        "fitted_artifacts": [
            {k: a[k] for k in ("artifact", "kind", "op", "features", "fitted")} for a in artifacts
        ],
    }


def _pl_type(t: object) -> pl.DataType:
    from featurepipe.compile.polars_rows import PL_TYPES

    return PL_TYPES[t]  # type: ignore[index]


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Parquet file to write.")] = Path(
        "data/transactions/part-0.parquet"
    ),
    events: Annotated[int, typer.Option(help="Number of events.")] = 100_000,
    users: int = 10_000,
    seed: int = 7,
    late_fraction: float = 0.02,
) -> None:
    """Generate a transactions log (arrival order, some late events) as Parquet."""
    from featurepipe.dev.datagen import generate_transactions

    t = time.perf_counter()
    df = generate_transactions(events, users=users, seed=seed, late_fraction=late_fraction)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(out)
    console.print(
        f"wrote {df.height:,} events for {df['user_id'].n_unique():,} users to {out} "
        f"in {time.perf_counter() - t:.1f}s"
    )


@app.command()
def parity(
    defs: DefsOpt = None,
    repo: RepoOpt = None,
    events: Annotated[
        Path | None,
        typer.Option(
            help="Event log instead of each view's own source: a Parquet (.parquet, .pq), CSV "
            "(.csv) or JSON lines (.jsonl, .ndjson) file, or a directory or glob of Parquet "
            "files (name order), relative to the project root; row order = arrival order. For "
            "one view, or views of one source."
        ),
    ] = None,
    view: Annotated[str | None, typer.Option(help="Only this view.")] = None,
    sample: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Fraction of events that get query points (more than 0, at most 1).",
        ),
    ] = 1.0,
    seed: int = 0,
    jobs: Annotated[
        int,
        typer.Option(
            min=0,
            help="Processes to check in, each a share of the entities whole (the report is the "
            "same); 0: one per core, at most one per 50,000 events.",
        ),
    ] = 0,
    e2e: Annotated[
        bool, typer.Option("--e2e", help="Through a real Kafka topic, the worker and Redis.")
    ] = False,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap (with --e2e).")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL (with --e2e).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay events through the per-event path, compare with the batch path bit for bit.

    By default each view replays its own source's Parquet events (under the project's data
    root), contract-checked and in arrival order, as training sets and materialize read them."""
    if sample <= 0:
        raise FeaturepipeError(
            f"--sample {sample}: must be more than 0 (the fraction of events that get query "
            "points, at most 1)"
        )
    project = project_for(repo, defs)
    d = load_defs(project)
    views = [d.view(view)] if view else list(d.views.values())
    if e2e:
        _parity_e2e(project, d, views, events, bootstrap, redis_url, as_json)
        return
    from featurepipe.parity.harness import auto_jobs, run_parity

    failed = False
    out: list[dict[str, Any]] = []
    for v, log, source in _parity_logs(project, views, events, quiet=as_json):
        n_jobs = jobs or auto_jobs(log.height)
        if as_json:
            report = run_parity(v, log, sample=sample, seed=seed, jobs=n_jobs)
        else:
            with progress_bar(console, f"{v.name} replay") as bar:
                task = bar.add_task("replay", total=log.height)

                def advance(i: int, bar: Progress = bar, task: TaskID = task) -> None:
                    bar.update(task, completed=i)

                report = run_parity(v, log, sample=sample, seed=seed, progress=advance, jobs=n_jobs)
        failed |= not report.ok
        if as_json:
            out.append({**report.as_dict(), "mode": "in-process", "source": source})
            continue
        console.print(_parity_timing(report))
        _report_table(report, f"parity: view {v.name} (fingerprint {v.fingerprint})")
    if as_json:
        print_json({"ok": not failed, "views": out})
    if failed:
        raise typer.Exit(1)


def _parity_logs(
    project: Project, views: list[Any], events: Path | None, *, quiet: bool
) -> list[tuple[Any, pl.DataFrame, dict[str, Any]]]:
    """Each view with the event log it replays and where that came from.

    Default: the view's own source as the batch path reads it (``source_log``: its Parquet
    files under the data root, contract-checked, in arrival order), read once per source.
    ``events`` replaces the source's log as it is (row order = arrival order; a CSV or JSON
    lines file read with the contract's types, as the Parquet files are): it belongs to one
    source, so the views must share one."""
    from featurepipe.parity.harness import source_log

    if events is not None:
        sources = sorted({v.source.name for v in views})
        if len(sources) > 1:
            listed = ", ".join(f"'{v.name}' (source '{v.source.name}')" for v in views)
            raise FeaturepipeError(
                f"--events replaces the events of one source, and these views read different "
                f"sources: {listed}; pass --view, or leave --events out to replay each view's "
                "own source"
            )
        log, files = read_event_log_frame(project, events, views[0].source if views else None)
        info = {"name": sources[0] if sources else None, "events": str(events)}
        info |= {"files": [str(f) for f in files], "rows": log.height, "quarantined": 0}
        if not quiet:
            shown = typed_and_resolved(project, events)
            console.print(f"event log {escape(shown)}: {log.height:,} events")
        return [(v, log, info) for v in views]
    logs: dict[str, tuple[pl.DataFrame, dict[str, Any]]] = {}
    out = []
    for v in views:
        src = v.source
        if src.name not in logs:
            if src.batch is None:
                raise FeaturepipeError(
                    f"view '{v.name}': source '{src.name}' declares no ParquetSource: pass --events"
                )
            log, rep = source_log(src, root=project.data_root)
            info = {
                "name": src.name,
                "path": str(src.batch.path),
                "files": [f["path"] for f in rep.files],
                "rows": rep.rows,
                "quarantined": rep.quarantined,
            }
            logs[src.name] = (log, info)
            if not quiet:
                console.print(
                    f"source [cyan]{escape(src.name)}[/]: {rep.rows:,} events from "
                    f"{len(rep.files)} file(s) under {escape(str(src.batch.path))}, in arrival "
                    "order"
                    + (
                        f"; [yellow]{rep.quarantined:,} rows breaking the contract left out[/]"
                        if rep.quarantined
                        else ""
                    )
                )
        log, info = logs[src.name]
        out.append((v, log, info))
    return out


EVENT_LOGS = (
    "a Parquet (.parquet, .pq), CSV (.csv) or JSON lines (.jsonl, .ndjson) file, or a directory "
    "or glob of Parquet files"
)
_EVENT_FORMATS = {
    ".parquet": "Parquet",
    ".pq": "Parquet",
    ".csv": "CSV",
    ".jsonl": "JSON lines",
    ".ndjson": "JSON lines",
}


def read_event_log_frame(
    project: Project, events: Path, source: Any
) -> tuple[pl.DataFrame, list[Path]]:
    """The events of ``--events`` as one frame in file then row order, and its files.

    Parquet is read as stored; CSV and JSON lines with the contract's types (``source``, when
    known), as a Parquet file written from the same events holds them: text fields stay text
    (``"007"`` is not 7), datetimes are UTC datetimes (ISO-8601 text, naive meaning UTC)."""
    files = event_log_files(project, events)
    shown, note = typed_path(project, events)
    single = len(files) == 1 and files[0] == project.path(events)
    frames = []
    for file in files:
        label = f"'{shown}'{note}" if single else f"'{file}'"
        frames.append(_read_event_file(file, label, source))
    return pl.concat(frames, how="vertical_relaxed"), files


def _read_event_file(file: Path, label: str, source: Any) -> pl.DataFrame:
    from featurepipe.batch.sources import read_table
    from featurepipe.errors import DataError
    from featurepipe.ir.types import DType

    kind = _EVENT_FORMATS.get(file.suffix.lower())
    if kind is None:
        raise FeaturepipeError(
            f"event log {label}: unknown extension '{file.suffix or '(none)'}'; accepted: "
            f"{EVENT_LOGS}"
        )
    fields = {} if source is None else dict(source.fields)
    try:
        if kind == "Parquet":
            return pl.read_parquet(file)
        if kind == "CSV":
            text = [n for n, (t, _) in fields.items() if t is DType.STR]
            ts = None if source is None else source.timestamp
            frame = read_table(file, timestamp=ts, text_columns=text, name=f"event log {label}")
        else:
            frame = pl.read_ndjson(file)
    except DataError:
        raise
    except (OSError, pl.exceptions.PolarsError) as e:
        raise FeaturepipeError(
            f"event log {label} cannot be read as {kind} ({type(e).__name__}: {e}); accepted: "
            f"{EVENT_LOGS}, chosen by the file's extension"
        ) from None
    return frame if source is None else _as_contract(frame, source, label)


def _as_contract(frame: pl.DataFrame, source: Any, label: str) -> pl.DataFrame:
    """The contract's fields of a CSV or JSON lines frame in the types the Parquet files hold:
    a value of another type is a ``DataError`` naming the file, the column and the value."""
    from featurepipe.compile.polars_rows import PL_TYPES
    from featurepipe.errors import DataError
    from featurepipe.ir.types import DType

    cols = []
    for name, (dtype, _) in source.fields.items():
        if name not in frame.columns:
            continue  # the replay names the fields the log lacks
        col = frame[name]
        if dtype is DType.DATETIME:
            cols.append(_instants(col, label))
            continue
        target = PL_TYPES[dtype]
        if col.dtype == target:
            continue
        if dtype is DType.BOOL and col.dtype == pl.String:
            low = col.str.strip_chars().str.to_lowercase()
            value = pl.select(
                pl.when(low == "true").then(True).when(low == "false").then(False)
            ).to_series()
        else:
            value = col.cast(target, strict=False)
        bad = col.is_not_null() & value.is_null()
        if dtype is DType.INT and col.dtype.is_float():
            bad |= (col != col.round(0)).fill_null(False)
        if bad.any():
            row = int(bad.arg_true()[0])
            raise DataError(
                f"event log {label}: column '{name}', row {row + 1}: {col[row]!r} is not a "
                f"{dtype} (field '{name}' of source '{source.name}')"
            )
        cols.append(value.alias(name))
    return frame.with_columns(cols) if cols else frame


def _instants(col: pl.Series, label: str) -> pl.Series:
    """A datetime field as UTC datetimes in microseconds (text: ISO-8601, naive meaning UTC)."""
    from featurepipe.errors import DataError
    from featurepipe.ir.timebase import parse_instant

    utc = pl.Datetime("us", "UTC")
    if isinstance(col.dtype, pl.Datetime):
        zoned = col.dt.replace_time_zone("UTC") if col.dtype.time_zone is None else col
        return zoned.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    if isinstance(col.dtype, pl.Date | pl.Null):
        return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if col.dtype != pl.String:
        raise DataError(
            f"event log {label}: column '{col.name}' holds {col.dtype} values, not date-times "
            "(epoch numbers are ambiguous: write ISO-8601 text)"
        )
    parsed = col.str.to_datetime(time_zone="UTC", strict=False, time_unit="us")
    if not (parsed.is_null() & col.is_not_null()).any():
        return parsed
    values = []
    for row, text in enumerate(col.to_list()):
        try:
            values.append(None if text is None else parse_instant(text, f"column '{col.name}'"))
        except FeaturepipeError:
            raise DataError(
                f"event log {label}: column '{col.name}', row {row + 1}: {text!r} is not an "
                "ISO-8601 date or date-time (e.g. 2026-01-15T08:30:00Z; naive times are UTC)"
            ) from None
    return pl.Series(col.name, values, dtype=utc)


@app.command()
def fit(
    start: Annotated[str | None, typer.Option(help="ISO time (UTC if naive), inclusive.")] = None,
    end: Annotated[str | None, typer.Option(help="ISO time (UTC if naive), exclusive.")] = None,
    repo: RepoOpt = None,
    defs: DefsOpt = None,
) -> None:
    """Fit vocabularies, scaling and quantile boundaries, and feature baselines; freeze them."""
    from featurepipe.batch.fit import fit as run_fit

    project = project_for(repo, defs)
    start_at, end_at = when(start, "--start"), when(end, "--end")
    t = time.perf_counter()
    report = run_fit(
        project.data_root,
        project.definitions,
        start_at,
        end_at,
        registry=project.state_dir / "registry",
    )
    for view, info in report.views.items():
        console.rule(f"[bold]{view}[/]  fingerprint {info['fingerprint']}")
        for aid, value in info.get("fitted", {}).items():
            console.print(f"  {aid}: {value}")
        if "artifacts" in info:
            console.print(f"  artifacts: {info['artifacts']}")
        console.print(f"  baseline over {info['points']:,} query points: {info['baseline']}")
    console.print(f"fitted in {time.perf_counter() - t:.1f}s")


@app.command("training-set")
def training_set(
    entities: Annotated[
        Path,
        typer.Option(
            help="Label rows (entity keys, a timestamp, labels) as Parquet (.parquet), CSV "
            "(.csv) or Arrow IPC (.arrow, .ipc, .feather), by extension. Timestamps given as "
            "text (a CSV's) are read as ISO-8601, naive meaning UTC."
        ),
    ],
    features: Annotated[str, typer.Option(help="Comma-separated 'view:feature' or 'view'.")],
    out: Annotated[
        Path, typer.Option(help="Parquet file to write (.parquet), relative to the project root.")
    ],
    repo: RepoOpt = None,
    defs: DefsOpt = None,
    timestamp: Annotated[
        str, typer.Option(help="Timestamp column of the label rows.")
    ] = "event_timestamp",
    partitions: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Entity hash partitions (the result does not depend on them). Given: at "
            "most one partition's events in memory, one pass over the input each. Default: "
            "about one per 400,000 events of the source, read ~2M events per pass.",
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="Where the partitions are computed: 'local' (here, one after another) or "
            "'dask' (as tasks on a Dask cluster, see --address; same result, bit for bit)."
        ),
    ] = "local",
    address: AddressOpt = None,
    baseline: Annotated[
        bool,
        typer.Option(
            help="Record the training set's feature distributions as each view version's "
            "monitoring baseline (`featurepipe monitor`); --no-baseline for an evaluation set."
        ),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Point-in-time-correct training set for label rows (Parquet, CSV or Arrow IPC) from the
    sources' Parquet data, with lineage in the written Parquet file's metadata."""
    from featurepipe.batch.sources import read_table
    from featurepipe.ir.types import DType
    from featurepipe.store import FeatureStore, write_training_set

    if out.suffix.lower() != ".parquet":
        raise FeaturepipeError(
            f"--out {out}: a training set is written as Parquet, with its lineage in the file's "
            f"metadata; name the file with a .parquet extension (e.g. --out "
            f"{out.with_suffix('.parquet')})"
        )
    if engine not in ("local", "dask"):
        raise FeaturepipeError(f"--engine {engine}: expected 'local' or 'dask'")
    if address is not None and engine != "dask":
        raise FeaturepipeError("--address names a Dask scheduler: it needs --engine dask")
    cluster = (address or "local") if engine == "dask" else None
    t = time.perf_counter()
    project = project_for(repo, defs)
    store = FeatureStore(project.root, project.definitions)
    refs = [f.strip() for f in features.split(",") if f.strip()]
    wanted = store.resolve(refs)
    views = [store.definitions.view(v) for v in wanted]
    # a text key stays text in a CSV ("007" is not 7); other types are checked, not converted
    text_keys = [
        part for v in views for part in v.entity.parts if v.source.fields[part][0] is DType.STR
    ]
    shown, note = typed_path(project, entities)
    labels = read_table(
        project.path(entities),
        timestamp=timestamp,
        text_columns=text_keys,
        name=f"{shown}{note}",
    )
    _check_labels(labels, f"labels '{shown}'{note}", timestamp, views, wanted)
    df = store.get_historical_features(
        labels, refs, timestamp=timestamp, partitions=partitions, cluster=cluster
    )
    assert store.last_lineage is not None
    out_shown = typed_and_resolved(project, out)
    out = project.path(out)
    write_training_set(df, out, store.last_lineage)
    baselines: list[Path] = []
    if baseline:  # the distributions this version of the model is trained on
        from featurepipe.monitoring import record_baseline

        baselines = record_baseline(
            store, df, store.last_lineage, origin=f"training set {out_shown}"
        )
    if as_json:
        print_json(
            {
                "out": out,
                "rows": df.height,
                "columns": df.columns,
                "sources": {
                    name: {
                        "rows_in_files": rep.rows_in_files,
                        "events_used": rep.rows,
                        "quarantined": rep.quarantined,
                        "outside_range": rep.outside_range,
                        "quarantine_file": rep.quarantine_file,
                        "reasons": rep.reasons,
                        "files": len(rep.files),
                    }
                    for name, rep in store.source_reports.items()
                },
                "views": {
                    view: {"fingerprint": info["fingerprint"], "features": info["features"]}
                    for view, info in store.last_lineage.views.items()
                },
                "baselines": [str(p) for p in baselines],
                "seconds": round(time.perf_counter() - t, 3),
            }
        )
        return
    for name, rep in store.source_reports.items():
        console.print(
            f"source [cyan]{name}[/]: {rep.rows_in_files:,} rows in {len(rep.files)} file(s): "
            f"{rep.rows:,} events used"
            + (
                f", [yellow]{rep.quarantined:,} quarantined[/] ({rep.quarantine_file})"
                if rep.quarantined
                else ""
            )
            + (
                f", {rep.outside_range:,} dated after the last label (not needed)"
                if rep.outside_range
                else ""
            )
        )
        for reason, n in sorted(rep.reasons.items()):
            console.print(f"   {n:,} x {reason}")
    for view, info in store.last_lineage.views.items():
        console.print(
            f"view [cyan]{view}[/] fingerprint {info['fingerprint']}: {len(info['features'])} feature(s)"
        )
    if baselines:
        console.print(
            f"monitoring baseline recorded for {len(baselines)} view version(s) "
            "(`featurepipe monitor --current <served logs or fresh features>`)"
        )
    console.print(
        f"wrote {df.height:,} rows x {df.width} columns to {escape(out_shown)} in "
        f"{time.perf_counter() - t:.1f}s"
    )


def _check_labels(
    labels: pl.DataFrame,
    what: str,
    timestamp: str,
    views: list[Any],
    wanted: dict[str, list[str]],
) -> None:
    """The label rows' timestamp and key columns, checked as the batch engine checks them, with
    the file (``what``) and the option to change named: a ``DataError``."""
    from featurepipe.batch.engine import entity_key, query_times
    from featurepipe.errors import DataError

    columns = ", ".join(labels.columns)
    if timestamp not in labels.columns:
        raise DataError(
            f"{what}: no timestamp column '{timestamp}' (columns: {columns}; choose one with "
            "--timestamp)"
        )
    try:
        times = query_times(labels, timestamp)
        for v in views:
            entity_key(labels, v)
    except DataError as e:
        # the engine speaks of the "entity frame" (the API's word): here it is the file
        raise DataError(f"{what}: {str(e).removeprefix('entity frame ')}") from None
    if times.null_count():
        first = int(times.is_null().arg_true()[0])
        raise DataError(
            f"{what}: {times.null_count():,} row(s) without a time in the timestamp column "
            f"'{timestamp}' (first: row {first + 1}); every label row needs one (--timestamp "
            "names the column)"
        )
    for view, names in wanted.items():
        for n in names:
            if n in labels.columns:
                raise DataError(
                    f"{what}: column '{n}' has the name of feature '{view}:{n}', which the "
                    "training set adds: rename the column or leave the feature out"
                )


def _parity_timing(report: Any) -> str:
    """The line of counts and times under an in-process check."""
    skipped = (
        f"{report.queries:,} query points; "
        f"{report.skipped_beyond_lateness:,} query points beyond the lateness horizon not asked; "
        f"{report.skipped_null_entity:,} events without an entity key skipped."
    )
    if report.jobs == 1:
        return (
            f"{report.events:,} events replayed in {report.seconds_stream:.1f}s "
            f"({report.events / max(report.seconds_stream, 1e-9):,.0f} events/s per-event path, "
            f"with queries), batch plan {report.seconds_batch:.1f}s; {skipped}"
        )
    return (
        f"{report.events:,} events checked in {report.seconds_wall:.1f}s by {report.jobs} "
        f"processes ({report.events / max(report.seconds_wall, 1e-9):,.0f} events/s end to end; "
        f"per-event replay {report.seconds_stream:.1f}s and batch plan "
        f"{report.seconds_batch:.1f}s, summed over the processes); {skipped}"
    )


def _report_table(report: Any, title: str) -> bool:
    from featurepipe.parity.harness import show_first

    out = table("feature", "type", "compared", "mismatched", "first difference", title=title)
    for f in report.features:
        first = ""
        if f.first is not None:
            shown = show_first(f.first)
            first = (
                f"entity={shown['entity']} t={shown['time']} batch={shown['batch']} "
                f"stream={shown['stream']}"
            )
        style = "red" if f.mismatched else "green"
        out.add_row(
            f.name, str(f.dtype), f"{f.compared:,}", f"[{style}]{f.mismatched:,}[/]", escape(first)
        )
    console.print(out)
    verdict = "[green]0 mismatches[/]" if report.ok else f"[red]{report.mismatches:,} mismatches[/]"
    console.print(
        f"view {report.view}: {verdict} over {report.queries * len(report.features):,} values"
    )
    return bool(report.ok)


def _parity_e2e(
    project: Project,
    d: Any,
    views: list[Any],
    events: Path | None,
    bootstrap: str | None,
    redis_url: str | None,
    as_json: bool = False,
) -> None:
    from featurepipe.parity.e2e import run_e2e
    from featurepipe.settings import kafka_bootstrap

    streamed = [v for v in views if v.source.stream is not None]
    for v in views:
        if v.source.stream is None and not as_json:
            console.print(f"view {escape(v.name)}: its source declares no KafkaSource, skipped")
    ok = True
    out: list[dict[str, Any]] = []
    for v, log, source in _parity_logs(project, streamed, events, quiet=as_json):
        if as_json:
            report = run_e2e(
                d, v.name, log, bootstrap=kafka_bootstrap(bootstrap), redis_url=redis_url
            )
            ok &= report.ok
            out.append({**report.as_dict(), "mode": "e2e", "source": source})
            continue
        with console.status(f"{v.name}: producing {log.height:,} events, streaming into Redis ..."):
            report = run_e2e(
                d, v.name, log, bootstrap=kafka_bootstrap(bootstrap), redis_url=redis_url
            )
        console.print(
            f"{report.events:,} events through Kafka and the worker into Redis in "
            f"{report.seconds_stream:.1f}s; {report.queries:,} online lookups compared with the batch plan"
        )
        ok &= _report_table(
            report, f"end-to-end parity: view {v.name} (fingerprint {v.fingerprint})"
        )
    if as_json:
        print_json({"ok": ok, "views": out})
    if not ok:
        raise typer.Exit(1)
