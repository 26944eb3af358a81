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
ALARMS_SHOWN = 8
MONITORED_DAYS = 5


def _fitting_table(*columns: str) -> Table:
    """A table that wraps cells (headers included) instead of cutting them with an ellipsis."""
    t = Table()
    for c in columns:
        t.add_column(c, overflow="fold")
    return t


def _daily_share(frame: pl.DataFrame, hit: pl.Expr) -> list[tuple[str, float]]:
    """(day, share of rows where ``hit``) per day of ``event_timestamp``, in order."""
    daily = (
        frame.group_by(pl.col("event_timestamp").dt.truncate("1d").alias("day"))
        .agg(hit.mean().alias("share"))
        .sort("day")
    )
    return [(d.strftime("%m-%d"), float(v)) for d, v in daily.iter_rows()]


def run_demo(console: Console, events: int = 100_000, workdir: Path = Path("data/demo")) -> bool:
    from featurepipe.batch.fit import fit
    from featurepipe.dev import infra
    from featurepipe.dev.datagen import generate_transactions
    from featurepipe.monitoring import ThresholdSet, monitor, read_current, record_baseline
    from featurepipe.monitoring.consistency import check_consistency
    from featurepipe.monitoring.report import write_html
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
    record_baseline(store, train, store.last_lineage, origin="the demo's training set")
    lineage = read_lineage(workdir / "train.parquet")
    pinned = lineage["views"]["user_spend"]["fingerprint"]
    console.print(
        f"{train.height:,} rows x {train.width} columns -> {workdir / 'train.parquet'}; lineage pins user_spend {pinned}; its feature distributions are the monitoring baseline  ({time.perf_counter() - t:.1f}s)"
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
    # served lookups, logged as the server logs them (docs/serving-http.md): every user active
    # in the last 6 hours, at the end of the history; checked against the batch engine in step 9
    served_dir = (workdir / "served").resolve()
    with FeatureStore(
        workdir, redis_url=services.redis_url, prefix=prefix, log_dir=served_dir
    ) as serving:
        serving.get_online_features({"user_id": recent_users.to_list()}, ["user_spend"], at=now)
    console.print(
        f"{recent_users.len():,} more lookups served and logged to "
        f"{workdir / 'served'}  ({time.perf_counter() - t:.2f}s)"
    )

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

    t = step(
        9, f"monitoring: the last {MONITORED_DAYS} days against the trained version's baseline"
    )
    since = START + timedelta(days=DAYS - MONITORED_DAYS)
    recent = (
        log.filter(pl.col("event_time") >= since)
        .pipe(lambda df: df.sample(min(20_000, df.height), seed=2))
        .select("user_id", pl.col("event_time").alias("event_timestamp"))
        .sort("event_timestamp")
    )
    current = store.get_historical_features(recent, ["user_spend"])
    assert store.last_lineage is not None
    write_training_set(current, workdir / "recent.parquet", store.last_lineage)
    th = ThresholdSet()
    checked = monitor(
        read_current([workdir / "recent.parquet"]), registry=store.registry, thresholds=th
    )
    html = write_html(checked, th, workdir / "monitor.html")
    alarms = sorted(checked.alarms, key=lambda f: -(f.psi or 0.0))
    for f in alarms[:ALARMS_SHOWN]:
        stats = [f"PSI {f.psi:.2f}" if f.psi is not None else ""]
        if f.ks_statistic is not None:
            stats.append(f"KS D {f.ks_statistic:.2f}")
        if "null_rate" in f.alarms and f.null_rate is not None:
            stats.append(
                f"null {100 * (f.baseline_null_rate or 0):.1f}% -> {100 * f.null_rate:.1f}%"
            )
        console.print(
            f"  [red]ALARM[/] {escape(f.feature)}: {', '.join(s for s in stats if s)} "
            f"({', '.join(f.alarms)})"
        )
    if len(alarms) > ALARMS_SHOWN:
        console.print(f"  ... and {len(alarms) - ALARMS_SHOWN} more in the report")
    # the planted bug: 'country' arrives null from BUG_DAY; the definition maps it to UNKNOWN
    unknown = pl.col("last_country").eq("UNKNOWN")
    before = float(train.select(unknown.mean()).item() or 0.0)
    daily = _daily_share(current, unknown)
    first = next((d for d, v in daily if v > 2 * before), "-")
    console.print(
        f"  the planted null 'country' bug: last_country UNKNOWN {100 * before:.1f}% in training; "
        f"per day now: {', '.join(f'{d} {100 * v:.1f}%' for d, v in daily)}; first day above "
        f"twice the training share: {first} (planted {START + timedelta(days=BUG_DAY):%m-%d})"
    )
    console.print(
        f"{len(checked.alarms)} of {sum(len(v.features) for v in checked.views)} features drift "
        f"(the new segment, lifetime counts growing) or changed their null rate; HTML report: "
        f"{html}  ({time.perf_counter() - t:.1f}s)"
    )

    t = time.perf_counter()
    served = pl.read_parquet(sorted(served_dir.glob("served-*.parquet")))
    consistent = check_consistency(store, served)
    verdict = (
        "[green]0 differ[/]"
        if consistent.ok
        else f"[red]{consistent.mismatched:,} differ (skew or loss)[/]"
    )
    console.print(
        f"served values recomputed by the batch engine (`featurepipe monitor --consistency`): "
        f"{consistent.compared:,} compared, {verdict}  ({time.perf_counter() - t:.1f}s)"
    )

    console.rule("[bold]summary")
    console.print(
        f"one definition (feature_defs/fraud.py, {len(view.feature_names)} features) ran in batch "
        f"(training set, materialize) and per event (Kafka -> Redis); end-to-end parity found "
        f"{parity.mismatches} differing values; the null 'country' bug and the new segment show up "
        f"as drift and null-rate alarms. Total {time.perf_counter() - t_all:.0f}s."
    )
    for k in client.scan_iter(match=OnlineStoreLayout(prefix).key_pattern(), count=5000):
        client.delete(k)
    console.print(
        f"the embedded services keep running for `featurepipe get`, `stream`, `parity --e2e` "
        f"(data in {workdir}); stop them with `featurepipe dev down`"
    )
    return bool(parity.ok and consistent.ok)
