"""Poison messages, corrupt or oversized states and unkeyed messages, on the real broker and Redis.

None of them stops a partition or the worker: the message goes to ``<topic>.dlq`` (payload cut
to what the producer accepts, the original size and position in headers), an entity whose state
cannot be continued is quarantined (its lookups raise ``UnservableEntityError``), and every other
entity ends equal to the batch plan over the events that should count, computed independently.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from kafka.future import Future

from featurepipe import load_definitions
from featurepipe.dev import infra
from featurepipe.dev.datagen import generate_transactions
from featurepipe.online.lookup import OnlineReader, UnservableEntityError
from featurepipe.online.redis_conn import connect
from featurepipe.online.state_store import MAX_STATE_BYTES, StateStore, StateWrite
from featurepipe.stream import dead_letters
from featurepipe.stream.dead_letters import (
    INGEST_ERROR,
    KEY_MISMATCH,
    NOT_KEYED,
    QUARANTINED,
    STATE_TOO_LARGE,
    UNEXPECTED,
    DeadLetter,
    DeadLetterPublisher,
)
from featurepipe.stream.errors import StreamError
from featurepipe.stream.produce import encode_event, ensure_topics
from featurepipe.stream.retry import Backoff
from featurepipe.stream.worker import StreamWorker, WorkerConfig
from tests.online_check import online_vs_batch
from tests.services import services, unique

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["services"]
MiB = 1 << 20


def _defs() -> Any:
    return load_definitions(ROOT / "feature_defs")


def _rows(df: pl.DataFrame) -> list[dict[str, Any]]:
    return df.with_columns(
        pl.col("event_time").dt.to_string("%Y-%m-%dT%H:%M:%S%.6f+00:00")
    ).to_dicts()


def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    """In order, each message waited for: a big one is not split from its neighbours."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=64 * MiB, linger_ms=5)
    try:
        for key, value in messages:
            producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()


