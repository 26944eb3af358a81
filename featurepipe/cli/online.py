"""Online commands: materialize, recover, stream, get."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from featurepipe.cli.app import app
from featurepipe.cli.common import (
    AddressOpt,
    BootstrapOpt,
    DefsOpt,
    JsonOpt,
    PrefixOpt,
    RedisUrlOpt,
    RepoOpt,
    console,
    load_defs,
    print_json,
    project_for,
    table,
    when,
)
from featurepipe.errors import FeaturepipeError
from featurepipe.progress import progress_bar


@app.command()
def materialize(
    until: Annotated[str, typer.Option(help="Cut-over time, ISO-8601 (UTC if naive).")],
    defs: DefsOpt = None,
    repo: RepoOpt = None,
    redis_url: RedisUrlOpt = None,
    view: Annotated[str | None, typer.Option(help="Only this view.")] = None,
    batch_size: Annotated[int, typer.Option(help="Entities per pipelined round trip.")] = 1000,
    events: Annotated[
        Path | None, typer.Option(help="Parquet path instead of the source's.")
    ] = None,
    prefix: PrefixOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = True,
    allow_empty: Annotated[
        bool,
        typer.Option(help="Accept input without any usable event (replaces states by nothing)."),
    ] = False,
    topic_partitions: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Redis Cluster only: the partition count of the view's topic, the first time "
            "the store meets it (states are kept by Kafka partition).",
        ),
    ] = None,
    partitions: Annotated[
        int,
        typer.Option(
            min=1,
            help="Entity hash partitions, each replayed alone: the unit of work of --engine "
            "dask. A partitioned run restarts when interrupted.",
        ),
    ] = 1,
    engine: Annotated[
        str,
        typer.Option(
            help="Where the states are computed: 'local' (here) or 'dask' (the partitions as "
            "tasks on a Dask cluster, see --address; the same states, byte for byte)."
        ),
    ] = "local",
    address: AddressOpt = None,
) -> None:
    """Bulk-load every entity's online state as of UNTIL from Parquet into Redis."""
    from featurepipe.online.cli_materialize import materialize_command

    project = project_for(repo, defs)
    code = materialize_command(
        project.definitions,
        until,
        redis_url,
        view,
        batch_size,
        events=project.path(events) if events is not None else None,
        prefix=prefix or project.prefix,
        root=project.data_root,
        registry=project.state_dir / "registry",
        resume=resume,
        allow_empty=allow_empty,
        topic_partitions=topic_partitions,
        shards=partitions,
        engine=engine,
        address=address,
        console=console,
    )
    if code:
        raise typer.Exit(code)


