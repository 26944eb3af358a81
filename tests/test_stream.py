"""The stream worker against a real Kafka-protocol broker and a real Redis-protocol server."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from kafka import KafkaConsumer, TopicPartition

from featurepipe import load_definitions
from featurepipe.dev import infra
from featurepipe.dev.datagen import generate_transactions
from featurepipe.online.lookup import OnlineReader, VersionMismatchError
from featurepipe.online.materialize import materialize
from featurepipe.online.redis_conn import connect
from featurepipe.parity.e2e import run_e2e
from featurepipe.stream.produce import encode_event, ensure_topics, produce_frame, produce_raw
from featurepipe.stream.worker import StreamWorker, WorkerConfig
from tests.online_check import online_vs_batch
from tests.services import services, unique

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["services"]


def _defs() -> Any:
    return load_definitions(ROOT / "feature_defs")


def _final_compare(defs: Any, client: Any, prefix: str, good: pl.DataFrame) -> int:
    """Online values at several times per entity vs the batch plan over ``good``."""
    return online_vs_batch(defs.view("user_spend"), client, prefix, good)


@pytest.mark.usefixtures("kafka_client")
def test_end_to_end_parity(services: infra.DevServices) -> None:
    report = run_e2e(
        _defs(), "user_spend", generate_transactions(20_000, users=400, seed=21),
        bootstrap=services.kafka_bootstrap, redis_url=services.redis_url,
    )
    assert report.events == 20_000
    assert report.queries > 0
    assert report.mismatches == 0, [f.first for f in report.features if f.mismatched]


def test_end_to_end_parity_of_hopped_windows(services: infra.DevServices, tmp_path: Path) -> None:
    """Hopped windows of every shape (hop = window, hop dividing it, beside sliding ones) and
    request-time features through the broker and Redis: online values equal the batch plan's at
    the entities' newest events, at each window's last visible instant and at the hop boundary
    after it."""
    defs_dir = tmp_path / "defs"
    defs_dir.mkdir()
    source = (ROOT / "feature_defs" / "fraud.py").read_text()
    contract = source[: source.index("EMPLOYMENT = ")]  # the Transaction contract, entity, source
    (defs_dir / "hopped.py").write_text(contract + '''

@fp.feature_view(entity=user, source=transactions, lateness="1h")
def user_hopped(t):
    return {
        "count_1h_10m": fp.count(window="1h", hop="10m"),
        "count_1h": fp.count(window="1h"),
        "sum_24h_1h": fp.sum(t.amount, window="24h", hop="1h", default=0.0),
        "mean_7d_1d": fp.mean(t.amount, window="7d", hop="1d"),
        "std_2h_2h": fp.std(t.amount, window="2h", hop="2h"),
        "max_90m_30m": fp.max(t.amount, window="90m", hop="30m"),
        "min_3h_1h": fp.min(t.amount, window="3h", hop="1h"),
        "merchants_7d_6h": fp.count_distinct(t.merchant_id, window="7d", hop="6h"),
        "first_6h_2h": fp.first(t.country, window="6h", hop="2h"),
        "last_6h_3h": fp.last(t.country, window="6h", hop="3h"),
        "foreign_24h_4h": fp.count(window="24h", hop="4h", where=t.country != "US"),
        # request-time features: each point asks with the entity's newest event's fields
        "amount_vs_mean": fp.request("amount", float) / fp.mean(t.amount, window="24h", hop="1h"),
        "same_country": fp.request("country", str) == fp.last(t.country),
        "scaled": fp.request("amount", float) * 2.0,
        # the newer kinds: mode, approx_percentile, since_last (query time)
        "mode_country_24h": fp.mode(t.country, window="24h", hop="1h"),
        "mode_merchant": fp.mode(t.merchant_id),
        "p90_amount_7d": fp.approx_percentile(t.amount, 0.9, window="7d", hop="1d"),
        "p50_amount": fp.approx_percentile(t.amount, 0.5),
        "since_last_s": fp.since_last(t.event_time),
        "since_foreign_s": fp.since_last(t.event_time, where=t.country != "US", window="24h"),
        "decayed_amount": fp.decayed_sum(t.amount, half_life="1d", window="7d"),
        "decayed_count": fp.decayed_count(half_life="6h", window="24h"),
        # lists and maps
        "last_amounts_24h": fp.last_k(t.amount, 3, window="24h", hop="1h"),
        "last_countries": fp.last_k(t.country, 2),
        "first_merchants_7d": fp.first_k(t.merchant_id, 2, window="7d"),
        "recent_merchants": fp.last_distinct_k(t.merchant_id, 3, window="7d", hop="6h"),
        "channels_7d": fp.count_by(t.channel, window="7d", hop="1d"),
        "top_countries": fp.count_by(t.country, top_k=2),
        "last_times_6h": fp.last_k(t.event_time, 2, window="6h"),
        # bucketed (by=): maps per channel / country
        "amount_by_channel_7d": fp.sum(t.amount, by=t.channel, window="7d", hop="1d"),
        "count_by_country": fp.count(by=t.country),
        "mean_by_foreign_24h": fp.mean(t.amount, by=t.country != "US", window="24h"),
        "max_by_channel": fp.max(t.amount, by=t.channel),
    }
''')
    defs = load_definitions(defs_dir)
    report = run_e2e(
        defs, "user_hopped", generate_transactions(10_000, users=200, seed=23),
        bootstrap=services.kafka_bootstrap, redis_url=services.redis_url,
    )
    assert report.events == 10_000
    # per entity: the newest event, 2 points per hopped window shape (10), 1 per sliding one (4),
    # a day past the longest
    assert report.queries == 200 * (1 + 2 * 10 + 4 + 1)
    listed = {f.name: f.compared for f in report.features}
    assert listed["recent_merchants"] == listed["channels_7d"] == report.queries
    assert report.mismatches == 0, [f.first for f in report.features if f.mismatched]


@pytest.mark.usefixtures("kafka_client")
def test_cutover_after_materialize_no_gap_no_double_count(services: infra.DevServices, tmp_path: Path) -> None:
    defs = _defs()
    view = defs.view("user_spend")
    log = generate_transactions(12_000, users=200, seed=22)
    path = tmp_path / "t.parquet"
    log.write_parquet(path)
    until = log["event_time"].sort()[log.height // 2]
    client = connect(services.redis_url)
    prefix, topic = unique("fp-cut"), unique("tx-cut")
    materialize(view, until, client, path=path, prefix=prefix)
    ensure_topics(services.kafka_bootstrap, {topic: 3})
    produce_frame(log, topic, services.kafka_bootstrap, "user_id")  # the whole history is on Kafka
    worker = StreamWorker(
        defs, WorkerConfig(bootstrap=services.kafka_bootstrap, group_id=prefix, prefix=prefix,
                           idle_exit_s=3, max_events=log.height),
        client, topics={"transactions": topic},
    )
    counters = worker.run()
    assert counters.before_cutover == log.filter(pl.col("event_time") < until).height
    assert _final_compare(defs, client, prefix, log) == 0


def _malformed(good: pl.DataFrame) -> list[bytes]:
    row = good.row(0, named=True)
    base = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
    variants: list[bytes] = []
    for i in range(1_050):
        kind = i % 7
        e = dict(base, transaction_id=f"bad{i}")
        if kind == 0:
            variants.append(b'{"user_id": "u1", "amount": ')  # bad JSON
            continue
        if kind == 1:
            e["amount"] = "lots"
        elif kind == 2:
            del e["user_id"]
        elif kind == 3:
            e["user_id"] = None
        elif kind == 4 and i < 50:
            e["channel"] = "x" * 1_000_000  # 1 MB payloads (a few: they are slow to ship)
        elif kind == 4:
            e["amount"] = [1.5, 2.5]
        elif kind == 5:
            e["event_time"] = "1900-01-01T00:00:00+00:00" if i % 2 else "2200-01-01T00:00:00+00:00"
        elif i < 70:
            e["user_id"] = "someone-else"  # a valid event under another entity's key (u1)
        else:
            e["unexpected_field"] = 1
        variants.append(json.dumps(e).encode())
    return variants


@pytest.mark.usefixtures("kafka_client")
def test_malformed_events_go_to_the_dead_letter_topic(services: infra.DevServices) -> None:
    defs = _defs()
    good = generate_transactions(5_000, users=100, seed=23)
    bad = _malformed(good)
    originals = set(bad)
    topic, prefix = unique("tx-bad"), unique("fp-bad")
    ensure_topics(services.kafka_bootstrap, {topic: 2, topic + ".dlq": 1})
    good_rows = good.with_columns(pl.col("event_time").dt.to_string("%Y-%m-%dT%H:%M:%S%.6f+00:00")).to_dicts()
    messages: list[tuple[bytes | None, bytes]] = []
    for i, r in enumerate(good_rows):
        messages.append((r["user_id"].encode(), encode_event(r)))
        if i % 5 == 0 and bad:
            messages.append((b"u1", bad.pop()))
    messages += [(b"u1", b) for b in bad]
    produce_raw(topic, services.kafka_bootstrap, messages)
    client = connect(services.redis_url)
    worker = StreamWorker(
        defs, WorkerConfig(bootstrap=services.kafka_bootstrap, group_id=prefix, prefix=prefix,
                           idle_exit_s=3, max_events=len(messages)),
        client, topics={"transactions": topic},
    )
    counters = worker.run()
    assert counters.invalid == 1_050 and counters.valid == good.height
    dlq = KafkaConsumer(bootstrap_servers=services.kafka_bootstrap, auto_offset_reset="earliest",
                        enable_auto_commit=False, max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20)
    tp = TopicPartition(topic + ".dlq", 0)
    dlq.assign([tp])
    dlq.seek_to_beginning(tp)
    dead: list[Any] = []
    while len(dead) < 1_050:
        batch = dlq.poll(timeout_ms=2000)
        if not batch:
            break
        for msgs in batch.values():
            dead.extend(msgs)
    dlq.close()
    assert len(dead) == 1_050
    reasons = [dict(m.headers)["featurepipe-reason"].decode() for m in dead]
    assert all(reasons)
    joined = " | ".join(reasons)
    for fragment in ("json", "user_id", "payload too large", "outside the accepted range",
                     "Extra inputs", "amount", "message key"):
        assert fragment.lower() in joined.lower(), fragment
    assert {m.value for m in dead} == originals  # the original bytes, every one
    assert _final_compare(defs, client, prefix, good) == 0


def test_lookups_defaults_version_pins_and_metrics(services: infra.DevServices) -> None:
    defs = _defs()
    view = defs.view("user_spend")
    log = generate_transactions(2_000, users=20, seed=24)
    topic, prefix = unique("tx-look"), unique("fp-look")
    ensure_topics(services.kafka_bootstrap, {topic: 1})
    produce_frame(log, topic, services.kafka_bootstrap, "user_id")
    client = connect(services.redis_url)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = StreamWorker(
        defs, WorkerConfig(bootstrap=services.kafka_bootstrap, group_id=prefix, prefix=prefix,
                           idle_exit_s=3, max_events=log.height, metrics_port=port),
        client, topics={"transactions": topic},
    )
    import threading

    done = threading.Event()
    threading.Thread(target=lambda: (worker.run(), done.set()), daemon=True).start()
    metrics = ""
    for _ in range(100):
        try:
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
            break
        except OSError:
            done.wait(0.1)
    assert "featurepipe_events_total" in metrics and "featurepipe_consumer_lag" in metrics
    assert done.wait(60)
    reader = OnlineReader(client, [view], prefix)
    user = log["user_id"][0]
    at = int(log["event_time"].max().timestamp() * 1e6) + 1  # type: ignore[union-attr]
    row = reader.read([user, "nobody"], {"user_spend": ["txn_count_total", "amount_sum_24h"]}, at_us=at)
    assert row[0]["user_spend_found"] is True and row[0]["txn_count_total"] > 0
    assert row[1] == {"txn_count_total": 0, "amount_sum_24h": 0.0, "user_spend_found": False}
    with pytest.raises(VersionMismatchError, match="requested"):
        reader.read([user], {"user_spend": ["txn_count_total"]}, fingerprints={"user_spend": "0" * 16})
    # read at the current time (no at_us), over a day after the log: lifetime kept, 24h window empty
    assert datetime.now(UTC).timestamp() * 1e6 > at + 86_400e6
    now = reader.read([user], {"user_spend": ["txn_count_total", "amount_sum_24h"]})
    assert now[0]["txn_count_total"] == row[0]["txn_count_total"] and now[0]["amount_sum_24h"] == 0.0