def _dead_letters(bootstrap: str, topic: str, n: int) -> list[Any]:
    """Every message of the dead-letter topic, by offset. Read again from the beginning with a
    fresh consumer if a pass comes up short: under load the embedded broker has been seen to
    answer a fetch from offset 0 with later batches only."""
    by_offset: dict[int, Any] = {}
    for _ in range(3):
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            max_partition_fetch_bytes=16 * MiB,
            fetch_max_bytes=64 * MiB,
        )
        tp = TopicPartition(topic + ".dlq", 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + 30
        while len(by_offset) < n and time.monotonic() < deadline:
            for msgs in consumer.poll(timeout_ms=1000).values():
                by_offset.update((m.offset, m) for m in msgs)
        # nothing more than expected
        for msgs in consumer.poll(timeout_ms=1000).values():
            by_offset.update((m.offset, m) for m in msgs)
        consumer.close()
        if len(by_offset) >= n:
            break
    return [by_offset[o] for o in sorted(by_offset)]


def _headers(m: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in m.headers}


def _mismatches(
    defs: Any,
    client: Any,
    prefix: str,
    good: pl.DataFrame,
    skip: set[str] = frozenset(),  # type: ignore[assignment]
) -> int:
    """Online values at several times per entity vs the batch plan over ``good``."""
    return online_vs_batch(
        defs.view("user_spend"), client, prefix, good, skip=skip, require_found=True
    )


def _worker(
    defs: Any, bootstrap: str, client: Any, topic: str, prefix: str, **kw: Any
) -> StreamWorker:
    kw.setdefault("idle_exit_s", 3)
    cfg = WorkerConfig(bootstrap=bootstrap, group_id=prefix, prefix=prefix, **kw)
    return StreamWorker(defs, cfg, client, topics={"transactions": topic})


def _stored_messages(client: Any, prefix: str) -> int:
    return sum(StateStore(client, prefix).read_offsets(prefix).values())


@pytest.mark.usefixtures("kafka_client")
def test_poison_messages_never_stop_a_partition(services: infra.DevServices) -> None:
    """7 MiB and 20 MiB messages (more than the dead-letter producer accepts), an event the
    evaluator raises on, an event the parser raises on, a tombstone and a 100 KB key: each is
    dead-lettered between good neighbours, which are applied exactly once."""
    defs = _defs()
    good = generate_transactions(3_000, users=60, seed=51)
    rows = _rows(good)
    topic, prefix = unique("tx-poison"), unique("fp-poison")
    ensure_topics(services.kafka_bootstrap, {topic: 2, topic + ".dlq": 1})
    big7 = b'{"user_id": "u1", "pad": "' + b"x" * (7 * MiB) + b'"}'
    big20 = b"y" * (20 * MiB)
    boom = dict(rows[0], transaction_id="boom-1")
    weird = dict(rows[1], transaction_id="weird-1")
    poison: list[tuple[bytes | None, bytes | None]] = [
        (b"u1", big7),
        (b"u2", big20),
        (str(boom["user_id"]).encode(), encode_event(boom)),
        (str(weird["user_id"]).encode(), encode_event(weird)),
        (b"u3", None),  # a tombstone
        (b"k" * 100_000, encode_event(rows[2])),  # a key that is not the entity, and huge
    ]
    messages: list[tuple[bytes | None, bytes | None]] = []
    step = len(rows) // (len(poison) + 1)
    for i, r in enumerate(rows):
        messages.append((str(r["user_id"]).encode(), encode_event(r)))
        if i % step == step - 1 and poison:
            messages.append(poison.pop(0))
    assert not poison
    _produce(services.kafka_bootstrap, topic, messages)

    client = connect(services.redis_url)
    worker = _worker(defs, services.kafka_bootstrap, client, topic, prefix, max_batch=400)
    program = worker.plans[topic].views[0].program
    ingest, parse = program.ingest, worker.plans[topic].validator.parse

    def failing_ingest(state: Any, event: Any, seq: int) -> None:
        if event["transaction_id"].startswith("boom"):
            raise ArithmeticError("boom")
        ingest(state, event, seq)

    def failing_parse(raw: bytes | None) -> dict[str, Any]:
        event = parse(raw)
        if event["transaction_id"].startswith("weird"):
            raise RecursionError("deep")
        return event

    program.ingest = failing_ingest  # type: ignore[method-assign]
    worker.plans[topic].validator.parse = failing_parse  # type: ignore[method-assign]
    c = worker.run()

    assert c.events == len(messages)
    assert c.valid == good.height and c.invalid == 6
    assert c.reasons == {
        "payload too large": 2,
        INGEST_ERROR: 1,
        UNEXPECTED: 1,
        "empty message": 1,
        KEY_MISMATCH: 1,
    }
    assert _stored_messages(client, prefix) == len(messages)  # both partitions advanced to the end
    dead = _dead_letters(services.kafka_bootstrap, topic, 6)
    assert len(dead) == 6
    by_size = {int(_headers(m)["featurepipe-original-size"]): m for m in dead}
    for size, original in ((len(big7), big7), (len(big20), big20)):
        m = by_size[size]
        assert 512 * 1024 < len(m.value) < MiB  # cut to what the producer accepts
        assert original.startswith(m.value)
        assert _headers(m)["featurepipe-category"] == "payload too large"
    by_category = {_headers(m)["featurepipe-category"]: m for m in dead}
    assert by_category[INGEST_ERROR].value == encode_event(boom)  # small ones whole
    assert "ArithmeticError: boom" in _headers(by_category[INGEST_ERROR])["featurepipe-reason"]
    assert by_category[UNEXPECTED].value == encode_event(weird)
    assert _headers(by_category["empty message"])["featurepipe-original-size"] == "-1"
    mismatch = by_category[KEY_MISMATCH]
    assert mismatch.key == b"k" * 1024
    assert _headers(mismatch)["featurepipe-original-key-size"] == "100000"
    for m in dead:  # where the original is
        src_topic, partition, offset = _headers(m)["featurepipe-source"].rsplit("/", 2)
        assert src_topic == topic and int(partition) in (0, 1) and int(offset) >= 0
    assert _mismatches(defs, client, prefix, good) == 0
    StateStore(client, prefix).clear()


class _FakeProducer:
    """Stands for a broker whose message.max.bytes is 10 KB (the embedded broker has none)."""

    def __init__(self, broker_max: int, fail_other: int = 0) -> None:
        self.config = {"max_request_size": MiB}
        self.broker_max = broker_max
        self.fail_other = fail_other
        self.sent: list[tuple[bytes | None, bytes, dict[str, bytes]]] = []

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Any) -> Future:
        f = Future()
        if len(value) > self.config["max_request_size"]:
            raise MessageSizeTooLargeError("producer limit")
        if len(value) > self.broker_max:
            f.failure(MessageSizeTooLargeError("broker limit"))
        elif self.fail_other:
            self.fail_other -= 1
            f.failure(KafkaTimeoutError("broker away"))
        else:
            self.sent.append((key, value, dict(headers)))
            f.success(None)
        return f

    def flush(self, timeout: float | None = None) -> None:
        pass


