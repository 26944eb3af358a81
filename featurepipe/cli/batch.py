"""Batch commands: plan, generate, fit, training-set, parity."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer
from rich.progress import Progress, TaskID

from featurepipe.cli.app import app
from featurepipe.cli.common import (
    DefsOpt,
    RepoOpt,
    console,
    load_defs,
    project_for,
    table,
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
) -> None:
    """Load definitions, check them, show each view's fingerprint and both compiled plans."""
    from featurepipe.compile.polars_aggs import BatchProgram
    from featurepipe.compile.python_state import ViewProgram
    from featurepipe.ir.aggs import KINDS
    from featurepipe.ir.describe import describe

    d = load_defs(project_for(repo, defs))
    for v in d.views.values():
        if view and v.name != view:
            continue
        console.rule(f"[bold]{v.name}[/]  fingerprint {v.fingerprint}")
        console.print(
            f"entity [cyan]{v.entity.name}[/] (key {v.entity.key}), source [cyan]{v.source.name}[/], "
            f"{len(v.ir.features)} features, {len(v.ir.aggs)} aggregations, "
            f"lateness {v.ir.lateness_us // 1_000_000}s"
        )
        features = table("feature", "type", "definition")
        for f in v.ir.features:
            features.add_row(f.name, str(f.expr.dtype), describe(f.expr))
        console.print(features)
        prog = ViewProgram(v.ir)
        console.print("[bold]per-event plan[/] (generated Python):")
        console.print(prog.row_source, markup=False, highlight=False)
        console.print(prog.final_source, markup=False, highlight=False)
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
            console.print(f"  agg{i}: {agg.kind} over {w} -> {KINDS[agg.kind].plan}")


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
        Path, typer.Option(help="Event log (Parquet; row order = arrival order).")
    ] = Path("data/transactions/part-0.parquet"),
    view: Annotated[str | None, typer.Option(help="Only this view.")] = None,
    sample: Annotated[float, typer.Option(help="Fraction of events that get query points.")] = 1.0,
    seed: int = 0,
    e2e: Annotated[
        bool, typer.Option("--e2e", help="Through a real Kafka topic, the worker and Redis.")
    ] = False,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap (with --e2e).")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL (with --e2e).")] = None,
) -> None:
    """Replay events through the per-event path, compare with the batch path bit for bit."""
    project = project_for(repo, defs)
    if e2e:
        _parity_e2e(project, events, view, bootstrap, redis_url)
        return
    from featurepipe.parity.harness import run_parity

    d = load_defs(project)
    if not events.exists():
        raise FeaturepipeError(f"event log '{events}' does not exist (try `featurepipe generate`)")
    log = pl.read_parquet(events)
    failed = False
    for v in d.views.values():
        if view and v.name != view:
            continue
        with progress_bar(console, f"{v.name} replay") as bar:
            task = bar.add_task("replay", total=log.height)

            def advance(i: int, bar: Progress = bar, task: TaskID = task) -> None:
                bar.update(task, completed=i)

            report = run_parity(v, log, sample=sample, seed=seed, progress=advance)
        console.print(
            f"{report.events:,} events replayed in {report.seconds_stream:.1f}s "
            f"({report.events / max(report.seconds_stream, 1e-9):,.0f} events/s per-event path, with queries); "
            f"{report.queries:,} query points, batch plan {report.seconds_batch:.1f}s; "
            f"{report.skipped_beyond_lateness:,} query points beyond the lateness horizon not asked; "
            f"{report.skipped_null_entity:,} events without an entity key skipped."
        )
        _report_table(report, f"parity: view {v.name} (fingerprint {v.fingerprint})")
        failed |= not report.ok
    if failed:
        raise typer.Exit(1)


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
    entities: Annotated[Path, typer.Option(help="Label rows: entity keys, a timestamp, labels.")],
    features: Annotated[str, typer.Option(help="Comma-separated 'view:feature' or 'view'.")],
    out: Annotated[Path, typer.Option(help="Parquet file to write.")],
    repo: RepoOpt = None,
    defs: DefsOpt = None,
    timestamp: Annotated[
        str, typer.Option(help="Timestamp column of the label rows.")
    ] = "event_timestamp",
    partitions: Annotated[int, typer.Option(help="Entity hash partitions (bounds memory).")] = 1,
) -> None:
    """Point-in-time-correct training set from Parquet, with lineage in the file's metadata."""
    from featurepipe.store import FeatureStore, write_training_set

    t = time.perf_counter()
    project = project_for(repo, defs)
    store = FeatureStore(project.root, project.definitions)
    labels = pl.read_parquet(entities)
    refs = [f.strip() for f in features.split(",") if f.strip()]
    df = store.get_historical_features(labels, refs, timestamp=timestamp, partitions=partitions)
    assert store.last_lineage is not None
    write_training_set(df, out, store.last_lineage)
    for name, rep in store.source_reports.items():
        console.print(
            f"source [cyan]{name}[/]: {rep.rows:,} events from {len(rep.files)} file(s)"
            + (
                f", [yellow]{rep.quarantined:,} quarantined[/] ({rep.quarantine_file})"
                if rep.quarantined
                else ""
            )
        )
        for reason, n in sorted(rep.reasons.items()):
            console.print(f"   {n:,} x {reason}")
    for view, info in store.last_lineage.views.items():
        console.print(
            f"view [cyan]{view}[/] fingerprint {info['fingerprint']}: {len(info['features'])} feature(s)"
        )
    console.print(
        f"wrote {df.height:,} rows x {df.width} columns to {out} in {time.perf_counter() - t:.1f}s"
    )


def _report_table(report: Any, title: str) -> bool:
    out = table("feature", "type", "compared", "mismatched", "first difference", title=title)
    for f in report.features:
        first = (
            ""
            if f.first is None
            else (
                f"entity={f.first['entity']} t={f.first['time_us']} batch={f.first['batch']} "
                f"stream={f.first['stream']}"
            )
        )
        style = "red" if f.mismatched else "green"
        out.add_row(f.name, str(f.dtype), f"{f.compared:,}", f"[{style}]{f.mismatched:,}[/]", first)
    console.print(out)
    verdict = "[green]0 mismatches[/]" if report.ok else f"[red]{report.mismatches:,} mismatches[/]"
    console.print(
        f"view {report.view}: {verdict} over {report.queries * len(report.features):,} values"
    )
    return bool(report.ok)


def _parity_e2e(
    project: Project, events: Path, view: str | None, bootstrap: str | None, redis_url: str | None
) -> None:
    from featurepipe.parity.e2e import run_e2e
    from featurepipe.settings import kafka_bootstrap

    d = load_defs(project)
    if not events.exists():
        raise FeaturepipeError(f"event log '{events}' does not exist (try `featurepipe generate`)")
    log = pl.read_parquet(events)
    ok = True
    for v in d.views.values():
        if (view and v.name != view) or v.source.stream is None:
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
    if not ok:
        raise typer.Exit(1)
