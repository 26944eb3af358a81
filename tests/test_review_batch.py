"""Review fixes on the batch and Kafka commands, as a user runs them (subprocesses) in the
project `featurepipe init` writes: paths shown as typed and resolved against the project root,
CSV and JSON lines event logs in parity, a directory of Parquet files in produce, label-file
errors naming the file and the option, option bounds, the dead-letter commands' output, and the
skeleton's README."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from featurepipe.dev import infra
from featurepipe.dev.skeleton import create
from featurepipe.stream.dead_letters import DeadLetter, DeadLetterPublisher
from featurepipe.stream.produce import ensure_topics
from featurepipe.stream.retry import Backoff
from tests.services import services, unique

__all__ = ["services"]


def _fp(
    cwd: Path, *args: str, columns: int = 200, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    for var in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        env.pop(var, None)
    r = subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    return r


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _refused(r: subprocess.CompletedProcess[str]) -> str:
    """The one-line refusal of a command that exited 2, with rich's wrapping undone."""
    assert r.returncode == 2, r.stdout + r.stderr
    return " ".join((r.stdout + r.stderr).split())


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """The `featurepipe init` project, with a topic of its own."""
    root = tmp_path / "shop"
    create(root, today=date(2026, 3, 10))
    defs = root / "feature_defs" / "orders.py"
    defs.write_text(defs.read_text().replace('topic="orders"', f'topic="{unique("orders")}"'))
    return root


def _topic(shop: Path) -> str:
    text = (shop / "feature_defs" / "orders.py").read_text()
    return text.split('topic="', 1)[1].split('"', 1)[0]


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# -- parity --events: CSV and JSON lines, as typed as the Parquet files ----------------------------
def test_parity_replays_the_skeletons_csv_with_zero_mismatches(shop: Path) -> None:
    rows = _csv_rows(shop / "data" / "new_orders.csv")
    assert len(rows) > 100  # the last day of the sample
    doc = json.loads(_ok(_fp(shop, "parity", "--events", "data/new_orders.csv", "--json")))
    assert doc["ok"] is True
    (view,) = doc["views"]
    assert view["events"] == len(rows) and view["mismatches"] == 0
    assert doc["views"][0]["source"]["events"] == "data/new_orders.csv"

    # the same events as JSON lines (amount a number or null, the rest text)
    lines = [json.dumps({**r, "amount": float(r["amount"]) if r["amount"] else None}) for r in rows]
    (shop / "data" / "new_orders.jsonl").write_text("\n".join(lines) + "\n")
    doc = json.loads(_ok(_fp(shop, "parity", "--events", "data/new_orders.jsonl", "--json")))
    assert doc["ok"] is True and doc["views"][0]["events"] == len(rows)
    assert doc["views"][0]["mismatches"] == 0

    # from a subdirectory, the path is relative to the project root, and said as typed
    sub = shop / "notebooks"
    sub.mkdir()
    out = _ok(_fp(sub, "parity", "--events", "data/new_orders.csv"))
    assert f"event log data/new_orders.csv ({shop.resolve()}/data/new_orders.csv): " in out
    assert "0 mismatches" in out


def test_an_event_log_in_csv_reads_with_the_contracts_types(shop: Path) -> None:
    from featurepipe.cli.batch import read_event_log_frame
    from featurepipe.dsl.loader import load_definitions
    from featurepipe.project import load_project

    (shop / "data" / "few.csv").write_text(
        "order_id,customer_id,amount,country,ordered_at\n"
        "o1,0042,12,US,2026-03-09T10:00:00Z\n"
        "o2,7,,FR,2026-03-09 12:30:00+02:00\n"
    )
    project = load_project(shop)
    source = load_definitions(project.definitions).view("customer_orders").source
    frame, files = read_event_log_frame(project, Path("data/few.csv"), source)
    assert files == [shop.resolve() / "data" / "few.csv"]
    assert frame.schema == pl.Schema(
        {
            "order_id": pl.String,
            "customer_id": pl.String,
            "amount": pl.Float64,
            "country": pl.String,
            "ordered_at": pl.Datetime("us", "UTC"),
        }
    )
    assert frame.rows() == [
        ("o1", "0042", 12.0, "US", datetime(2026, 3, 9, 10, tzinfo=UTC)),
        ("o2", "7", None, "FR", datetime(2026, 3, 9, 10, 30, tzinfo=UTC)),
    ]