class _Msg:
    def __init__(self, value: bytes | None, offset: int = 5) -> None:
        self.key, self.value, self.partition, self.offset = b"u1", value, 0, offset


def test_dead_letters_cut_further_when_the_broker_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dead_letters.time, "sleep", lambda s: None)
    producer = _FakeProducer(broker_max=10_000)
    publisher = DeadLetterPublisher(producer, Backoff(threading.Event()))  # type: ignore[arg-type]
    value = bytes(range(256)) * 20_000  # 5 MB
    publisher.publish([DeadLetter("t", _Msg(value), "payload too large: ...", "payload too large")])
    ((key, sent, headers),) = producer.sent
    assert len(sent) <= 10_000 and value.startswith(sent) and key == b"u1"
    assert headers["featurepipe-original-size"] == str(len(value)).encode()
    assert headers["featurepipe-source"] == b"t/0/5"
    # a failure other than size is sent again, whole
    producer = _FakeProducer(broker_max=MiB, fail_other=2)
    publisher = DeadLetterPublisher(producer, Backoff(threading.Event()))  # type: ignore[arg-type]
    publisher.publish([DeadLetter("t", _Msg(b"abc"), "x", "invalid event")])
    assert [v for _, v, _ in producer.sent] == [b"abc"]
    # one that never goes through stops the batch before its commit
    producer = _FakeProducer(broker_max=MiB, fail_other=100)
    publisher = DeadLetterPublisher(producer, Backoff(threading.Event()))  # type: ignore[arg-type]
    with pytest.raises(StreamError, match="could not publish 1 dead letters"):
        publisher.publish([DeadLetter("t", _Msg(b"abc"), "x", "invalid event")])


