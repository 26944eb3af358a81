"""``featurepipe demo`` / ``make demo``: the whole story on generated data, embedded services."""

from __future__ import annotations

import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.markup import escape
from rich.table import Table

START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 30
SHIFT_DAY, BUG_DAY, FIT_END_DAY, CUTOVER_DAY = 20, 27, 18, 24
DRIFTS_SHOWN = 12


def _fitting_table(*columns: str) -> Table:
    """A table that wraps cells (headers included) instead of cutting them with an ellipsis."""
    t = Table()
    for c in columns:
        t.add_column(c, overflow="fold")
    return t


def run_demo(console: Console, events: int = 100_000, workdir: Path = Path("data/demo")) -> bool:
    from featurepipe.batch.drift import compare as drift
    from featurepipe.batch.drift import ranked
    from featurepipe.batch.fit import baseline, fit
    from featurepipe.batch.sources import read_events
    from featurepipe.dev import infra
    from featurepipe.dev.datagen import generate_transactions
    from featurepipe.errors import FeaturepipeError
    from featurepipe.ir.timebase import to_epoch_us
    from featurepipe.online.layout import OnlineStoreLayout
    from featurepipe.online.materialize import materialize
    from featurepipe.online.redis_conn import connect
    from featurepipe.parity.e2e import run_e2e
    from featurepipe.settings import redact_url
    from featurepipe.store import FeatureStore, read_lineage, write_training_set
    from featurepipe.stream.logs import quiet_kafka_logging
    from featurepipe.stream.produce import encode_event, ensure_topics, produce_frame, produce_raw
    from featurepipe.stream.worker import StreamWorker, WorkerConfig

    quiet_kafka_logging()
    t_all = time.perf_counter()
    defs_src = Path(__file__).resolve().parents[2] / "feature_defs"
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "data" / "transactions").mkdir(parents=True)
    shutil.copytree(
        defs_src, workdir / "feature_defs", ignore=shutil.ignore_patterns("__pycache__")
    )

    def step(n: int, text: str) -> float:
        title = f"{n}. {text}"
        if len(title) + 6 <= console.width:
            console.rule(f"[bold]{escape(title)}")
        else:  # a rule cuts a long title with an ellipsis: the title wraps below it instead
            console.rule()
            console.print(f"[bold]{escape(title)}")
        return time.perf_counter()

    t = step(1, "embedded Kafka-compatible broker and Redis-compatible server")
    services = infra.up()
    console.print(
        f"kafka {services.kafka_bootstrap}, redis {redact_url(services.redis_url)}  "
        f"({time.perf_counter() - t:.1f}s)"
    )

    t = step(2, f"generate {DAYS} days of transactions")
    log = generate_transactions(
        events, users=5_000, days=DAYS, shift_day=SHIFT_DAY, bug_day=BUG_DAY, seed=42
    )
    log.write_parquet(workdir / "data" / "transactions" / "part-0.parquet")
    console.print(
        f"{log.height:,} events for {log['user_id'].n_unique():,} users; planted: a new customer "
        f"segment from day {SHIFT_DAY} and a bug nulling 'country' from day {BUG_DAY}  "
        f"({time.perf_counter() - t:.1f}s)"
    )

    t = step(3, f"fit baselines on days 0-{FIT_END_DAY} (frozen, versioned)")
    report = fit(workdir, "feature_defs", START, START + timedelta(days=FIT_END_DAY))
    info = report.views["user_spend"]
    console.print(
        f"view user_spend {info['fingerprint']}: baseline over {info['points']:,} query points  ({time.perf_counter() - t:.1f}s)"
    )

    t = step(4, "point-in-time training set")
    store = FeatureStore(workdir, redis_url=services.redis_url)
    labels = (
        log.filter(pl.col("event_time") < START + timedelta(days=FIT_END_DAY))
        .pipe(lambda df: df.sample(min(20_000, df.height), seed=1))
        .select(
            "user_id",
            pl.col("event_time").alias("event_timestamp"),
            (pl.col("amount") > 150).alias("label"),
        )
    )
    train = store.get_historical_features(labels, ["user_spend"])
    assert store.last_lineage is not None
    write_training_set(train, workdir / "train.parquet", store.last_lineage)
    lineage = read_lineage(workdir / "train.parquet")
    pinned = lineage["views"]["user_spend"]["fingerprint"]
    console.print(
        f"{train.height:,} rows x {train.width} columns -> {workdir / 'train.parquet'}; lineage pins user_spend {pinned}  ({time.perf_counter() - t:.1f}s)"
    )

    t = step(5, f"materialize online state up to day {CUTOVER_DAY} into Redis")
    view = store.definitions.view("user_spend")
    client = connect(services.redis_url)
    prefix = f"demo-{uuid.uuid4().hex[:6]}"
    until = START + timedelta(days=CUTOVER_DAY)
    mat = materialize(view, until, client, root=workdir, prefix=prefix)
    console.print(
        f"{mat.entities:,} entities from {mat.events:,} events; cut-over at {until.isoformat()}  ({time.perf_counter() - t:.1f}s)"
    )

    t = step(6, "stream every event through Kafka into Redis (with 50 malformed ones)")
    topic = f"transactions-demo-{uuid.uuid4().hex[:6]}"
    ensure_topics(services.kafka_bootstrap, {topic: 4, topic + ".dlq": 1})
    produce_frame(log, topic, services.kafka_bootstrap, "user_id")
    malformed: list[tuple[bytes | None, bytes]] = [
        (b"u1", b'{"user_id": "u1", "amount": "x"}')
    ] * 25
    malformed += [(b"u2", encode_event({"user_id": "u2"}))] * 25
    produce_raw(topic, services.kafka_bootstrap, malformed)
    worker = StreamWorker(
        store.definitions,
        WorkerConfig(
            bootstrap=services.kafka_bootstrap,
            group_id=prefix,
            prefix=prefix,
            idle_exit_s=3,
            max_events=log.height + 50,
        ),
        client,
        topics={"transactions": topic},
    )
    c = worker.run()
    console.print(
        f"{c.valid:,} valid events: {c.before_cutover:,} before the cut-over (already "
        f"materialized, skipped), {c.valid - c.before_cutover:,} ingested; {c.invalid} malformed "
        f"to {topic}.dlq with reasons  ({time.perf_counter() - t:.1f}s)"
    )

    t = step(7, "online lookups (request time = end of the history)")
    store.prefix = prefix
    now = START + timedelta(days=DAYS)
    recent_users = (
        log.filter(pl.col("event_time") > now - timedelta(hours=6))["user_id"].unique().sort()
    )
    users = [
        *recent_users.filter(~recent_users.str.starts_with("n")).head(2),
        *recent_users.head(1),
    ]
    online = store.get_online_features(
        {"user_id": [*users, "never-seen"]},
        [
            "user_spend:txn_count_24h",
            "user_spend:amount_sum_24h",
            "user_spend:last_country",
            "user_spend:foreign_count_24h",
        ],
        at=now,
        fingerprints={"user_spend": pinned},
    )
    # one column per entity, one row per feature: fits a narrow terminal, nothing cut
    key = view.entity.key
    names = [c for c in online.columns if c != key]
    table = _fitting_table(key, *[str(v) for v in online[key]])
    for name in names:
        values = online[name].to_list()
        table.add_row(name, *[f"{v:.2f}" if isinstance(v, float) else str(v) for v in values])
    console.print(table)
    console.print(f"({time.perf_counter() - t:.2f}s)")

    t = step(8, "end-to-end parity: Kafka -> worker -> Redis vs the batch plan, bit for bit")
    parity = run_e2e(
        store.definitions,
        "user_spend",
        log,
        bootstrap=services.kafka_bootstrap,
        redis_url=services.redis_url,
    )
    verdict = "[green]0 mismatches[/]" if parity.ok else f"[red]{parity.mismatches:,} mismatches[/]"
    console.print(
        f"{parity.queries:,} online lookups x {len(parity.features)} features: {verdict}  ({time.perf_counter() - t:.1f}s)"
    )

    t = step(9, "drift: the last 3 days against the frozen baseline")
    base = store.registry.baseline("user_spend", view.fingerprint)
    if base is None:  # step 3 fitted this very version
        raise FeaturepipeError(f"no baseline for user_spend {view.fingerprint} in the registry")
    history, _ = read_events(view.source, root=workdir)
    since = START + timedelta(days=DAYS - 3)
    current = baseline(
        store.definitions,
        "user_spend",
        history.collect().lazy(),
        max_points=20_000,
        points_from_us=to_epoch_us(since),
    )
    drifts = ranked(drift(base, current))
    for d in drifts[:DRIFTS_SHOWN]:
        console.print(f"  [yellow]drift[/] {escape(d.text)}")
    shown = (
        f"showing {DRIFTS_SHOWN} of {len(drifts)} drifting feature statistics (largest first)"
        if len(drifts) > DRIFTS_SHOWN
        else f"{len(drifts)} drifting feature statistics"
    )
    console.print(f"{shown}  ({time.perf_counter() - t:.1f}s)")

    console.rule("[bold]summary")
    console.print(
        f"one definition (feature_defs/fraud.py, {len(view.feature_names)} features) ran in batch "
        f"(training set, materialize) and per event (Kafka -> Redis); end-to-end parity found "
        f"{parity.mismatches} differing values; the null 'country' bug and the new segment show up "
        f"as drift. Total {time.perf_counter() - t_all:.0f}s."
    )
    for k in client.scan_iter(match=OnlineStoreLayout(prefix).key_pattern(), count=5000):
        client.delete(k)
    console.print(
        f"the embedded services keep running for `featurepipe get`, `stream`, `parity --e2e` "
        f"(data in {workdir}); stop them with `featurepipe dev down`"
    )
    return bool(parity.ok)