def test_parity_events_refusals_name_the_file_as_typed(shop: Path) -> None:
    sub = shop / "notebooks"
    sub.mkdir()
    said = _refused(_fp(sub, "parity", "--events", "new_orders.csv"))
    assert said == (
        "error: event log 'new_orders.csv' does not exist (relative paths resolve against the "
        f"project root {shop.resolve()})"
    )
    said = _refused(_fp(shop, "parity", "--events", "data/orders.txt"))
    assert "event log 'data/orders.txt' does not exist" in said
    (shop / "data" / "orders.txt").write_text("x")
    said = _refused(_fp(shop, "parity", "--events", "data/orders.txt"))
    assert "event log 'data/orders.txt': unknown extension '.txt'; accepted: a Parquet" in said
    (shop / "data" / "fake.parquet").write_text("order_id\no1\n")
    said = _refused(_fp(shop, "parity", "--events", "data/fake.parquet"))
    assert "event log 'data/fake.parquet' cannot be read as Parquet" in said
    assert "CSV (.csv) or JSON lines (.jsonl, .ndjson)" in said
    (shop / "data" / "bad.csv").write_text(
        "order_id,customer_id,amount,country,ordered_at\no1,c1,lots,US,2026-03-09T10:00:00Z\n"
    )
    said = _refused(_fp(shop, "parity", "--events", "data/bad.csv"))
    assert "event log 'data/bad.csv': column 'amount', row 1: 'lots' is not a float" in said
    said = _refused(_fp(shop, "parity", "--events", "data/nothing/*.parquet"))
    assert said == "error: event log 'data/nothing/*.parquet' matches no .parquet files"


# -- training-set: the labels file and the option named ---------------------------------------------
def test_training_set_label_errors_name_the_file_and_the_option(shop: Path) -> None:
    args = ("training-set", "--features", "customer_orders", "--out", "train.parquet")
    said = _refused(_fp(shop, *args, "--entities", "data/labels.csv", "--timestamp", "ts"))
    assert said == (
        "error: labels 'data/labels.csv': no timestamp column 'ts' (columns: customer_id, "
        "event_timestamp, churned; choose one with --timestamp)"
    )
    (shop / "data" / "gaps.csv").write_text(
        "customer_id,event_timestamp,churned\n"
        "c0001,2026-03-01T00:00:00Z,true\n"
        "c0002,,false\n"
        "c0003,,false\n"
    )
    said = _refused(_fp(shop, *args, "--entities", "data/gaps.csv"))
    assert said == (
        "error: labels 'data/gaps.csv': 2 row(s) without a time in the timestamp column "
        "'event_timestamp' (first: row 2); every label row needs one (--timestamp names the "
        "column)"
    )
    pl.DataFrame(
        {"customer_id": [1], "event_timestamp": [datetime(2026, 3, 1, tzinfo=UTC)]},
        schema={"customer_id": pl.Int64, "event_timestamp": pl.Datetime("us", "UTC")},
    ).write_parquet(shop / "data" / "ints.parquet")
    said = _refused(_fp(shop, *args, "--entities", "data/ints.parquet"))
    assert said.startswith(
        "error: labels 'data/ints.parquet': column 'customer_id' has type Int64; expected String"
    )
    (shop / "data" / "clash.csv").write_text(
        "customer_id,event_timestamp,orders_7d\nc0001,2026-03-01T00:00:00Z,3\n"
    )
    said = _refused(_fp(shop, *args, "--entities", "data/clash.csv"))
    assert said == (
        "error: labels 'data/clash.csv': column 'orders_7d' has the name of feature "
        "'customer_orders:orders_7d', which the training set adds: rename the column or leave "
        "the feature out"
    )
    assert not (shop / "train.parquet").exists()


