"""Crashes and outages: the online state after chaos equals an uninterrupted run, byte for byte."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from featurepipe import load_definitions
from featurepipe.dev import infra
from featurepipe.dev.datagen import generate_transactions
from featurepipe.online.redis_conn import connect
from featurepipe.stream.produce import ensure_topics, produce_frame
from featurepipe.stream.worker import StreamWorker, WorkerConfig
from tests.services import services, unique

ROOT = Path(__file__).resolve().parents[1]
EVENTS = 200_000
__all__ = ["services"]


@dataclass
class Streamed:
    topic: str
    reference_prefix: str
    reference: dict[bytes, tuple[bytes, bytes]]


def _snapshot(client: redis.Redis, prefix: str) -> dict[bytes, tuple[bytes, bytes]]:
    out = {}
    for key in client.scan_iter(match=f"{prefix}:{{*}}:*", count=5000):
        s, f = client.hmget(key, ["s", "f"])
        out[key[len(prefix) :]] = (s, f)
    return out


def _consumed(client: redis.Redis, prefix: str) -> int:
    # documented value: <next offset>[:<digest of the message before it>]
    raw = client.hgetall(f"{prefix}:offsets:{prefix}").values()
    return sum(int(v.split(b":")[0]) for v in raw)


def _runner(s: infra.DevServices, redis_url: str, topic: str, prefix: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.stream_runner", s.kafka_bootstrap, redis_url, topic, prefix, "4"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.fixture(scope="module")
def streamed(services: infra.DevServices) -> Iterator[Streamed]:
    log = generate_transactions(EVENTS, users=3_000, seed=31)
    topic = unique("tx-chaos")
    ensure_topics(services.kafka_bootstrap, {topic: 4})
    produce_frame(log, topic, services.kafka_bootstrap, "user_id")
    prefix = unique("fp-ref")
    client = connect(services.redis_url)
    StreamWorker(
        load_definitions(ROOT / "feature_defs"),
        WorkerConfig(bootstrap=services.kafka_bootstrap, group_id=prefix, prefix=prefix,
                     idle_exit_s=4, max_batch=2000),
        client, topics={"transactions": topic},
    ).run()
    assert _consumed(client, prefix) == EVENTS
    yield Streamed(topic, prefix, _snapshot(client, prefix))
    for key in client.scan_iter(match=f"{prefix}:*", count=5000):
        client.delete(key)


@pytest.mark.usefixtures("kafka_client")
def test_kill_9_at_random_points_loses_and_doubles_nothing(
    services: infra.DevServices, streamed: Streamed
) -> None:
    client = connect(services.redis_url)
    prefix = unique("fp-kill")
    rng = random.Random(7)
    targets = sorted(rng.sample(range(10_000, EVENTS - 10_000), 5))
    kills = 0
    for target in targets:
        proc = _runner(services, services.redis_url, streamed.topic, prefix)
        deadline = time.monotonic() + 120
        while _consumed(client, prefix) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 5
    final = _runner(services, services.redis_url, streamed.topic, prefix)
    out, _ = final.communicate(timeout=300)
    assert final.returncode == 0, out
    assert _consumed(client, prefix) == EVENTS
    assert _snapshot(client, prefix) == streamed.reference


def test_redis_paused_for_10s_mid_stream(services: infra.DevServices, streamed: Streamed, tmp_path: Path) -> None:
    port = infra._free_port()
    server = infra.start_redis(port, tmp_path / "valkey.log")
    url = f"redis://127.0.0.1:{port}/0"
    try:
        assert infra._wait_port(port, 10)
        client = connect(url)
        prefix = unique("fp-pause")
        proc = _runner(services, url, streamed.topic, prefix)
        deadline = time.monotonic() + 120
        while _consumed(client, prefix) < EVENTS // 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(server.pid, signal.SIGSTOP)  # the store stops answering
        time.sleep(10)
        assert proc.poll() is None  # the worker waits; it does not die
        os.kill(server.pid, signal.SIGCONT)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        assert _consumed(client, prefix) == EVENTS
        assert _snapshot(client, prefix) == streamed.reference
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.kill()
        server.wait()
