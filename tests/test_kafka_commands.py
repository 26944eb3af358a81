"""``featurepipe produce``, ``featurepipe dlq list|show|replay`` and ``featurepipe dev up``'s
port options, as a user runs them (subprocesses), against the embedded broker and store."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from featurepipe import load_definitions
from featurepipe.dev import infra
from featurepipe.ir.timebase import to_epoch_us
from featurepipe.online.lookup import OnlineReader
from featurepipe.online.redis_conn import connect
from featurepipe.stream import dlq
from featurepipe.stream.dead_letters import DeadLetter, DeadLetterPublisher
from featurepipe.stream.produce import ensure_topics, produce_raw
from featurepipe.stream.retry import Backoff
from tests.services import services, unique

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["services"]


def _fp(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "COLUMNS": "250", **(env or {})}  # rich wraps to the terminal width
    r = subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full,
    )
    output = r.stdout + r.stderr
    if args[0] == "stream":
        # the worker logs kafka-python's own messages; kafka-python 3.0 logs a race of its
        # socket handling at close (a read on a socket it already closed) with a traceback
        output = _SOCKET_RACE.sub("", output)
    assert "Traceback" not in output, r.stdout + r.stderr
    return r


_SOCKET_RACE = re.compile(
    r"Traceback \(most recent call last\):\n(?:[ ].*\n)+?"
    r"AttributeError: 'NoneType' object has no attribute '(?:recv|send)'"
)


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _json(r: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(_ok(r))


def _repo(tmp_path: Path, topic: str) -> Path:
    """A project whose one view reads ``topic``."""
    defs = tmp_path / "feature_defs"
    defs.mkdir(parents=True)
    text = (ROOT / "feature_defs" / "fraud.py").read_text()
    assert 'topic="transactions"' in text
    (defs / "fraud.py").write_text(text.replace('topic="transactions"', f'topic="{topic}"'))
    return tmp_path


def _read_topic(bootstrap: str, topic: str, n: int) -> list[Any]:
    """Every message of every partition of ``topic`` (expecting ``n``), by partition and offset:
    polled until ``n`` arrived, then until a poll comes back empty."""
    got: dict[tuple[int, int], Any] = {}
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            for msgs in consumer.poll(timeout_ms=1000).values():
                got.update(((m.partition, m.offset), m) for m in msgs)
        for msgs in consumer.poll(timeout_ms=1000).values():
            got.update(((m.partition, m.offset), m) for m in msgs)
    finally:
        consumer.close()
    return [got[k] for k in sorted(got)]


def _by_id(messages: list[Any]) -> dict[str, tuple[bytes | None, dict[str, Any]]]:
    out = {}
    for m in messages:
        doc = json.loads(m.value)
        out[doc["transaction_id"]] = (m.key, doc)
    return out


def _topics(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def _event(tid: str, user: str, amount: Any, when: str) -> dict[str, Any]:
    return {
        "transaction_id": tid,
        "user_id": user,
        "merchant_id": "m1",
        "amount": amount,
        "country": "US",
        "employment_type": None,
        "channel": "app",
        "event_time": when,
    }


# -- produce ---------------------------------------------------------------------------------
def test_produce_parquet_csv_and_jsonl(services: infra.DevServices, tmp_path: Path) -> None:
    topic = unique("tx-produce")
    repo = _repo(tmp_path / "repo", topic)
    b = services.kafka_bootstrap
    utc = pl.Datetime("us", "UTC")
    frame = pl.DataFrame(
        {
            "transaction_id": ["p1", "p2", "p3", "p4", "p5"],
            "user_id": ["u1", "u2", "u1", "0042", "u3"],
            "merchant_id": ["m1", "m2", "m3", "m4", "m5"],
            "amount": [12.5, None, 3.25, 100.0, 7.0],
            "country": ["US", "GB", None, "FR", "US"],
            "employment_type": ["student", None, "retired", None, None],
            "channel": ["app", "web", "app", "web", "app"],
            "event_time": pl.Series(
                [
                    datetime(2026, 1, 5, 10, 0, tzinfo=UTC),
                    datetime(2026, 1, 5, 10, 30, 0, 250_000, tzinfo=UTC),
                    datetime(2026, 1, 5, 11, 0, tzinfo=UTC),
                    datetime(2026, 1, 5, 12, 0, tzinfo=UTC),
                    datetime(2026, 1, 5, 13, 0, tzinfo=UTC),
                ],
                dtype=utc,
            ),
        }
    )
    frame.write_parquet(repo / "events.parquet")
    out = _ok(
        _fp(repo, "produce", "--events", "events.parquet", "--view", "user_spend", "--bootstrap", b)
    )
    assert f"sent 5 events from events.parquet to topic {topic} (4 partitions" in out
    assert "contract" not in out  # every event is valid
    assert {topic, topic + ".dlq"} <= _topics(b)
    sent = _read_topic(b, topic, 5)
    assert len(sent) == 5
    assert sorted(m.key for m in sent) == [b"0042", b"u1", b"u1", b"u2", b"u3"]
    got = _by_id(sent)
    assert got["p1"] == (
        b"u1",
        {
            "transaction_id": "p1",
            "user_id": "u1",
            "merchant_id": "m1",
            "amount": 12.5,
            "country": "US",
            "employment_type": "student",
            "channel": "app",
            "event_time": "2026-01-05T10:00:00.000000+00:00",
        },
    )
    assert got["p2"][1]["amount"] is None
    assert got["p2"][1]["event_time"] == "2026-01-05T10:30:00.250000+00:00"
    assert got["p4"][0] == b"0042" and got["p4"][1]["user_id"] == "0042"
    # one entity's events are on one partition, in file order
    u1 = [m for m in sent if m.key == b"u1"]
    assert len({m.partition for m in u1}) == 1
    assert [json.loads(m.value)["transaction_id"] for m in u1] == ["p1", "p3"]

    # CSV: timestamps parsed (an offset converted to UTC), a text key that looks like a number
    # stays text, and a row that breaks the contract is sent as it is (and counted)
    (repo / "events.csv").write_text(
        "transaction_id,user_id,merchant_id,amount,country,employment_type,channel,event_time\n"
        "c1,0042,m9,19.99,US,student,app,2026-01-06T10:00:00Z\n"
        "c2,u7,m9,lots,GB,,web,2026-01-06T11:00:00+02:00\n"
        "c3,u7,m8,,FR,retired,app,2026-01-06 12:00:00\n"
    )
    report = _json(
        _fp(
            repo,
            "produce",
            "--events",
            "events.csv",
            "--view",
            "user_spend",
            "--bootstrap",
            b,
            "--json",
        )
    )
    assert report["events"] == 3 and report["failed"] == 0 and report["topic"] == topic
    assert report["partitions"] == 4 and report["format"] == "csv"
    assert report["contract_refused"] == 1
    assert report["contract_examples"] == [{"event": 2, "reason": "amount: not a valid float"}]
    got = _by_id(_read_topic(b, topic, 8))
    assert len(got) == 8
    assert got["c1"] == (
        b"0042",
        {
            "transaction_id": "c1",
            "user_id": "0042",
            "merchant_id": "m9",
            "amount": 19.99,
            "country": "US",
            "employment_type": "student",
            "channel": "app",
            "event_time": "2026-01-06T10:00:00.000000+00:00",
        },
    )
    assert got["c2"][0] == b"u7"
    assert got["c2"][1]["amount"] == "lots"  # sent as written: the worker dead-letters it
    assert got["c2"][1]["event_time"] == "2026-01-06T09:00:00.000000+00:00"
    assert got["c3"][1]["amount"] is None and got["c3"][1]["employment_type"] == "retired"
    assert got["c3"][1]["event_time"] == "2026-01-06T12:00:00.000000+00:00"

    # --strict refuses that file before sending anything (the topic is not even created)
    strict_topic = unique("tx-strict")
    r = _fp(
        repo,
        "produce",
        "--events",
        "events.csv",
        "--view",
        "user_spend",
        "--topic",
        strict_topic,
        "--bootstrap",
        b,
        "--strict",
    )
    assert r.returncode == 2
    assert "--strict: 1 of 3 events in 'events.csv' break the contract" in r.stdout
    assert "event #2: amount: not a valid float" in r.stdout and "nothing sent" in r.stdout
    assert strict_topic not in _topics(b)

    # JSON lines: sent as they are, keyed by their user_id; --limit and --rate
    lines = [
        json.dumps(_event(f"j{i}", f"u{i % 3}", 1.5, "2026-01-07T00:00:00Z")) for i in range(30)
    ]
    (repo / "events.jsonl").write_text("\n".join(lines) + "\n\n")
    jtopic = unique("tx-jsonl")
    report = _json(
        _fp(
            repo,
            "produce",
            "--events",
            "events.jsonl",
            "--topic",
            jtopic,
            "--key",
            "user_id",
            "--limit",
            "20",
            "--rate",
            "16",
            "--bootstrap",
            b,
            "--json",
        )
    )
    assert report["events"] == 20 and report["contract_refused"] is None
    assert report["seconds"] >= 1.2  # 20 events at 16/s
    sent = _read_topic(b, jtopic, 20)
    assert sorted(m.value.decode() for m in sent) == sorted(lines[:20])  # byte for byte
    assert {m.key for m in sent} == {b"u0", b"u1", b"u2"}


def test_produce_refusals_are_one_line(services: infra.DevServices, tmp_path: Path) -> None:
    topic = unique("tx-refuse")
    repo = _repo(tmp_path, topic)
    (repo / "events.txt").write_text("x")
    r = _fp(repo, "produce", "--events", "events.txt", "--view", "user_spend")
    assert r.returncode == 2
    assert "cannot read events from 'events.txt': unknown extension '.txt'" in r.stdout
    assert "Parquet (.parquet, .pq), CSV (.csv), JSON lines (.jsonl, .ndjson)" in r.stdout
    r = _fp(repo, "produce", "--events", "missing.parquet", "--view", "user_spend")
    assert r.returncode == 2 and "event log 'missing.parquet' does not exist" in r.stdout
    pl.DataFrame({"user_id": ["u1"]}).write_parquet(repo / "e.parquet")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    t = time.monotonic()
    r = _fp(
        repo,
        "produce",
        "--events",
        "e.parquet",
        "--view",
        "user_spend",
        "--bootstrap",
        f"127.0.0.1:{closed}",
    )
    assert r.returncode == 2 and f"Kafka broker at 127.0.0.1:{closed} is unreachable" in r.stdout
    assert time.monotonic() - t < 30
    r = _fp(repo, "produce", "--events", "e.parquet", "--view", "nope")
    assert r.returncode == 2 and "no feature view named 'nope'" in r.stdout
    r = _fp(repo, "produce", "--events", "e.parquet", "--topic", "elsewhere")
    assert r.returncode == 2 and "pass --key" in r.stdout


# -- dead letters ----------------------------------------------------------------------------
def test_dlq_list_show_replay(services: infra.DevServices, tmp_path: Path) -> None:
    """Planted dead letters, counted and shown; a replay after the contract changed (the future
    tolerance, which the test controls) is ingested; a second replay sends nothing; a replay of
    letters still broken brings the same dead letters back."""
    topic, prefix = unique("tx-dlq"), unique("fp-dlq")
    repo = _repo(tmp_path, topic)
    b, redis = services.kafka_bootstrap, services.redis_url
    good = pl.DataFrame(
        [_event(f"g{i}", f"u{i % 4}", float(i), f"2026-01-05T{i:02d}:00:00Z") for i in range(12)]
    ).with_columns(pl.col("event_time").str.to_datetime(time_zone="UTC"))
    good.write_parquet(repo / "good.parquet")
    _ok(_fp(repo, "produce", "--events", "good.parquet", "--bootstrap", b, "--partitions", "2"))
    # three events dated 2099 (beyond the default one-day future tolerance), two with an amount
    # that is not a number, as JSON lines; one message without a key
    poison = [_event(f"f{i}", "future", 1.0, "2099-01-01T00:00:00+00:00") for i in range(3)]
    poison += [_event(f"a{i}", "u1", "lots", "2026-01-05T20:00:00+00:00") for i in range(2)]
    (repo / "poison.jsonl").write_text("\n".join(json.dumps(e) for e in poison))
    report = _json(_fp(repo, "produce", "--events", "poison.jsonl", "--bootstrap", b, "--json"))
    assert report["events"] == 5 and report["contract_refused"] == 5
    unkeyed = json.dumps(_event("n1", "u2", 2.0, "2026-01-05T21:00:00+00:00")).encode()
    produce_raw(topic, b, [(None, unkeyed)])

    stream = ("stream", "--bootstrap", b, "--redis-url", redis, "--group", prefix)
    stream += ("--prefix", prefix, "--idle-exit", "3")
    out = _ok(_fp(repo, *stream))
    assert "18 events, 12 valid, 6 to the dead-letter topic" in out

    (listed,) = _json(_fp(repo, "dlq", "list", "--bootstrap", b, "--json"))
    assert listed["topic"] == topic + ".dlq" and listed["letters"] == 6
    counts = {c["category"]: (c["count"], c["replayed"]) for c in listed["categories"]}
    assert counts == {
        "invalid field event_time": (3, 0),
        "invalid field amount": (2, 0),
        "not keyed by entity": (1, 0),
    }
    first_last = {c["category"]: (c["first"], c["last"]) for c in listed["categories"]}
    assert first_last["not keyed by entity"][0] == first_last["not keyed by entity"][1]
    table = _ok(_fp(repo, "dlq", "list", "--view", "user_spend", "--bootstrap", b))
    assert f"{topic}.dlq: 6 dead letters" in table and "invalid field event_time" in table

    shown = _json(_fp(repo, "dlq", "show", "--reason", "AMOUNT", "--bootstrap", b, "--json"))
    assert shown["matched"] == 2 and len(shown["letters"]) == 2
    for letter in shown["letters"]:
        assert letter["category"] == "invalid field amount"
        assert letter["reason"] == "amount: not a valid float"
        assert letter["key"] == "u1" and letter["source"]["topic"] == topic
        assert json.loads(letter["value"])["amount"] == "lots"
        assert letter["replayable"] and not letter["truncated"] and not letter["replayed"]
    assert sorted(json.loads(x["value"])["transaction_id"] for x in shown["letters"]) == [
        "a0",
        "a1",
    ]
    shown = _json(_fp(repo, "dlq", "show", "--limit", "1", "--bootstrap", b, "--json"))
    assert shown["matched"] == 6 and len(shown["letters"]) == 1
    future = _json(
        _fp(repo, "dlq", "show", "--reason", "in the future", "--bootstrap", b, "--json")
    )
    assert future["matched"] == 3
    assert {x["reason"] for x in future["letters"]} == {"event_time: more than 1d in the future"}
    text = _ok(_fp(repo, "dlq", "show", "--reason", "not keyed", "--bootstrap", b))
    assert "(none)" in text and "not keyed by entity" in text and '"n1"' in text

    # the contract is changed (no future limit): replay the letters it refused
    replay = ("dlq", "replay", "--bootstrap", b, "--json")
    r1 = _json(_fp(repo, *replay, "--reason", "invalid field event_time"))
    assert r1["replayed"] == 3 and r1["by_category"] == {"invalid field event_time": 3}
    assert r1["to"] == [topic] and r1["not_matching"] == 3
    r2 = _json(_fp(repo, *replay, "--reason", "invalid field event_time"))
    assert r2["replayed"] == 0 and r2["replayed_before"] == 3
    out = _ok(_fp(repo, *stream, env={"FEATUREPIPE_FUTURE_TOLERANCE": "off"}))
    assert "3 events, 3 valid, 0 to the dead-letter topic" in out
    got = _ok(
        _fp(
            repo,
            "get",
            "--entity",
            "user_id=future",
            "--features",
            "user_spend:txn_count_total",
            "--at",
            "2099-02-01",
            "--redis-url",
            redis,
            "--prefix",
            prefix,
        )
    )
    assert "future" in got and "│ 3 " in got and "True" in got

    # nothing fixed for the others: replayed, they come back as the same dead letters
    r3 = _json(_fp(repo, *replay))
    assert r3["replayed"] == 3 and r3["replayed_before"] == 3
    assert r3["by_category"] == {"invalid field amount": 2, "not keyed by entity": 1}
    r4 = _json(_fp(repo, *replay))
    assert r4["replayed"] == 0 and r4["replayed_before"] == 6
    out = _ok(_fp(repo, *stream))
    assert "3 events, 0 valid, 3 to the dead-letter topic" in out
    (listed,) = _json(_fp(repo, "dlq", "list", "--bootstrap", b, "--json"))
    counts = {c["category"]: (c["count"], c["replayed"]) for c in listed["categories"]}
    assert counts == {
        "invalid field event_time": (3, 3),
        "invalid field amount": (4, 2),
        "not keyed by entity": (2, 1),
    }
    letters = _json(_fp(repo, "dlq", "show", "--limit", "50", "--bootstrap", b, "--json"))
    values = [x["value"] for x in letters["letters"]]
    again = [x for x in letters["letters"] if not x["replayed"]]
    assert len(again) == 3 and all(values.count(x["value"]) == 2 for x in again)


def test_an_interrupted_replay_is_completed_without_duplicates(
    services: infra.DevServices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay that dies after sending 2 of its 5 dead letters (its round begun, not done):
    the next replay sends the other 3 only. A dead letter cut to fit is never replayed."""
    b = services.kafka_bootstrap
    topic = unique("tx-interrupted")
    dq = topic + ".dlq"
    ensure_topics(b, {topic: 1, dq: 1})
    publisher = DeadLetterPublisher(KafkaProducer(bootstrap_servers=b), Backoff(threading.Event()))
    publisher.publish(
        [
            DeadLetter(topic, _Msg(i, b'{"n": %d}' % i), "n: not a valid int", "invalid field n")
            for i in range(5)
        ]
    )
    publisher.close()
    stored = [dlq.Letter.of(r) for r in dlq.TopicReader(b, dq)]
    assert [(x.offset, x.key, x.category, x.source) for x in stored] == [
        (i, b"k%d" % i, "invalid field n", f"{topic}/0/{i}") for i in range(5)
    ]
    real_send = dlq._Sender.send

    def dies_after_two(self: Any, rid: str, letters: list[dlq.Letter]) -> None:
        real_send(self, rid, letters[:2])
        raise dlq.DeadLetterError("connection lost")

    monkeypatch.setattr(dlq._Sender, "send", dies_after_two)
    with pytest.raises(dlq.DeadLetterError, match="connection lost"):
        dlq.replay(b, dq)
    monkeypatch.undo()
    assert len(_read_topic(b, topic, 2)) == 2

    report = _json(_fp(tmp_path, "dlq", "replay", "--topic", topic, "--bootstrap", b, "--json"))
    assert report["replayed"] == 3 and report["completed_interrupted"] == 3
    assert report["replayed_before"] == 5
    sent = _read_topic(b, topic, 5)
    assert len(sent) == 5
    of = sorted(dict(m.headers)["featurepipe-replay-of"].decode() for m in sent)
    assert of == [f"{dq}/0/{i}" for i in range(5)]  # each dead letter once
    assert sorted((m.key, m.value) for m in sent) == [
        (b"k%d" % i, b'{"n": %d}' % i) for i in range(5)
    ]

    # a dead letter whose payload was cut to fit: counted, never sent
    producer = KafkaProducer(bootstrap_servers=b)
    headers = [
        ("featurepipe-reason", b"payload too large: 5,000,000 bytes > 262,144"),
        ("featurepipe-category", b"payload too large"),
        ("featurepipe-source", f"{topic}/0/9".encode()),
        ("featurepipe-original-size", b"5000000"),
    ]
    producer.send(dq, key=b"k9", value=b"x" * 100, headers=headers)
    producer.flush()
    producer.close()
    report = _json(_fp(tmp_path, "dlq", "replay", "--topic", dq, "--bootstrap", b, "--json"))
    assert report["replayed"] == 0 and report["replayed_before"] == 5
    assert report["not_replayable"] == {
        "cut to fit the dead-letter topic: the original is not kept whole": 1
    }
    report = _json(_fp(tmp_path, "dlq", "replay", "--topic", topic, "--bootstrap", b, "--json"))
    assert report["replayed"] == 0 and report["replayed_before"] == 6
    assert report["not_replayable"] == {}
    (listed,) = _json(_fp(tmp_path, "dlq", "list", "--topic", topic, "--bootstrap", b, "--json"))
    assert [
        (c["category"], c["count"], c["replayed"], c["not_replayable"])
        for c in listed["categories"]
    ] == [
        ("invalid field n", 5, 5, 0),
        ("payload too large", 1, 0, 1),
    ]
    assert len(_read_topic(b, topic, 5)) == 5