def test_training_set_out_must_be_parquet_and_partitions_positive(shop: Path) -> None:
    base = ("training-set", "--entities", "data/labels.csv", "--features", "customer_orders")
    said = _refused(_fp(shop, *base, "--out", "train.csv"))
    assert said == (
        "error: --out train.csv: a training set is written as Parquet, with its lineage in the "
        "file's metadata; name the file with a .parquet extension (e.g. --out train.parquet)"
    )
    assert not (shop / "train.csv").exists()
    for bad in ("0", "-1"):
        said = _refused(_fp(shop, *base, "--out", "t.parquet", "--partitions", bad))
        assert "Invalid value for '--partitions'" in said
    assert not (shop / "t.parquet").exists()
    sub = shop / "notebooks"
    sub.mkdir()
    out = _ok(_fp(sub, *base, "--out", "train.parquet", "--partitions", "2"))
    assert f"to train.parquet ({shop.resolve()}/train.parquet) in " in " ".join(out.split())
    assert (shop / "train.parquet").is_file() and not (sub / "train.parquet").exists()


def test_parity_sample_is_a_fraction_above_zero(shop: Path) -> None:
    assert "Invalid value for '--sample'" in _refused(_fp(shop, "parity", "--sample", "2"))
    assert _refused(_fp(shop, "parity", "--sample", "0")) == (
        "error: --sample 0.0: must be more than 0 (the fraction of events that get query "
        "points, at most 1)"
    )


# -- a source path that does not exist: where it was looked for ------------------------------------
def test_a_missing_source_path_says_where_it_was_resolved(shop: Path) -> None:
    cfg = shop / "featurepipe.toml"
    cfg.write_text(cfg.read_text().replace('data_root = "."', 'data_root = "elsewhere"'))
    root = shop.resolve()
    said = _refused(
        _fp(
            shop,
            *("training-set", "--entities", "data/labels.csv", "--features", "customer_orders"),
            *("--out", "train.parquet"),
        )
    )
    assert said == (
        "error: Parquet source path 'data/orders/' does not exist (resolved against data_root "
        f"{root}/elsewhere: {root}/elsewhere/data/orders/)"
    )
    said = _refused(_fp(shop, "parity"))
    assert f"(resolved against data_root {root}/elsewhere: " in said


# -- the skeleton's README ----------------------------------------------------------------------------
def test_the_skeleton_readme_aligns_its_comments_and_lists_dlq_after_stream(
    tmp_path: Path,
) -> None:
    create(tmp_path / "shop", today=date(2026, 3, 10))
    text = (tmp_path / "shop" / "README.md").read_text()
    block = text.split("```\n", 2)[1]
    assert block == (
        "featurepipe plan                            # check the definitions, see both plans\n"
        "featurepipe training-set --entities data/labels.csv --features customer_orders \\\n"
        "    --out train.parquet                     # a point-in-time-correct training set\n"
        "featurepipe dev up                          # embedded Kafka-protocol broker + Redis "
        "server\n"
        "featurepipe materialize --until 2026-03-09  # online state from Parquet up to the "
        "cut-over\n"
        "featurepipe get --entity customer_id=c0001 \\\n"
        "    --features customer_orders              # online lookup\n"
        "featurepipe parity                          # batch vs per-event, bit for bit\n"
        "featurepipe produce --view customer_orders \\\n"
        "    --events data/new_orders.csv            # the last day's orders, to Kafka\n"
        "featurepipe stream --idle-exit 5            # Kafka -> Redis; stops after 5 idle "
        "seconds\n"
        "featurepipe dlq list                        # anything the worker refused, counted by "
        "reason\n"
        "featurepipe get --entity customer_id=c0001 \\\n"
        "    --features customer_orders              # again: the new orders are in\n"
        "featurepipe dev down                        # stop the broker and the server\n"
    )
    assert {line.index("#") for line in block.splitlines() if "#" in line} == {44}


# -- produce: paths as typed, a directory of Parquet files -----------------------------------------
def _read_all(bootstrap: str, topic: str, n: int) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    got: list[Any] = []
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        for _ in range(30):
            for msgs in consumer.poll(timeout_ms=1000).values():
                got.extend(msgs)
            if len(got) >= n:
                break
    finally:
        consumer.close()
    return sorted(got, key=lambda m: (m.partition, m.offset))


