"""``featurepipe monitor``: drift and null-rate alarms against a trained version's baseline;
``featurepipe monitor baseline``: record that baseline."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from featurepipe.cli.app import app
from featurepipe.cli.common import (
    DefsOpt,
    JsonOpt,
    RepoOpt,
    console,
    event_log_files,
    print_json,
    project_for,
    typed_and_resolved,
    typed_path,
    when,
)
from featurepipe.errors import FeaturepipeError
from featurepipe.project import Project

THRESHOLDS_FILE = "monitor.toml"

monitor_app = typer.Typer(
    name="monitor",
    invoke_without_command=True,
    no_args_is_help=False,
    help="Drift and null-rate alarms: current feature data against the baseline of the "
    "trained version (exit 1 when an alarm fires). `monitor baseline` records a baseline.",
)
app.add_typer(monitor_app, name="monitor")


@monitor_app.callback()
def monitor(
    ctx: typer.Context,
    current: Annotated[
        Path | None,
        typer.Option(
            help="The data to check: a Parquet file, directory or glob (relative to the project "
            "root) of served-feature logs, or of feature columns (a training set)."
        ),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="Baseline file to compare with (default: the registry's baseline of the view "
            "version named in the data's lineage or log)."
        ),
    ] = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write a static HTML report here.")
    ] = None,
    psi: Annotated[
        float | None, typer.Option(min=0.0, help="PSI alarm threshold (default 0.2).")
    ] = None,
    null_rate_delta: Annotated[
        float | None,
        typer.Option(min=0.0, help="Null-rate change (absolute) that alarms (default 0.01)."),
    ] = None,
    ks_pvalue: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help="KS p-value below which a shift alarms (default 0.001)."
        ),
    ] = None,
    thresholds: Annotated[
        Path | None,
        typer.Option(
            help=f"Thresholds file (TOML; default: {THRESHOLDS_FILE} at the project root, if any)."
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Served-feature logs: rows served at or after this time.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Served-feature logs: rows served before this time.")
    ] = None,
    consistency: Annotated[
        bool,
        typer.Option(
            "--consistency",
            help="Instead of drift: recompute every value of the served-feature logs with the "
            "batch engine at the same entity, request time and request, and compare bit for "
            "bit (exit 1 on any mismatch: skew or loss).",
        ),
    ] = False,
    on_alarm: Annotated[
        str | None,
        typer.Option(
            help="When an alarm fires, run this shell command (from the project root), with "
            "FEATUREPIPE_MONITOR_REPORT set to the alarm report (JSON) and "
            "FEATUREPIPE_RETRAIN_SET to the fresh training set if --retrain-labels made one.",
        ),
    ] = None,
    retrain_labels: Annotated[
        Path | None,
        typer.Option(
            help="When an alarm fires, build a fresh point-in-time training set of the alarmed "
            "views from these label rows (Parquet, CSV or Arrow IPC), keeping those of the last "
            "--retrain-days days; its lineage points at the alarm report.",
        ),
    ] = None,
    retrain_days: Annotated[
        int, typer.Option(min=1, help="Days of label rows (before the newest) to retrain on.")
    ] = 30,
    retrain_out: Annotated[
        Path | None,
        typer.Option(help="Where to write the fresh training set (default: under .featurepipe/)."),
    ] = None,
    timestamp: Annotated[
        str, typer.Option(help="Timestamp column of --retrain-labels.")
    ] = "event_timestamp",
    every: Annotated[
        str | None,
        typer.Option(
            help="Run as a service: check again at this interval (e.g. 5m), reading new log "
            "files each time, with the last round's statistics as Prometheus gauges on "
            "--metrics-port; runs until interrupted.",
        ),
    ] = None,
    metrics_port: Annotated[int, typer.Option(help="Port of /metrics with --every.")] = 9108,
    metrics_host: Annotated[
        str, typer.Option(help="Address of /metrics with --every.")
    ] = "127.0.0.1",
    repo: RepoOpt = None,
    defs: DefsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check current feature data against the baseline of the version that produced it:
    PSI and KS for numbers, PSI, Jensen-Shannon and new categories for categories, null rate
    and out-of-range share for all. Exit code 1 when an alarm fires (for cron and CI)."""
    if ctx.invoked_subcommand is not None:
        return
    if current is None:
        raise FeaturepipeError(
            "--current is required: the served-feature logs or training set to check "
            "(or record a baseline with `featurepipe monitor baseline`)"
        )
    from featurepipe.batch.registry import Registry
    from featurepipe.monitoring import monitor as run
    from featurepipe.monitoring import read_baseline, read_current
    from featurepipe.monitoring.report import summary, tables, to_json, write_html

    if every is not None and (
        consistency or on_alarm or retrain_labels is not None or html is not None or as_json
    ):
        raise FeaturepipeError(
            "--every runs monitoring as a service (Prometheus gauges on --metrics-port): it "
            "takes none of --consistency, --on-alarm, --retrain-labels, --html, --json (alert "
            "on featurepipe_monitor_alarm; run one-off checks without --every)"
        )
    if consistency:
        _consistency(repo, defs, current, since, until, as_json)
        return
    if retrain_labels is None and retrain_out is not None:
        raise FeaturepipeError("--retrain-out names the training set --retrain-labels builds")
    project = project_for(repo, defs, definitions=False)
    cli = {
        k: v
        for k, v in (("psi", psi), ("null_rate_delta", null_rate_delta), ("ks_pvalue", ks_pvalue))
        if v is not None
    }
    th = _thresholds(project, thresholds, cli)
    base = None
    if baseline is not None:
        shown, note = typed_path(project, baseline)
        if not project.path(baseline).exists():
            raise FeaturepipeError(f"--baseline {shown}: no such file{note}")
        base = read_baseline(project.path(baseline))
    lo, hi = when(since, "--since"), when(until, "--until")

    def check() -> Any:
        files = event_log_files(project, current)  # again each round: new log files count
        data = read_current(files, since=lo, until=hi)
        return run(
            data, registry=Registry(project.state_dir / "registry"), baseline=base, thresholds=th
        )

    if every is not None:
        _service(check, every, metrics_host, metrics_port)
        return
    report = check()
    if html is not None:
        write_html(report, th, project.path(html))
    if as_json:
        print_json(to_json(report, th))
    else:
        for t in tables(report):
            console.print(t)
        for v in report.views:
            for n in v.notes:
                console.print(f"[yellow]note[/] view {escape(v.view)}: {escape(n)}")
        if html is not None:
            console.print(f"HTML report: {escape(typed_and_resolved(project, html))}")
        style = "green" if report.ok else "red"
        console.print(f"[{style}]{escape(summary(report))}[/]")
    if not report.ok:
        if on_alarm is not None or retrain_labels is not None:
            _on_alarm(project, repo, defs, report, th, on_alarm, retrain_labels, retrain_days,
                      retrain_out, timestamp, quiet=as_json)  # fmt: skip
        raise typer.Exit(1)


