"""Operational faults on the real broker and Redis: every outcome is exactly the batch result,
or a clear refusal — never a plausible wrong value served as found.

Each test streams a generated log through a real Kafka-protocol broker (Tansu) and a real
valkey-server, breaks something an operator can meet (Redis emptied with the worker running or
stopped, Redis rolled back to an older snapshot, the broker reset, an empty materialize input),
and checks lookups against the batch plan (the independent, vectorized path) over the same
events, bit for bit.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis

from featurepipe import load_definitions
from featurepipe.dev import infra
from featurepipe.dev.datagen import generate_transactions
from featurepipe.errors import FeaturepipeError
from featurepipe.online.errors import OnlineStoreError
from featurepipe.online.lookup import OnlineReader
from featurepipe.online.materialize import materialize
from featurepipe.online.redis_conn import connect
from featurepipe.online.state_store import (
    StateStore,
    StoreIdentityError,
    StoreNotInitializedError,
)
from featurepipe.stream.errors import StreamError
from featurepipe.stream.produce import ensure_topics, produce_frame
from featurepipe.stream.recover import recover
from featurepipe.stream.worker import StreamWorker, WorkerConfig
from tests.online_check import online_vs_batch
from tests.services import services, unique

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["services"]
VIEW = "user_spend"


def _defs() -> Any:
    return load_definitions(ROOT / "feature_defs")


def _worker(
    bootstrap: str, client: redis.Redis, topic: str, prefix: str, **config: Any
) -> StreamWorker:
    settings: dict[str, Any] = {"idle_exit_s": 3, "max_batch": 500, "verify_timeout_s": 4}
    settings.update(config)
    return StreamWorker(
        _defs(),
        WorkerConfig(bootstrap=bootstrap, group_id=prefix, prefix=prefix, **settings),
        client,
        views=[VIEW],
        topics={"transactions": topic},
    )


def _mismatches(client: redis.Redis, prefix: str, log: pl.DataFrame) -> int:
    """Online lookups of every entity, at its newest event and a day later, vs the batch plan
    over ``log``, bit for bit. Raises whatever the lookup raises."""
    return online_vs_batch(
        _defs().view(VIEW), client, prefix, log, offsets=(1, 86_400_000_000), require_found=True
    )


def _log(n: int, seed: int) -> pl.DataFrame:
    return generate_transactions(n, users=200, seed=seed)


def _cutover(log: pl.DataFrame) -> Any:
    return log["event_time"].sort()[log.height // 2]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, int, Path]]:
    """A valkey-server of this test's own, so it can be restarted empty."""
    port = infra._free_port()
    proc = infra.start_redis(port, tmp_path / "valkey.log")
    assert infra._wait_port(port, 10)
    state = {"proc": proc}
    yield f"redis://127.0.0.1:{port}/0", port, tmp_path
    p = state["proc"]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()


def _restart_empty(port: int, workdir: Path) -> None:
    """Kill the valkey-server on ``port`` and start an empty one there (no persistence).

    The old server must be gone (process and listening socket) before the new one starts:
    else the new one cannot bind, the port still answers for a moment, and the next
    connection is reset. The replacement is stopped when the test session ends."""
    killed = []
    for line in os.popen(f"ss -ltnp 'sport = :{port}'").read().splitlines():
        if "pid=" in line:
            pid = int(line.split("pid=")[1].split(",")[0])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        any(_alive(pid) for pid in killed) or _listening(port)
    ):
        time.sleep(0.02)
    proc = infra.start_redis(port, workdir / "valkey-2.log")
    atexit.register(_stop, proc)
    assert infra._wait_port(port, 10)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, already dead, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _listening(port: int) -> bool:
    return bool(os.popen(f"ss -ltn 'sport = :{port}'").read().splitlines()[1:])


def _stop(proc: Any) -> None:
    proc.kill()
    proc.wait()


def test_lookup_on_a_store_never_written_raises(services: infra.DevServices) -> None:
    client = connect(services.redis_url)
    reader = OnlineReader(client, [_defs().view(VIEW)], unique("fp-empty"))
    with pytest.raises(StoreNotInitializedError, match="holds no generation"):
        reader.read(["u1"], {VIEW: ["txn_count_1h"]})