def _orders(ids: list[str], customers: list[str], hours: list[int]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "order_id": ids,
            "customer_id": customers,
            "amount": [1.5] * len(ids),
            "country": ["US"] * len(ids),
            "ordered_at": [datetime(2026, 3, 9, h, tzinfo=UTC) for h in hours],
        },
        schema_overrides={"ordered_at": pl.Datetime("us", "UTC")},
    )


def test_produce_sends_a_directory_of_parquet_files_in_file_order(
    services: infra.DevServices, shop: Path
) -> None:
    b = services.kafka_bootstrap
    batch = shop / "data" / "batch"
    batch.mkdir()
    _orders(["a1", "a2", "a3"], ["c1", "c2", "c1"], [1, 2, 3]).write_parquet(
        batch / "part-0.parquet"
    )
    _orders(["b1", "b2"], ["c2", "c1"], [4, 5]).write_parquet(batch / "part-1.parquet")
    topic = unique("dir")
    common = ("--view", "customer_orders", "--topic", topic, "--partitions", "1", "--bootstrap", b)
    out = _ok(_fp(shop, "produce", "--events", "data/batch", *common))
    assert f"sent 5 events from data/batch (2 files) to topic {topic} (1 partitions" in out
    sent = _read_all(b, topic, 5)
    assert [json.loads(m.value)["order_id"] for m in sent] == ["a1", "a2", "a3", "b1", "b2"]
    assert [m.key for m in sent] == [b"c1", b"c2", b"c1", b"c2", b"c1"]

    # --limit counts across the files; a glob works as the directory does
    topic2 = unique("glob")
    limited = (
        "--view", "customer_orders", "--topic", topic2, "--partitions", "1",
        "--bootstrap", b, "--limit", "4", "--json",
    )  # fmt: skip
    report = json.loads(_ok(_fp(shop, "produce", "--events", "data/batch/*.parquet", *limited)))
    assert report["events"] == 4 and report["files"] == 2
    sent = _read_all(b, topic2, 4)
    assert [json.loads(m.value)["order_id"] for m in sent] == ["a1", "a2", "a3", "b1"]

    # from a subdirectory: relative to the project root, said as typed with where it resolved
    sub = shop / "notebooks"
    sub.mkdir()
    rows = _csv_rows(shop / "data" / "new_orders.csv")
    out = _ok(_fp(sub, "produce", "--events", "data/new_orders.csv", *common))
    assert (
        f"sent {len(rows):,} events from data/new_orders.csv "
        f"({shop.resolve()}/data/new_orders.csv) to topic {topic}"
    ) in " ".join(out.split())
    said = _refused(_fp(sub, "produce", "--events", "data/none.parquet", *common))
    assert said == (
        "error: event log 'data/none.parquet' does not exist (relative paths resolve against "
        f"the project root {shop.resolve()})"
    )
    (shop / "data" / "keyless.csv").write_text("order_id,amount\no1,2.5\n")
    said = _refused(_fp(sub, "produce", "--events", "data/keyless.csv", *common))
    assert said == (
        "error: event log 'data/keyless.csv' (relative paths resolve against the project root "
        f"{shop.resolve()}) has no column 'customer_id' to key the messages by (columns: "
        "order_id, amount)"
    )
    (shop / "data" / "empty").mkdir()
    said = _refused(_fp(shop, "produce", "--events", "data/empty", *common))
    assert said == "error: event log 'data/empty' is a directory without .parquet files"

    # outside any project, --topic and --key need no definitions
    elsewhere = shop.parent / "elsewhere"
    elsewhere.mkdir()
    raw = ("--topic", topic, "--key", "customer_id", "--bootstrap", b)
    out = _ok(_fp(elsewhere, "produce", "--events", str(batch), *raw))
    assert f"sent 5 events from {batch} (2 files) to topic {topic}" in " ".join(out.split())
    assert f"no view reads topic {topic}: events not checked" in out


# -- dead letters -----------------------------------------------------------------------------------
class _Msg:
    """What the publisher reads of a consumed message."""

    def __init__(self, i: int, value: bytes) -> None:
        self.key, self.value, self.partition, self.offset = b"k%d" % i, value, 0, i