@pytest.mark.usefixtures("kafka_client")
def test_corrupt_states_quarantine_their_entity_not_the_worker(
    services: infra.DevServices,
) -> None:
    """Two entities' stored states are corrupted between two runs: one is garbage, one is
    larger than any state a worker decodes. The worker quarantines both (stored in Redis, a
    metric, their events dead-lettered, their lookups refused) and applies the rest."""
    defs = _defs()
    view = defs.view("user_spend")
    log = generate_transactions(6_000, users=80, seed=52)
    first, second, third = log[:2_000], log[2_000:4_000], log[4_000:]
    topic, prefix = unique("tx-corrupt"), unique("fp-corrupt")
    ensure_topics(services.kafka_bootstrap, {topic: 2, topic + ".dlq": 1})
    client = connect(services.redis_url)

    def stream(part: pl.DataFrame) -> Any:
        _produce(
            services.kafka_bootstrap,
            topic,
            [(str(r["user_id"]).encode(), encode_event(r)) for r in _rows(part)],
        )
        worker = _worker(
            defs, services.kafka_bootstrap, client, topic, prefix, max_events=part.height
        )
        return worker.run()

    c1 = stream(first)
    assert c1.valid == first.height and c1.invalid == 0
    counts = first["user_id"].value_counts().sort("count", descending=True)
    garbage, huge = counts["user_id"][0], counts["user_id"][1]
    assert {garbage, huge} <= set(second["user_id"]) and {garbage, huge} <= set(third["user_id"])
    store = StateStore(client, prefix)
    store.commit(
        "corrupter",
        [
            StateWrite(view, garbage, b"\xc1\x00garbage", view.fingerprint),
            StateWrite(view, huge, b"\x94" + b"\x00" * (MAX_STATE_BYTES + 10), view.fingerprint),
        ],
        {},
        {},
    )

    c2 = stream(second)
    bad = {garbage, huge}
    n_bad = second.filter(pl.col("user_id").is_in(bad)).height
    assert c2.valid == second.height - n_bad and c2.invalid == n_bad
    assert c2.reasons == {QUARANTINED: n_bad}
    assert c2.quarantined == {"undecodable state": 1, STATE_TOO_LARGE: 1}
    stored = store.read_states([(view, garbage), (view, huge)])
    assert all(s is not None and s.state is None for s in stored)
    assert "cannot be decoded" in str(stored[0].quarantine)  # type: ignore[union-attr]
    assert f"{MAX_STATE_BYTES:,}" in str(stored[1].quarantine)  # type: ignore[union-attr]

    # the quarantine survives a restart: found in the store, not counted again
    c3 = stream(third)
    n_bad3 = third.filter(pl.col("user_id").is_in(bad)).height
    assert c3.valid == third.height - n_bad3 and c3.reasons == {QUARANTINED: n_bad3}
    assert c3.quarantined == {}

    dead = _dead_letters(services.kafka_bootstrap, topic, n_bad + n_bad3)
    assert len(dead) == n_bad + n_bad3
    assert {_headers(m)["featurepipe-category"] for m in dead} == {QUARANTINED}
    assert all("quarantined" in _headers(m)["featurepipe-reason"] for m in dead)
    reader = OnlineReader(client, [view], prefix)
    for entity in bad:
        with pytest.raises(UnservableEntityError, match="quarantined"):
            reader.read([entity], {"user_spend": ["txn_count_total"]})
    assert _mismatches(defs, client, prefix, log, skip=bad) == 0
    store.clear()


def test_a_state_over_the_cap_quarantines_only_that_entity(services: infra.DevServices) -> None:
    """A user whose events carry 2 KB country names outgrows MAX_STATE_BYTES (8 MiB: about
    2,000 such events of ``user_spend`` within its 7-day buffer): from the batch that crosses
    the cap on it is quarantined and its events dead-lettered; every other user is exactly
    what the batch plan computes."""
    defs = _defs()
    view = defs.view("user_spend")
    others = generate_transactions(4_000, users=100, days=5, seed=53)
    whale = generate_transactions(4_000, users=1, days=5, seed=54).with_columns(
        pl.lit("whale").alias("user_id"),
        ("w" + pl.col("transaction_id")).alias("transaction_id"),
        pl.format("{}-{}", pl.lit("C" * 2_000), pl.col("transaction_id")).alias("country"),
    )
    log = pl.concat([others, whale]).sort("event_time", maintain_order=True)
    topic, prefix = unique("tx-cap"), unique("fp-cap")
    ensure_topics(services.kafka_bootstrap, {topic: 2, topic + ".dlq": 1})
    _produce(
        services.kafka_bootstrap,
        topic,
        [(str(r["user_id"]).encode(), encode_event(r)) for r in _rows(log)],
    )
    client = connect(services.redis_url)
    worker = _worker(
        defs, services.kafka_bootstrap, client, topic, prefix, max_events=log.height, max_batch=500
    )
    c = worker.run()
    assert c.quarantined == {STATE_TOO_LARGE: 1}
    # the whale's events from the batch that crossed the cap on are dead letters, not applied
    assert c.valid + c.invalid == log.height
    assert 0 < c.invalid <= whale.height - 1_500
    assert set(c.reasons) <= {STATE_TOO_LARGE, QUARANTINED} and c.reasons[STATE_TOO_LARGE] > 0
    (stored,) = StateStore(client, prefix).read_states([(view, "whale")])
    assert (
        stored is not None
        and stored.state is None
        and "allowed per entity" in str(stored.quarantine)
    )
    reader = OnlineReader(client, [view], prefix)
    with pytest.raises(UnservableEntityError, match="allowed per entity"):
        reader.read(["whale"], {"user_spend": ["txn_count_total"]})
    assert _mismatches(defs, client, prefix, others) == 0
    StateStore(client, prefix).clear()


