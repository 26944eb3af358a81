"""The ``featurepipe`` command line."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    Progress,
    TaskID,
)
from rich.table import Table

from featurepipe.errors import FeaturepipeError
from featurepipe.progress import progress_bar

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False
)
console = Console()

DefsOpt = Annotated[Path, typer.Option("--defs", help="Definitions directory (or file).")]


@app.command()
def plan(
    defs: DefsOpt = Path("feature_defs"),
    view: Annotated[str | None, typer.Option(help="Only this view.")] = None,
) -> None:
    """Load definitions, check them, show each view's fingerprint and both compiled plans."""
    from featurepipe.batch.registry import load_definitions
    from featurepipe.compile.polars_aggs import BatchProgram
    from featurepipe.compile.python_state import ViewProgram
    from featurepipe.ir.aggs import KINDS
    from featurepipe.ir.describe import describe

    d = load_definitions(defs)
    for v in d.views.values():
        if view and v.name != view:
            continue
        console.rule(f"[bold]{v.name}[/]  fingerprint {v.fingerprint}")
        console.print(
            f"entity [cyan]{v.entity.name}[/] (key {v.entity.key}), source [cyan]{v.source.name}[/], "
            f"{len(v.ir.features)} features, {len(v.ir.aggs)} aggregations, "
            f"lateness {v.ir.lateness_us // 1_000_000}s"
        )
        table = Table("feature", "type", "definition")
        for f in v.ir.features:
            table.add_row(f.name, str(f.expr.dtype), describe(f.expr))
        console.print(table)
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
    defs: DefsOpt = Path("feature_defs"),
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
    if e2e:
        _parity_e2e(defs, events, view, bootstrap, redis_url)
        return
    from featurepipe.batch.registry import load_definitions
    from featurepipe.parity.harness import run_parity

    d = load_definitions(defs)
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


def _when(text: str | None, option: str) -> datetime | None:
    """An optional ISO-8601 time option; a bad value is a FeaturepipeError naming the option."""
    from featurepipe.ir.timebase import parse_instant

    return None if text is None else parse_instant(text, option)


@app.command()
def fit(
    start: Annotated[str | None, typer.Option(help="ISO time (UTC if naive), inclusive.")] = None,
    end: Annotated[str | None, typer.Option(help="ISO time (UTC if naive), exclusive.")] = None,
    repo: Annotated[Path, typer.Option(help="Repository root.")] = Path("."),
    defs: Annotated[
        str, typer.Option("--defs", help="Definitions, relative to the repo.")
    ] = "feature_defs",
) -> None:
    """Fit vocabularies, scaling and quantile boundaries, and feature baselines; freeze them."""
    from featurepipe.batch.fit import fit as run_fit

    start_at, end_at = _when(start, "--start"), _when(end, "--end")
    t = time.perf_counter()
    report = run_fit(repo, defs, start_at, end_at)
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
    repo: Annotated[Path, typer.Option(help="Repository root.")] = Path("."),
    defs: Annotated[
        str, typer.Option("--defs", help="Definitions, relative to the repo.")
    ] = "feature_defs",
    timestamp: Annotated[
        str, typer.Option(help="Timestamp column of the label rows.")
    ] = "event_timestamp",
    partitions: Annotated[int, typer.Option(help="Entity hash partitions (bounds memory).")] = 1,
) -> None:
    """Point-in-time-correct training set from Parquet, with lineage in the file's metadata."""
    from featurepipe.store import FeatureStore, write_training_set

    t = time.perf_counter()
    store = FeatureStore(repo, defs)
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


@app.command()
def materialize(
    until: Annotated[str, typer.Option(help="Cut-over time, ISO-8601 (UTC if naive).")],
    defs: DefsOpt = Path("feature_defs"),
    redis_url: Annotated[
        str | None, typer.Option(help="Online store URL (else $REDIS_URL).")
    ] = None,
    view: Annotated[str | None, typer.Option(help="Only this view.")] = None,
    batch_size: Annotated[int, typer.Option(help="Entities per pipelined round trip.")] = 1000,
    events: Annotated[
        Path | None, typer.Option(help="Parquet path instead of the source's.")
    ] = None,
    prefix: Annotated[str, typer.Option(help="Key prefix in Redis.")] = "fp",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = True,
    allow_empty: Annotated[
        bool,
        typer.Option(help="Accept input without any usable event (replaces states by nothing)."),
    ] = False,
) -> None:
    """Bulk-load every entity's online state as of UNTIL from Parquet into Redis."""
    from featurepipe.online.cli_materialize import materialize_command

    code = materialize_command(
        defs,
        until,
        redis_url,
        view,
        batch_size,
        events=events,
        prefix=prefix,
        resume=resume,
        allow_empty=allow_empty,
        console=console,
    )
    if code:
        raise typer.Exit(code)