class _Msg:
    """What the publisher reads of a consumed message."""

    def __init__(self, i: int, value: bytes) -> None:
        self.key, self.value, self.partition, self.offset = b"k%d" % i, value, 0, i


# -- dev up ports ----------------------------------------------------------------------------
def test_dev_up_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for option in ("--redis-port", "--kafka-port"):
            r = _fp(tmp_path, "dev", "up", option, str(port))
            assert r.returncode == 2, r.stdout + r.stderr
            assert f"{option} {port}: port {port} on 127.0.0.1 is already in use" in r.stdout
        assert not (tmp_path / ".featurepipe" / "dev.json").exists()
    r = _fp(tmp_path, "dev", "up", "--redis-port", "70000")
    assert r.returncode == 2


def test_dev_up_on_chosen_ports(tmp_path: Path) -> None:
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    kport, rport = ports
    try:
        up = _ok(_fp(tmp_path, "dev", "up", "--kafka-port", str(kport), "--redis-port", str(rport)))
        assert f"127.0.0.1:{kport}" in up and f"127.0.0.1:{rport}" in up
        status = _ok(_fp(tmp_path, "dev", "status"))
        assert f"127.0.0.1:{kport}" in status
        # the same ports again: the running services; other ports: refused, naming them
        _ok(_fp(tmp_path, "dev", "up", "--kafka-port", str(kport)))
        other = _fp(
            tmp_path, "dev", "up", "--kafka-port", str(rport + 1 if rport < 65000 else 1025)
        )
        assert other.returncode == 2 and "already run on other ports" in other.stdout
        assert f"(running on {kport})" in other.stdout
    finally:
        _ok(_fp(tmp_path, "dev", "down"))