@pytest.mark.usefixtures("kafka_client")
def test_unkeyed_messages_are_dead_lettered_with_two_workers(services: infra.DevServices) -> None:
    """Two workers in one group, four partitions. Part of the events are produced without a key
    (the producer spreads them over partitions, so over both workers): each is dead-lettered as
    "not keyed by entity", and every keyed event is applied exactly once: the online state of
    every entity equals the batch plan over the keyed events alone."""
    defs = _defs()
    log = generate_transactions(4_000, users=120, seed=55)
    unkeyed_users = {f"u{i}" for i in range(0, 120, 7)}  # some entities only unkeyed
    rows = _rows(log)
    keyed_mask = [
        not (r["user_id"] in unkeyed_users or i % 10 == 3)  # and one event in ten of the others
        for i, r in enumerate(rows)
    ]
    keyed = log.filter(pl.Series(keyed_mask))
    topic, prefix = unique("tx-keys"), unique("fp-keys")
    ensure_topics(services.kafka_bootstrap, {topic: 4, topic + ".dlq": 1})
    client = connect(services.redis_url)
    workers = [
        _worker(defs, services.kafka_bootstrap, client, topic, prefix, idle_exit_s=None)
        for _ in range(2)
    ]
    results: list[Any] = [None, None]

    def run(i: int) -> None:
        results[i] = workers[i].run()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # both joined and hold two partitions each
        sizes = [len(w.owned) for w in workers]  # each consumer belongs to its worker's thread
        if sizes == [2, 2]:
            break
        time.sleep(0.2)
    assert sizes == [2, 2], sizes
    _produce(
        services.kafka_bootstrap,
        topic,
        [
            (str(r["user_id"]).encode() if k else None, encode_event(r))
            for r, k in zip(rows, keyed_mask, strict=True)
        ],
    )
    deadline = time.monotonic() + 120
    while _stored_messages(client, prefix) < log.height and time.monotonic() < deadline:
        time.sleep(0.2)
    for w in workers:
        w.request_stop()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    a, b = results
    assert a.events > 0 and b.events > 0  # both workers took part
    n_unkeyed = log.height - keyed.height
    assert a.valid + b.valid == keyed.height
    assert a.invalid + b.invalid == n_unkeyed
    assert Counter(a.reasons) + Counter(b.reasons) == {NOT_KEYED: n_unkeyed}
    dead = _dead_letters(services.kafka_bootstrap, topic, n_unkeyed)
    assert len(dead) == n_unkeyed
    assert all(_headers(m)["featurepipe-reason"].startswith("not keyed by entity") for m in dead)
    assert _stored_messages(client, prefix) == log.height
    # entities only ever produced unkeyed have no state: "not found", never a partial value
    reader = OnlineReader(client, [defs.view("user_spend")], prefix)
    only_unkeyed = sorted(unkeyed_users & set(log["user_id"]))
    assert only_unkeyed
    rows_read = reader.read(only_unkeyed, {"user_spend": ["txn_count_total"]})
    assert all(r["user_spend_found"] is False for r in rows_read)
    assert _mismatches(defs, client, prefix, keyed) == 0
    StateStore(client, prefix).clear()