@pytest.mark.usefixtures("kafka_client")
def test_redis_emptied_under_a_running_worker_stops_it_and_recover_restores(
    services: infra.DevServices, tmp_path: Path
) -> None:
    log = _log(6_000, seed=41)
    parquet = tmp_path / "tx.parquet"
    log.write_parquet(parquet)
    topic, prefix = unique("tx-empty"), unique("fp-empty")
    ensure_topics(services.kafka_bootstrap, {topic: 2})
    produce_frame(log, topic, services.kafka_bootstrap, "user_id")
    client = connect(services.redis_url)
    view = _defs().view(VIEW)
    until = _cutover(log)
    materialize(view, until, client, path=parquet, prefix=prefix)

    worker = _worker(services.kafka_bootstrap, client, topic, prefix, max_batch=200)
    errors: list[BaseException] = []
    flushed = threading.Event()

    def run() -> None:
        try:
            worker.run()
        except BaseException as e:
            errors.append(e)

    original = worker.process

    def slow_process(polled: Any) -> None:  # the store is emptied after the first batches
        original(polled)
        if worker.counters.batches == 3:
            StateStore(client, prefix).clear()  # what a restart without persistence leaves
            flushed.set()

    worker.process = slow_process  # type: ignore[method-assign]
    t = threading.Thread(target=run)
    t.start()
    t.join(120)
    assert flushed.is_set()
    assert errors and isinstance(errors[0], StoreIdentityError), errors
    assert "holds no generation" in str(errors[0])
    with pytest.raises(StoreNotInitializedError):  # readers refuse too: no defaults as found
        _mismatches(client, prefix, log)

    recover(
        [view], until, client, services.kafka_bootstrap, group=prefix, prefix=prefix,
        topics={"transactions": topic}, paths={VIEW: parquet},
    )
    _worker(services.kafka_bootstrap, client, topic, prefix).run()
    assert _mismatches(client, prefix, log) == 0


@pytest.mark.usefixtures("kafka_client")
def test_redis_restarted_empty_with_the_worker_stopped_is_refused_then_recovered(
    services: infra.DevServices, private_redis: tuple[str, int, Path]
) -> None:
    url, port, workdir = private_redis
    log = _log(5_000, seed=42)
    parquet = workdir / "tx.parquet"
    log.write_parquet(parquet)
    topic, prefix = unique("tx-cold"), unique("fp-cold")
    ensure_topics(services.kafka_bootstrap, {topic: 2})
    produce_frame(log, topic, services.kafka_bootstrap, "user_id")
    client = connect(url)
    _worker(services.kafka_bootstrap, client, topic, prefix).run()
    assert _mismatches(client, prefix, log) == 0

    client.close()
    _restart_empty(port, workdir)
    client = connect(url)
    with pytest.raises(StoreNotInitializedError):
        _mismatches(client, prefix, log)
    # a restarted worker would rebuild from whatever the topic holds and call it complete
    with pytest.raises(StreamError, match="emptied or lost"):
        _worker(services.kafka_bootstrap, client, topic, prefix).run()

    view = _defs().view(VIEW)
    until = _cutover(log)
    recover(
        [view], until, client, services.kafka_bootstrap, group=prefix, prefix=prefix,
        topics={"transactions": topic}, paths={VIEW: parquet},
    )
    _worker(services.kafka_bootstrap, client, topic, prefix).run()
    assert _mismatches(client, prefix, log) == 0


def _snapshot(client: redis.Redis, prefix: str) -> dict[bytes, bytes]:
    return {k: client.dump(k) for k in client.scan_iter(match=f"{prefix}:*", count=1000)}


def _restore(client: redis.Redis, prefix: str, snap: dict[bytes, bytes]) -> None:
    for k in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(k)
    for k, v in snap.items():
        client.restore(k, 0, v)


@pytest.mark.usefixtures("kafka_client")
def test_redis_rolled_back_to_an_older_snapshot_resumes_exactly(
    services: infra.DevServices,
) -> None:
    log = _log(6_000, seed=43)
    topic, prefix = unique("tx-rollback"), unique("fp-rollback")
    ensure_topics(services.kafka_bootstrap, {topic: 3})
    produce_frame(log, topic, services.kafka_bootstrap, "user_id")
    client = connect(services.redis_url)
    _worker(services.kafka_bootstrap, client, topic, prefix, max_events=2_500).run()
    older = _snapshot(client, prefix)  # a lagging replica's view of the store
    _worker(services.kafka_bootstrap, client, topic, prefix).run()
    assert _mismatches(client, prefix, log) == 0

    _restore(client, prefix, older)  # the replica is promoted: states and positions roll back
    _worker(services.kafka_bootstrap, client, topic, prefix).run()
    assert _mismatches(client, prefix, log) == 0  # re-read from the snapshot's positions