def _plant(bootstrap: str, topic: str, values: list[bytes]) -> None:
    ensure_topics(bootstrap, {topic: 1, topic + ".dlq": 1})
    publisher = DeadLetterPublisher(
        KafkaProducer(bootstrap_servers=bootstrap), Backoff(threading.Event())
    )
    publisher.publish(
        [
            DeadLetter(topic, _Msg(i, v), "amount: not a valid float", "invalid field amount")
            for i, v in enumerate(values)
        ]
    )
    publisher.close()


def test_dlq_list_headers_wrap_at_words_and_show_prints_whole_payloads(
    services: infra.DevServices, shop: Path
) -> None:
    b = services.kafka_bootstrap
    topic = _topic(shop)
    long = json.dumps({"order_id": "o1", "note": "x" * 500, "amount": "lots"}).encode()
    _plant(b, topic, [long, b'{"order_id": "o2", "amount": "lots"}'])

    # 70 columns: the headers wrap at spaces, each word whole; partition/offset said once
    listed = _ok(_fp(shop, "dlq", "list", "--bootstrap", b, columns=70))
    words = set(listed.replace("│", " ").replace("┃", " ").split())
    assert {"category", "dead", "letters", "replayed", "not", "replayable", "first"} <= words
    assert {"last", "partition/offset"} <= words, listed
    assert f"{topic}.dlq: 2 dead letters" in " ".join(listed.split())

    shown = _ok(_fp(shop, "dlq", "show", "--bootstrap", b, columns=60))
    assert long.decode() in shown  # whole, on one line, whatever the width
    assert "…" not in shown
    assert "  key:      k0\n" in shown and "  category: invalid field amount\n" in shown
    assert f"  original: {topic}/0/0\n" in shown

    cut = _ok(_fp(shop, "dlq", "show", "--bootstrap", b, "--max-chars", "20"))
    assert f"  payload:  {long.decode()[:20]}… (+{len(long) - 20:,} chars)\n" in cut
    assert '  payload:  {"order_id": "o2", "… (+16 chars)\n' in cut


def test_dlq_replay_with_nothing_to_send_says_why(services: infra.DevServices, shop: Path) -> None:
    b = services.kafka_bootstrap
    topic = _topic(shop)
    ensure_topics(b, {topic: 1, topic + ".dlq": 1})
    out = _ok(_fp(shop, "dlq", "replay", "--bootstrap", b))
    assert out.strip() == f"nothing to replay in {topic}.dlq: no dead letters"
    _plant(b, topic, [b'{"n": 1}', b'{"n": 2}'])
    out = _ok(_fp(shop, "dlq", "replay", "--bootstrap", b, "--reason", "no such reason"))
    assert out.splitlines()[0] == (
        f"nothing to replay in {topic}.dlq: none of its 2 dead letters matches --reason "
        "'no such reason'"
    )
    out = _ok(_fp(shop, "dlq", "replay", "--bootstrap", b))
    assert out.startswith(f"replayed 2 dead letters of {topic}.dlq to {topic} ")
    out = _ok(_fp(shop, "dlq", "replay", "--bootstrap", b))
    assert out.splitlines()[0] == (
        f"nothing to replay in {topic}.dlq: all 2 dead letters were replayed already"
    )
    assert " to -" not in out


def test_dlq_list_of_a_topic_no_view_reads(services: infra.DevServices, shop: Path) -> None:
    b = services.kafka_bootstrap
    topic = _topic(shop)
    other = unique("order")
    said = _refused(_fp(shop, "dlq", "list", "--topic", other, "--bootstrap", b))
    assert said == (
        f"error: no view reads topic '{other}' (the views read: '{topic}'), and {other}.dlq "
        "does not exist"
    )
    _plant(b, other, [b'{"n": 1}'])
    out = _ok(_fp(shop, "dlq", "list", "--topic", other, "--bootstrap", b))
    assert out.splitlines()[0] == (
        f"note: no view reads topic '{other}' (the views read: '{topic}'); its dead-letter "
        "topic exists:"
    )
    assert f"{other}.dlq: 1 dead letters" in out
    # a topic a view reads, without dead letters yet: as before
    out = _ok(_fp(shop, "dlq", "list", "--topic", topic, "--bootstrap", b))
    assert out.strip() == f"{topic}.dlq: no dead letters (the topic does not exist yet)"
