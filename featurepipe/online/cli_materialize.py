"""``featurepipe materialize``: the command body, free of typer so that cli.py only wires options."""

from __future__ import annotations

import contextlib
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    Progress,
    TaskID,
)

from featurepipe.errors import FeaturepipeError
from featurepipe.ir.timebase import parse_instant
from featurepipe.online.layout import DEFAULT_PREFIX
from featurepipe.online.redis_conn import redact, resolve_url
from featurepipe.progress import progress_bar


def parse_until(text: str) -> datetime:
    """ISO-8601 date or date-time; naive means UTC. Returned timezone-aware (UTC)."""
    return parse_instant(text, "--until")


def materialize_command(
    defs: Path,
    until: str,
    redis_url: str | None,
    view: str | None,
    batch_size: int,
    *,
    events: Path | None = None,
    prefix: str = DEFAULT_PREFIX,
    resume: bool = True,
    allow_empty: bool = False,
    root: Path = Path("."),
    registry: Path | None = None,
    topic_partitions: int | None = None,
    shards: int = 1,
    engine: str = "local",
    address: str | None = None,
    console: Console | None = None,
) -> int:
    """Materialize one view (or every view of ``defs``) up to ``until``; returns the exit code.

    0 on success; 2 on any FeaturepipeError (bad arguments, unreachable Redis, bad data), with a
    one-line message. ``events`` overrides the source's Parquet path (one view only);
    relative source paths resolve against ``root``.
    """
    from featurepipe.batch.registry import load_definitions
    from featurepipe.online.materialize import materialize
    from featurepipe.online.redis_conn import connect

    console = console or Console()
    try:
        until_dt = parse_until(until)
        d = load_definitions(defs, registry=registry)
        if view is not None and view not in d.views:
            raise FeaturepipeError(
                f"no view '{view}' in {defs} (views: {', '.join(sorted(d.views)) or 'none'})"
            )
        views = [d.views[view]] if view is not None else list(d.views.values())
        if events is not None and len(views) != 1:
            raise FeaturepipeError("--events needs --view: it replaces one view's source path")
        if engine not in ("local", "dask"):
            raise FeaturepipeError(f"--engine must be 'local' or 'dask', got '{engine}'")
        if address is not None and engine != "dask":
            raise FeaturepipeError("--address needs --engine dask")
        if topic_partitions is not None and len(views) != 1:
            raise FeaturepipeError(
                "--topic-partitions is the partition count of one view's topic: give --view "
                "(or let `featurepipe recover` ask the broker for every topic)"
            )
        client = connect(redis_url)
        url_shown = redact(resolve_url(redis_url)[0])
        stack = contextlib.ExitStack()
        runner = None
        try:
            if engine == "dask":
                from featurepipe.batch.distributed import dask_runner

                # reachable, with workers of the same versions, before anything is written
                runner = stack.enter_context(dask_runner(address or "local"))
            for v in views:
                with progress_bar(console, f"{v.name} entities") as bar:
                    task = bar.add_task("materialize", total=None)

                    def advance(
                        done: int, total: int, bar: Progress = bar, task: TaskID = task
                    ) -> None:
                        bar.update(task, completed=done, total=total)

                    report = materialize(
                        v,
                        until_dt,
                        client,
                        root=root,
                        path=events,
                        batch_size=batch_size,
                        prefix=prefix,
                        progress=advance,
                        resume=resume,
                        allow_empty=allow_empty,
                        partitions=topic_partitions,
                        shards=shards,
                        runner=runner,
                    )
                resumed = (
                    f", resumed after entity {report.resumed_from!r}"
                    if report.resumed_from is not None
                    else ""
                )
                console.print(
                    f"view [bold]{escape(v.name)}[/] (fingerprint {v.fingerprint}): "
                    f"{report.entities:,} entities, {report.events:,} events with "
                    f"{escape(v.source.timestamp)} < {until_dt.isoformat()} written to "
                    f"{escape(url_shown)} in {report.batches:,} batches, "
                    f"{report.seconds:.1f}s{escape(resumed)}",
                    soft_wrap=True,
                )
                notes = []
                if report.skipped:
                    notes.append(
                        f"{report.skipped:,} events without entity key or timestamp skipped"
                    )
                if report.quarantined:
                    notes.append(f"{report.quarantined:,} rows quarantined (contract violations)")
                if report.stale_deleted:
                    notes.append(f"{report.stale_deleted:,} stale entity states deleted")
                if notes:
                    console.print("  " + "; ".join(notes), soft_wrap=True)
                console.print(
                    f"  cut-over: the stream worker ingests events with "
                    f"{escape(v.source.timestamp)} >= {until_dt.isoformat()}",
                    soft_wrap=True,
                )
        finally:
            stack.close()
            client.close()
    except FeaturepipeError as e:
        console.print(f"[red]error:[/] {escape(' '.join(str(e).split()))}", soft_wrap=True)
        return 2
    return 0