@pytest.mark.usefixtures("kafka_client")
def test_rolled_back_positions_missing_a_partition_are_refused(
    services: infra.DevServices,
) -> None:
    log = _log(3_000, seed=44)
    topic, prefix = unique("tx-partial"), unique("fp-partial")
    ensure_topics(services.kafka_bootstrap, {topic: 3})
    produce_frame(log, topic, services.kafka_bootstrap, "user_id")
    client = connect(services.redis_url)
    _worker(services.kafka_bootstrap, client, topic, prefix).run()
    # an older snapshot in which one partition's position had not been written yet
    client.hdel(f"{prefix}:offsets:{prefix}", f"{topic}:1")
    with pytest.raises(StreamError, match=r"none for .*\[1\]"):
        _worker(services.kafka_bootstrap, client, topic, prefix).run()


@pytest.mark.usefixtures("kafka_client")
def test_broker_reset_is_detected_and_recover_restores(tmp_path: Path) -> None:
    port = infra._free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = infra.start_broker(port, tmp_path / "broker.log")
    rport = infra._free_port()
    store_proc = infra.start_redis(rport, tmp_path / "valkey.log")
    try:
        assert infra._wait_port(port, 15) and infra._wait_port(rport, 10)
        client = connect(f"redis://127.0.0.1:{rport}/0")
        log = _log(6_000, seed=45)
        old, new = log.head(4_000), log.tail(2_000)  # new: produced after the reset
        topic, prefix = unique("tx-reset"), unique("fp-reset")
        ensure_topics(bootstrap, {topic: 2})
        produce_frame(old, topic, bootstrap, "user_id")
        _worker(bootstrap, client, topic, prefix).run()
        assert _mismatches(client, prefix, old) == 0

        os.kill(broker.pid, signal.SIGKILL)  # in-memory broker: the topic and offsets are gone
        broker.wait()
        broker = infra.start_broker(port, tmp_path / "broker-2.log")
        assert infra._wait_port(port, 15)
        ensure_topics(bootstrap, {topic: 2})
        produce_frame(new, topic, bootstrap, "user_id")  # offsets restart at 0
        with pytest.raises(StreamError, match="recreated or the broker reset"):
            _worker(bootstrap, client, topic, prefix).run()

        # recover: Parquet holds every event before the cut-over, the new topic the rest
        parquet = tmp_path / "tx.parquet"
        old.write_parquet(parquet)
        until = new["event_time"].min()
        assert old["event_time"].max() < until  # the generated log is in time order
        view = _defs().view(VIEW)
        recover(
            [view], until, client, bootstrap, group=prefix, prefix=prefix,
            topics={"transactions": topic}, paths={VIEW: parquet},
        )
        _worker(bootstrap, client, topic, prefix).run()
        assert _mismatches(client, prefix, log) == 0
    finally:
        for p in (broker, store_proc):
            os.kill(p.pid, signal.SIGKILL)
            p.wait()


def test_materialize_refuses_empty_or_fully_quarantined_input(
    services: infra.DevServices, tmp_path: Path
) -> None:
    log = _log(2_000, seed=46)
    parquet = tmp_path / "tx.parquet"
    log.write_parquet(parquet)
    client = connect(services.redis_url)
    prefix = unique("fp-refuse")
    view = _defs().view(VIEW)
    until = log["event_time"].max() + timedelta(seconds=1)
    materialize(view, until, client, path=parquet, prefix=prefix)
    before = _snapshot(client, prefix)

    empty = tmp_path / "empty.parquet"
    log.head(0).write_parquet(empty)
    broken = tmp_path / "broken.parquet"  # every row breaks the contract: no entity key type
    log.with_columns(pl.lit("not a number").alias("amount")).write_parquet(broken)
    for path in (empty, broken):
        with pytest.raises(OnlineStoreError, match="refusing to replace"):
            materialize(view, until, client, path=path, prefix=prefix)
        assert _snapshot(client, prefix) == before  # nothing changed, not even the generation
    assert _mismatches(client, prefix, log) == 0
    # the documented override replaces the states by nothing
    materialize(view, until, client, path=empty, prefix=prefix, allow_empty=True)
    assert not any(b"{" in k for k in _snapshot(client, prefix))


def test_errors_share_the_root_type() -> None:
    for e in (StoreIdentityError, StoreNotInitializedError, StreamError, OnlineStoreError):
        assert issubclass(e, FeaturepipeError)