def _on_alarm(
    project: Project,
    repo: Path | None,
    defs: str | None,
    report: Any,
    th: Any,
    command: str | None,
    labels_path: Path | None,
    days: int,
    out: Path | None,
    timestamp: str,
    *,
    quiet: bool,
) -> None:
    """The retraining trigger: the alarm report kept as JSON, then a fresh training set of the
    alarmed views over the last ``days`` days of label rows (its lineage naming the report),
    then the user's command."""
    import json
    import os
    import subprocess
    from datetime import UTC, datetime

    import polars as pl

    from featurepipe.monitoring.report import to_json

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    alarms_dir = project.state_dir / "monitor"
    alarms_dir.mkdir(parents=True, exist_ok=True)
    report_path = alarms_dir / f"alarm-{stamp}.json"
    report_path.write_text(json.dumps(to_json(report, th), default=str), encoding="utf-8")

    def say(text: str) -> None:
        if not quiet:  # stdout is the JSON document only
            console.print(text)

    say(f"alarm report: {escape(str(report_path))}")
    env = {**os.environ, "FEATUREPIPE_MONITOR_REPORT": str(report_path)}
    if labels_path is not None:
        try:  # a failed retraining must not keep the alarm's command from running
            target = _retrain(project, repo, defs, report, th, labels_path, days, out, timestamp,
                              report_path, stamp, say)  # fmt: skip
            env["FEATUREPIPE_RETRAIN_SET"] = str(target)
        except (FeaturepipeError, OSError, pl.exceptions.PolarsError) as e:
            console.print(f"[red]the fresh training set failed[/]: {escape(str(e))}")
    if command is not None:
        done = subprocess.run(command, shell=True, cwd=project.root, env=env, check=False)
        say(f"--on-alarm command exited with {done.returncode}")