def _report_table(report: Any, title: str) -> bool:
    table = Table("feature", "type", "compared", "mismatched", "first difference", title=title)
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
        table.add_row(
            f.name, str(f.dtype), f"{f.compared:,}", f"[{style}]{f.mismatched:,}[/]", first
        )
    console.print(table)
    verdict = "[green]0 mismatches[/]" if report.ok else f"[red]{report.mismatches:,} mismatches[/]"
    console.print(
        f"view {report.view}: {verdict} over {report.queries * len(report.features):,} values"
    )
    return bool(report.ok)


def _parity_e2e(
    defs: Path, events: Path, view: str | None, bootstrap: str | None, redis_url: str | None
) -> None:
    from featurepipe.batch.registry import load_definitions
    from featurepipe.parity.e2e import run_e2e
    from featurepipe.settings import kafka_bootstrap

    d = load_definitions(defs)
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


@app.command()
def recover(
    until: Annotated[
        str,
        typer.Option(
            help="Cut-over, ISO-8601 (UTC if naive): Parquet holds every event before it, the topic every event from it."
        ),
    ],
    defs: DefsOpt = Path("feature_defs"),
    bootstrap: Annotated[
        str | None,
        typer.Option(help="Kafka bootstrap servers (else $KAFKA_BOOTSTRAP_SERVERS, dev up)."),
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="Online store URL (else $REDIS_URL, dev up).")
    ] = None,
    group: Annotated[str, typer.Option(help="The stream workers' consumer group.")] = "featurepipe",
    prefix: Annotated[str, typer.Option(help="Key prefix in Redis.")] = "fp",
    allow_empty: Annotated[
        bool, typer.Option(help="Accept a view without any event before the cut-over.")
    ] = False,
) -> None:
    """Rebuild the online store from Parquet up to UNTIL and reset the stream positions to match
    (after Redis was emptied or rolled back, or the broker reset). Then (re)start the workers."""
    from featurepipe.batch.registry import load_definitions
    from featurepipe.ir.timebase import parse_instant
    from featurepipe.online.redis_conn import connect
    from featurepipe.settings import kafka_bootstrap
    from featurepipe.stream.recover import recover as run_recover

    until_dt = parse_instant(until, "--until")
    d = load_definitions(defs)
    views = list(d.views.values())
    client = connect(redis_url)
    try:
        with progress_bar(console, "recover") as bar:

            def bar_for(name: str) -> Callable[[int, int], None]:
                task = bar.add_task(f"{name} entities", total=None)
                return lambda done, total: bar.update(task, completed=done, total=total)

            report = run_recover(
                views,
                until_dt,
                client,
                kafka_bootstrap(bootstrap),
                group=group,
                prefix=prefix,
                allow_empty=allow_empty,
                progress=bar_for,
            )
    finally:
        client.close()
    for r in report.views:
        console.print(
            f"view [bold]{escape(r.view)}[/]: {r.entities:,} entities, {r.events:,} events before "
            f"{until_dt.isoformat()} ({r.quarantined:,} rows quarantined)"
        )
    console.print(
        f"store generation {report.generation}; group {escape(group)} resumes "
        f"{len(report.positions)} partition(s) from their first offset and ingests events from "
        f"{until_dt.isoformat()} on. Start (or restart) `featurepipe stream --group {escape(group)}`."
    )


@app.command()
def stream(
    defs: DefsOpt = Path("feature_defs"),
    bootstrap: Annotated[
        str | None,
        typer.Option(
            help="Kafka bootstrap servers (else $KAFKA_BOOTSTRAP_SERVERS, dev up, 127.0.0.1:9092)."
        ),
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="Online store URL (else $REDIS_URL, dev up).")
    ] = None,
    group: Annotated[
        str, typer.Option(help="Kafka consumer group (scale out by starting more workers).")
    ] = "featurepipe",
    prefix: Annotated[str, typer.Option(help="Key prefix in Redis.")] = "fp",
    max_batch: Annotated[int, typer.Option(help="Events per poll / Redis transaction.")] = 5000,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port.")
    ] = None,
    idle_exit: Annotated[
        float | None, typer.Option(help="Exit after this many idle seconds.")
    ] = None,
    view: Annotated[list[str] | None, typer.Option(help="Only these views.")] = None,
) -> None:
    """Kafka -> Redis worker: validate, dead-letter, ingest, commit state and offsets atomically."""
    import logging

    from featurepipe.batch.registry import load_definitions
    from featurepipe.online.redis_conn import connect
    from featurepipe.settings import kafka_bootstrap
    from featurepipe.stream.worker import StreamWorker, WorkerConfig

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    d = load_definitions(defs)
    config = WorkerConfig(
        bootstrap=kafka_bootstrap(bootstrap),
        group_id=group,
        prefix=prefix,
        max_batch=max_batch,
        metrics_port=metrics_port,
        idle_exit_s=idle_exit,
    )
    worker = StreamWorker(d, config, connect(redis_url), views=view or None)
    worker.install_signal_handlers()
    console.print(
        f"streaming {', '.join(worker.plans)} from {config.bootstrap} (group {group}) into Redis"
    )
    c = worker.run()
    console.print(
        f"stopped: {c.events:,} events, {c.valid:,} valid, {c.invalid:,} to the dead-letter topic, "
        f"{c.before_cutover:,} before the materialize cut-over, {c.batches:,} batches"
    )