@app.command()
def recover(
    until: Annotated[
        str,
        typer.Option(
            help="Cut-over, ISO-8601 (UTC if naive): Parquet holds every event before it, the topic every event from it."
        ),
    ],
    defs: DefsOpt = None,
    repo: RepoOpt = None,
    bootstrap: BootstrapOpt = None,
    redis_url: RedisUrlOpt = None,
    group: Annotated[
        str | None,
        typer.Option(
            help="The stream workers' consumer group (default: the project's, else featurepipe)."
        ),
    ] = None,
    prefix: PrefixOpt = None,
    allow_empty: Annotated[
        bool, typer.Option(help="Accept a view without any event before the cut-over.")
    ] = False,
) -> None:
    """Rebuild the online store from Parquet up to UNTIL and reset the stream positions to match
    (after Redis was emptied or rolled back, or the broker reset). Then (re)start the workers."""
    from featurepipe.ir.timebase import parse_instant
    from featurepipe.online.redis_conn import connect
    from featurepipe.settings import kafka_bootstrap
    from featurepipe.stream.recover import recover as run_recover

    project = project_for(repo, defs)
    group = group or project.group
    until_dt = parse_instant(until, "--until")
    d = load_defs(project)
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
                prefix=prefix or project.prefix,
                root=project.data_root,
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
    defs: DefsOpt = None,
    repo: RepoOpt = None,
    bootstrap: BootstrapOpt = None,
    redis_url: RedisUrlOpt = None,
    group: Annotated[
        str | None,
        typer.Option(
            help="Kafka consumer group; scale out by starting more workers "
            "(default: the project's, else featurepipe)."
        ),
    ] = None,
    prefix: PrefixOpt = None,
    max_batch: Annotated[int, typer.Option(help="Events per poll / Redis transaction.")] = 100_000,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port.")
    ] = None,
    idle_exit: Annotated[
        float | None, typer.Option(help="Exit after this many idle seconds.")
    ] = None,
    view: Annotated[list[str] | None, typer.Option(help="Only these views.")] = None,
    client: Annotated[
        str | None,
        typer.Option(
            help="Kafka consumer: kafka-python (default) or confluent (the fast one; "
            "pip install 'featurepipe\\[confluent]'). Default: FEATUREPIPE_KAFKA_CLIENT."
        ),
    ] = None,
) -> None:
    """Kafka -> Redis worker: validate, dead-letter, ingest, commit state and offsets atomically."""
    import logging

    from featurepipe.online.redis_conn import connect
    from featurepipe.settings import kafka_bootstrap, kafka_client
    from featurepipe.stream.kafka_conn import require_broker
    from featurepipe.stream.logs import quiet_kafka_logging
    from featurepipe.stream.worker import StreamWorker, WorkerConfig

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_kafka_logging()  # featurepipe's INFO stays; kafka-python's INFO and false alarms go
    project = project_for(repo, defs)
    group = group or project.group
    d = load_defs(project)
    config = WorkerConfig(
        bootstrap=kafka_bootstrap(bootstrap),
        group_id=group,
        prefix=prefix or project.prefix,
        max_batch=max_batch,
        metrics_port=metrics_port,
        idle_exit_s=idle_exit,
        client=kafka_client(client),
    )
    worker = StreamWorker(d, config, connect(redis_url), views=view or None)
    # an unreachable broker is one line, before the worker announces anything
    require_broker(config.bootstrap, "stream worker")
    worker.install_signal_handlers()
    console.print(
        f"streaming {', '.join(worker.plans)} from {config.bootstrap} (group {group}, "
        f"{config.client}) into Redis"
    )
    c = worker.run()
    console.print(
        f"stopped: {c.events:,} events, {c.valid:,} valid, {c.invalid:,} to the dead-letter topic, "
        f"{c.before_cutover:,} before the materialize cut-over, {c.batches:,} batches"
    )