@monitor_app.command("baseline")
def record(
    features: Annotated[
        str | None,
        typer.Option(help="Comma-separated 'view:feature' or 'view' (with --entities)."),
    ] = None,
    entities: Annotated[
        Path | None,
        typer.Option(
            help="Label rows (entity keys, a timestamp) as Parquet, CSV or Arrow IPC: the "
            "training data's query points; the features are computed as `training-set` does."
        ),
    ] = None,
    training_set: Annotated[
        Path | None,
        typer.Option(
            help="Instead of --entities/--features: a training set written by "
            "`featurepipe training-set` (its lineage names the view versions)."
        ),
    ] = None,
    timestamp: Annotated[
        str, typer.Option(help="Timestamp column of the label rows.")
    ] = "event_timestamp",
    repo: RepoOpt = None,
    defs: DefsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Record the baseline of each view version in a training set, in the registry."""
    from featurepipe.monitoring import record_baseline

    if training_set is not None:
        if entities is not None or features is not None:
            raise FeaturepipeError(
                "--training-set records from a written training set: leave out --entities "
                "and --features (or give those two instead)"
            )
        written, rows, origin = _from_training_set(repo, defs, training_set)
    else:
        if entities is None or features is None:
            raise FeaturepipeError(
                "give --entities and --features (the training data's label rows and features), "
                "or --training-set"
            )
        project = project_for(repo, defs)
        from featurepipe.store import FeatureStore

        store = FeatureStore(project.root, project.definitions)
        refs = [f.strip() for f in features.split(",") if f.strip()]
        labels = _labels(project, store, entities, refs, timestamp)
        frame = store.get_historical_features(labels, refs, timestamp=timestamp)
        assert store.last_lineage is not None
        origin = f"training data of {typed_path(project, entities)[0]}"
        written = record_baseline(store, frame, store.last_lineage, origin=origin)
        rows = frame.height
    if as_json:
        print_json({"rows": rows, "origin": origin, "baselines": [str(p) for p in written]})
        return
    for p in written:
        console.print(f"baseline of {rows:,} rows: {escape(str(p))}")


def _from_training_set(
    repo: Path | None, defs: str | None, path: Path
) -> tuple[list[Path], int, str]:
    import polars as pl

    from featurepipe.batch.lineage import read_lineage
    from featurepipe.batch.registry import Registry
    from featurepipe.monitoring import record_baseline

    project = project_for(repo, defs, definitions=False)
    shown, note = typed_path(project, path)
    full = project.path(path)
    if not full.is_file():
        raise FeaturepipeError(f"--training-set {shown}: no such file{note}")
    lineage = read_lineage(full)
    frame = pl.read_parquet(full)
    target: Any = Registry(project.state_dir / "registry")
    if project.definitions.exists():
        from featurepipe.store import FeatureStore

        target = FeatureStore(project.root, project.definitions)  # declared types
    views = lineage.get("views", {})
    written = record_baseline(target, frame, views, origin=f"training set {shown}", lineage=lineage)
    return written, frame.height, f"training set {shown}"


def _labels(project: Project, store: Any, entities: Path, refs: list[str], timestamp: str) -> Any:
    from featurepipe.batch.sources import read_table
    from featurepipe.errors import DataError
    from featurepipe.ir.types import DType

    views = [store.definitions.view(v) for v in store.resolve(refs)]
    text_keys = [
        part for v in views for part in v.entity.parts if v.source.fields[part][0] is DType.STR
    ]
    shown, note = typed_path(project, entities)
    full = project.path(entities)
    if not full.exists():
        raise DataError(f"--entities {shown}: no such file{note}")
    return read_table(full, timestamp=timestamp, text_columns=text_keys, name=f"{shown}{note}")


def _thresholds(project: Project, given: Path | None, cli: dict[str, Any]) -> Any:
    """Thresholds from ``--thresholds``, else ``monitor.toml`` at the project root, else the
    ``monitor`` table of the project's configuration; command-line values replace the
    defaults (per-feature entries still win)."""
    from featurepipe.monitoring.check import ThresholdsError, thresholds_from_table

    table: dict[str, Any] = {}
    where = "thresholds"
    if given is not None:
        shown, note = typed_path(project, given)
        path: Path | None = project.path(given)
        assert path is not None
        if not path.is_file():
            raise ThresholdsError(f"--thresholds {shown}: no such file{note}")
    else:
        path = project.root / THRESHOLDS_FILE
        if not path.is_file():
            path = None
            table = dict(project.settings.get("monitor") or {})
            where = f"{project.config_file}: monitor"
    if path is not None:
        where = str(path)
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ThresholdsError(f"cannot read thresholds {path}: {e}") from None
        table = table.get("monitor", table)
    return thresholds_from_table(table, where, cli, _declared(project))


def _declared(project: Project) -> dict[str, dict[str, Any]]:
    """The definitions' thresholds (``fp.monitor``) by ``view:feature``; none without
    definitions (monitoring a frame needs none)."""
    if not project.definitions.exists():
        return {}
    from featurepipe.batch.registry import load_definitions

    defs = load_definitions(project.definitions, registry=project.state_dir / "registry")
    return {
        f"{view.name}:{name}": values
        for view in defs.views.values()
        for name, values in view.monitoring.items()
    }


def _consistency(
    repo: Path | None,
    defs: str | None,
    current: Path,
    since: str | None,
    until: str | None,
    as_json: bool,
) -> None:
    """`monitor --consistency`: the served values against the batch engine's, bit for bit."""
    import polars as pl

    from featurepipe.monitoring.consistency import check_consistency
    from featurepipe.store import FeatureStore

    project = project_for(repo, defs)
    files = event_log_files(project, current)
    log = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
    lo, hi = when(since, "--since"), when(until, "--until")
    if (lo is not None or hi is not None) and "served_at" not in log.columns:
        raise FeaturepipeError("--since/--until select served-feature log rows by served_at")
    if lo is not None:
        log = log.filter(pl.col("served_at") >= lo)
    if hi is not None:
        log = log.filter(pl.col("served_at") < hi)
    store = FeatureStore(project.root, project.definitions)
    report = check_consistency(store, log)
    if as_json:
        print_json(report.to_json())
    else:
        from featurepipe.cli.common import table

        out = table("view", "feature", "compared", "mismatched", "first mismatch")
        for f in report.features:
            first = f.examples[0] if f.examples else None
            shown = (
                ""
                if first is None
                else f"entity {first['entity']} at {first['request_time']}: served "
                f"{first['served']!r}, recomputed {first['recomputed']!r}"
            )
            style = "red" if f.mismatched else "green"
            out.add_row(
                escape(f.view),
                escape(f.feature),
                f"{f.compared:,}",
                f"[{style}]{f.mismatched:,}[/]",
                escape(shown),
            )
        console.print(out)
        for reason, n in report.skipped.items():
            console.print(f"[yellow]not recomputed[/]: {n:,} served values of {escape(reason)}")
        verdict = (
            f"[green]consistent: {report.compared:,} served values equal the batch engine's, "
            "bit for bit[/]"
            if report.ok
            else f"[red]INCONSISTENT: {report.mismatched:,} of {report.compared:,} served values "
            "differ from the batch engine's (skew or loss)"
            + (", some could not be recomputed" if report.skipped else "")
            + "[/]"
        )
        console.print(verdict)
    if not report.ok:
        raise typer.Exit(1)


def _service(check: Any, every: str, host: str, port: int) -> None:
    """`monitor --every`: rounds until interrupted, gauges on /metrics, one line per round."""
    from datetime import UTC, datetime

    from featurepipe.dsl.definitions import parse_duration
    from featurepipe.monitoring.report import summary
    from featurepipe.monitoring.service import serve_forever

    try:
        every_s = parse_duration(every) / 1_000_000
    except ValueError as e:
        raise FeaturepipeError(f"--every: {e}") from None
    console.print(
        f"monitoring every {every}; Prometheus gauges on http://{host}:{port}/metrics "
        "(featurepipe_monitor_alarm, _psi, _null_rate, ...); Ctrl-C to stop"
    )

    def said(report: Any, error: Exception | None) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if error is not None:
            console.print(f"{stamp} [red]round failed[/]: {escape(str(error))}")
        else:
            style = "green" if report.ok else "red"
            console.print(f"{stamp} [{style}]{escape(summary(report))}[/]")

    try:
        serve_forever(check, every_s, port, addr=host, on_round=said)
    except KeyboardInterrupt:
        console.print("stopped")


def _retrain(
    project: Project,
    repo: Path | None,
    defs: str | None,
    report: Any,
    th: Any,
    labels_path: Path,
    days: int,
    out: Path | None,
    timestamp: str,
    report_path: Path,
    stamp: str,
    say: Any,
) -> Path:
    """The fresh training set of the alarmed views over the last ``days`` days of labels."""
    from datetime import datetime, timedelta

    import polars as pl

    from featurepipe.batch.sources import read_table
    from featurepipe.ir.types import DType
    from featurepipe.monitoring.report import to_json
    from featurepipe.store import FeatureStore, write_training_set

    with_defs = project_for(repo, defs)
    store = FeatureStore(with_defs.root, with_defs.definitions)
    views = sorted({f.view for f in report.alarms})
    # a text key stays text in a CSV ("007" is not 7), as training-set reads labels
    text_keys = [
        part
        for name in views
        for v in [store.definitions.view(name)]
        for part in v.entity.parts
        if v.source.fields[part][0] is DType.STR
    ]
    shown, note = typed_path(project, labels_path)
    labels = read_table(
        project.path(labels_path), timestamp=timestamp, text_columns=text_keys,
        name=f"{shown}{note}",
    )  # fmt: skip
    newest = labels[timestamp].max() if labels.height else None
    if not isinstance(newest, datetime):
        raise FeaturepipeError(f"--retrain-labels {shown}: no label rows{note}")
    recent = labels.filter(pl.col(timestamp) >= newest - timedelta(days=days))
    df = store.get_historical_features(recent, views, timestamp=timestamp)
    lineage = store.last_lineage
    assert lineage is not None
    lineage.trigger = {"report": str(report_path), "alarms": to_json(report, th)["alarms"]}
    target = (
        project.path(out) if out is not None else report_path.parent / f"retrain-{stamp}.parquet"
    )
    write_training_set(df, target, lineage)
    say(
        f"fresh training set of {', '.join(views)}: {df.height:,} label rows of the last "
        f"{days} days (to {newest.isoformat()}) -> {escape(str(target))}"
    )
    return target