@app.command()
def get(
    entity: Annotated[list[str], typer.Option(help="key=value, repeatable (e.g. user_id=u1).")],
    features: Annotated[str, typer.Option(help="Comma-separated 'view:feature' or 'view'.")],
    repo: Annotated[Path, typer.Option(help="Repository root.")] = Path("."),
    defs: Annotated[
        str, typer.Option("--defs", help="Definitions, relative to the repo.")
    ] = "feature_defs",
    redis_url: Annotated[str | None, typer.Option(help="Online store URL.")] = None,
    at: Annotated[str | None, typer.Option(help="Read as of this time (ISO; default now).")] = None,
    fingerprint: Annotated[list[str] | None, typer.Option(help="view=fingerprint to pin.")] = None,
    prefix: Annotated[str, typer.Option(help="Key prefix in Redis.")] = "fp",
) -> None:
    """Online lookup of features for some entities."""
    from featurepipe.store import FeatureStore

    keys: dict[str, list[str]] = {}
    for item in entity:
        k, _, v = item.partition("=")
        if not v:
            raise FeaturepipeError(f"--entity {item!r}: expected key=value")
        keys.setdefault(k, []).append(v)
    pins: dict[str, str] = {}
    for pin in fingerprint or []:
        name, _, value = pin.partition("=")
        if not value:
            raise FeaturepipeError(f"--fingerprint {pin!r}: expected view=fingerprint")
        pins[name] = value
    at_time = _when(at, "--at")
    store = FeatureStore(repo, defs, redis_url=redis_url, prefix=prefix)
    refs = [f.strip() for f in features.split(",") if f.strip()]
    df = store.get_online_features(keys, refs, at=at_time, fingerprints=pins)
    table = Table(*df.columns)
    for row in df.iter_rows():
        table.add_row(*[repr(v) if isinstance(v, float) else str(v) for v in row])
    console.print(table)


dev_app = typer.Typer(help="Embedded Kafka-compatible broker and Redis-compatible server.")
app.add_typer(dev_app, name="dev")


@dev_app.command("up")
def dev_up() -> None:
    """Start (or find) the embedded broker and store on free loopback ports."""
    from featurepipe.dev import infra
    from featurepipe.settings import redact_url

    s = infra.up()
    console.print(f"kafka  {s.kafka_bootstrap}  (pid {s.kafka_pid})")
    console.print(f"redis  {redact_url(s.redis_url)}  (pid {s.redis_pid})")
    console.print(
        "recorded in .featurepipe/dev.json (mode 0600, with the store's password); "
        "other commands find them there"
    )


@dev_app.command("down")
def dev_down() -> None:
    """Stop the embedded services."""
    from featurepipe.dev import infra

    console.print("stopped" if infra.down() else "nothing was running")


@dev_app.command("status")
def dev_status() -> None:
    """Show whether the embedded services run and answer."""
    from featurepipe.dev import infra

    st = infra.status()
    if not st["running"]:
        console.print("not running (featurepipe dev up)")
        raise typer.Exit(1)
    for name in ("kafka", "redis"):
        info = st[name]
        ok = info["alive"] and info["reachable"]
        where = info.get("bootstrap") or info.get("url")
        console.print(
            f"{name:6} {where}  pid {info['pid']}  " + ("[green]up[/]" if ok else "[red]down[/]")
        )
    if not all(st[n]["alive"] and st[n]["reachable"] for n in ("kafka", "redis")):
        raise typer.Exit(1)


@app.command()
def demo(
    events: Annotated[int, typer.Option(help="Events to generate.")] = 100_000,
    workdir: Annotated[Path, typer.Option(help="Where to write the demo repository.")] = Path(
        "data/demo"
    ),
) -> None:
    """The whole story: generate, fit, training set, materialize, stream, look up, parity, drift."""
    from featurepipe.dev.demo import run_demo

    if not run_demo(console, events=events, workdir=workdir):
        raise typer.Exit(1)


def main() -> None:
    """Entry point: usage errors exit 2 (typer), featurepipe errors print one line and exit 2."""
    try:
        app()
    except FeaturepipeError as e:
        console.print(f"[red]error:[/] {escape(str(e))}")
        sys.exit(2)


if __name__ == "__main__":
    main()