def test_produce_keys_a_composite_view_by_its_composite_text(
    services: infra.DevServices, tmp_path: Path
) -> None:
    """A view keyed by (user_id, merchant_id): `produce --view` keys each message by the
    composite text (docs: parts escaped, joined by '|'), from Parquet, CSV (the contract's int
    part read as an int: "007" is 7) and JSON lines; the stream worker then accepts every one
    (no key mismatch dead-lettered)."""
    from featurepipe.stream.worker import StreamWorker, WorkerConfig

    topic = unique("tx-pairs")
    repo = tmp_path / "repo"
    (repo / "feature_defs").mkdir(parents=True)
    (repo / "feature_defs" / "pairs.py").write_text(f'''
from datetime import datetime
from pydantic import BaseModel
import featurepipe as fp

class Tx(BaseModel):
    user_id: str
    merchant_id: int
    amount: float
    event_time: datetime

tx = fp.Source("pair_tx", schema=Tx, timestamp="event_time", stream=fp.KafkaSource(topic="{topic}"))
pair = fp.Entity("user_merchant", key=("user_id", "merchant_id"))

@fp.feature_view(entity=pair, source=tx, lateness="1h")
def pair_spend(t):
    return {{"n": fp.count(), "total": fp.sum(t.amount)}}
''')
    b = services.kafka_bootstrap
    pl.DataFrame(
        {"user_id": ["u1", "u|2", "u1"], "merchant_id": [7, 7, 8], "amount": [1.0, 2.0, 4.0],
         "event_time": [datetime(2026, 1, 5, 10, m, tzinfo=UTC) for m in (0, 1, 2)]},
    ).write_parquet(repo / "events.parquet")  # fmt: skip
    (repo / "events.csv").write_text(
        "user_id,merchant_id,amount,event_time\nu1,007,8.0,2026-01-05T10:03:00Z\n"
    )
    (repo / "events.jsonl").write_text(
        '{"user_id": "u\\\\3", "merchant_id": 9, "amount": 16.0, "event_time": "2026-01-05T10:04:00Z"}\n'
    )
    for name in ("events.parquet", "events.csv", "events.jsonl"):
        _ok(_fp(repo, "produce", "--events", name, "--view", "pair_spend", "--bootstrap", b))
    sent = _read_topic(b, topic, 5)
    # by hand: parts joined by '|', a '|' or '\' inside a str part escaped by a backslash
    assert sorted(m.key for m in sent) == sorted(
        [b"u1|7", b"u\\|2|7", b"u1|8", b"u1|7", b"u\\\\3|9"]
    )
    prefix = unique("fp-pairs")
    defs = load_definitions(repo / "feature_defs")
    client = connect(services.redis_url)
    try:
        counters = StreamWorker(
            defs, WorkerConfig(bootstrap=b, group_id=prefix, prefix=prefix, idle_exit_s=3,
                               max_events=5), client,
        ).run()  # fmt: skip
        assert counters.valid == 5 and counters.invalid == 0
        got = OnlineReader(client, [defs.view("pair_spend")], prefix).read(
            [("u1", 7), ("u|2", 7), ("u1", 8), ("u\\3", 9)], {"pair_spend": ["n", "total"]},
            at_us=to_epoch_us(datetime(2026, 1, 5, 11, tzinfo=UTC)),
        )  # fmt: skip
        assert [(r["n"], r["total"]) for r in got] == [(2, 9.0), (1, 2.0), (1, 4.0), (1, 16.0)]
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