@app.command()
def get(
    entity: Annotated[
        list[str],
        typer.Option(
            help="key=value, repeatable; the value is read as the key's declared type (an int "
            "key takes 42). One request row per position: --entity user_id=u1 --entity "
            "user_id=u2 asks two rows; with views of several entities give every key the same "
            "number of times, the n-th values forming the n-th row (--entity user_id=u1 "
            "--entity merchant_id=m1)."
        ),
    ],
    features: Annotated[str, typer.Option(help="Comma-separated 'view:feature' or 'view'.")],
    repo: RepoOpt = None,
    defs: DefsOpt = None,
    redis_url: RedisUrlOpt = None,
    at: Annotated[str | None, typer.Option(help="Read as of this time (ISO; default now).")] = None,
    fingerprint: Annotated[list[str] | None, typer.Option(help="view=fingerprint to pin.")] = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
    request: Annotated[
        list[str] | None,
        typer.Option(
            help="name=value, repeatable: a request field the views read (fp.request), one "
            "request row per position like --entity; the value is read as the field's declared "
            "type: int, float, bool (true|false), str, datetime (ISO-8601 with a timezone, "
            "e.g. 2026-01-15T08:30:00Z)."
        ),
    ] = None,
    log_dir: Annotated[
        Path | None,
        typer.Option(
            help="Append this lookup to the served-feature log in this directory (Parquet, "
            "read by `featurepipe monitor`; endpoint 'get')."
        ),
    ] = None,
) -> None:
    """Online lookup of features for some entities: one row per request row, with the entity
    keys, the features and <view>_found (False: no online state, the declared defaults)."""
    from rich.cells import cell_len

    from featurepipe.compile.polars_rows import is_map_column, map_value
    from featurepipe.errors import DataError
    from featurepipe.ir.types import DType
    from featurepipe.online.lookup import parse_entity, parse_request_value
    from featurepipe.store import FeatureStore

    texts: dict[str, list[str]] = {}
    for item in entity:
        k, _, v = item.partition("=")
        if not k or not v:
            raise FeaturepipeError(f"--entity {item!r}: expected key=value")
        texts.setdefault(k, []).append(v)
    request_texts: dict[str, list[str]] = {}
    for item in request or []:
        k, eq, v = item.partition("=")
        if not k or not eq:
            raise FeaturepipeError(f"--request {item!r}: expected name=value")
        request_texts.setdefault(k, []).append(v)
    pins: dict[str, str] = {}
    for pin in fingerprint or []:
        name, _, value = pin.partition("=")
        if not value:
            raise FeaturepipeError(f"--fingerprint {pin!r}: expected view=fingerprint")
        pins[name] = value
    at_time = when(at, "--at")
    project = project_for(repo, defs)
    store = FeatureStore(
        project.root,
        project.definitions,
        redis_url=redis_url,
        prefix=prefix,
        log_dir=None if log_dir is None else project.path(log_dir),
        log_endpoint="get",
    )
    refs = [f.strip() for f in features.split(",") if f.strip()]
    # each key's text as its declared type; a key no requested view uses is refused by the store
    views = [store.definitions.view(name) for name in store.resolve(refs)]
    by_key = {part: v for v in reversed(views) for part in v.entity.parts}
    keys: dict[str, list[object]] = {}
    for k, values in texts.items():
        keys[k] = []
        for v in values:
            try:
                keys[k].append(parse_entity(by_key[k], v, k) if k in by_key else v)
            except DataError as e:
                raise DataError(f"--entity {k}={v}: {e}") from None
    # each request field's text as its declared type; a field no requested view reads is refused
    fields: dict[str, DType] = {}
    for view_def in views:
        for name, dtype in view_def.ir.request_fields:
            fields.setdefault(name, dtype)
    request_values: dict[str, list[object]] = {}
    for k, values in request_texts.items():
        if k not in fields:
            read = ", ".join(f"'{f}' ({d})" for f, d in fields.items())
            raise DataError(
                f"--request {k}={values[0]}: unknown request field {k!r}; the requested views read "
                + (read or "no request field")
            )
        request_values[k] = []
        for v in values:
            try:
                request_values[k].append(parse_request_value(k, fields[k], v))
            except DataError as e:
                raise DataError(f"--request {k}={v}: {e}") from None
    with store:  # writes the served-feature log (--log-dir) before the command ends
        df = store.get_online_features(
            keys,
            refs,
            at=at_time,
            fingerprints=pins,
            request=request_values if request is not None else None,
        )
    maps = [n for n, t in df.schema.items() if is_map_column(t)]
    records = [{**r, **{n: map_value(r[n]) for n in maps}} for r in df.iter_rows(named=True)]
    if as_json:
        print_json(records)
        return

    def shown(v: object) -> str:
        return repr(v) if isinstance(v, float | list | dict) else str(v)

    # one row per feature, one column per request row; side by side, at most 4 request rows
    # and as many as fit the terminal, so that names and values keep their width
    cells = [[shown(v) for v in record.values()] for record in records]
    names = max(len("feature"), *(cell_len(c) for c in df.columns))
    chunks: list[range] = []
    start = 0
    while start < len(cells):
        end, width = start, names + 4  # a column's text, its padding and border: width + 3
        while end < len(cells) and end - start < 4:
            w = max(len(f"row {end + 1}"), *(cell_len(c) for c in cells[end])) + 3
            if end > start and width + w > console.width:
                break
            end, width = end + 1, width + w
        chunks.append(range(start, end))
        start = end
    for rows in chunks or [range(0)]:
        title = None
        if len(chunks) > 1:
            span = f"row {rows[0] + 1}" if len(rows) == 1 else f"rows {rows[0] + 1}-{rows[-1] + 1}"
            title = f"{span} of {len(cells)}"
        out = table("feature", *(f"row {i + 1}" for i in rows), title=title)
        for j, name in enumerate(df.columns):
            out.add_row(escape(name), *(escape(cells[i][j]) for i in rows))
        console.print(out)
