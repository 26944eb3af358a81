"""Elastic stream workers: workers join and leave one consumer group while events flow, and the
online store ends byte-identical to a single uninterrupted worker's.

One log of generated transactions is produced in chunks, at a steady rate, to a topic of six
partitions. Two runs read that same topic, so every event has the same offset (its ``seq`` in
the state) in both:

* the reference: one worker, in this process, from the first event to the last, into prefix A;
* the elastic run: worker processes in one group, into prefix B, started and stopped while the
  producer is still sending (join, graceful leave with SIGTERM, crash with SIGKILL). After each
  step the test waits until the group has settled (every live worker announced a new
  assignment after the step, together covering every partition once) and has committed every
  event sent so far. Each step gets its own segment of the log, released just before it, so
  every join, leave and crash happens while events are being produced and applied.

The last part of the log is held back until the last step has settled, so the surviving
workers apply events after taking over the partitions of the crashed one (from the positions
it last committed: whatever it had read beyond them is read again). Then the group's stored
positions must equal the single worker's (every event committed once, the sum is the log's
size), and every entity's stored state bytes and fingerprint in B must equal A's; B is also
checked against the batch plan at several query times per entity.

Run as a module, this file is the worker process: ``python -m tests.test_elastic_workers
BOOTSTRAP REDIS_URL TOPIC PREFIX IDLE_S`` (the group is the prefix; assignments are logged
with their wall-clock time, the final counters printed as JSON).
"""

from __future__ import annotations

import ast
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis

from featurepipe import load_definitions
from featurepipe.dev import infra
from featurepipe.dev.datagen import generate_transactions
from featurepipe.online.layout import decode_entity
from featurepipe.online.redis_conn import connect
from featurepipe.online.state_store import StateStore, StoredState
from featurepipe.stream.produce import ensure_topics, produce_frame
from featurepipe.stream.worker import StreamWorker, WorkerConfig
from tests.online_check import online_vs_batch
from tests.services import services, unique

ROOT = Path(__file__).resolve().parents[1]
VIEW = "user_spend"
PARTITIONS = 6
MAX_BATCH = 2_000  # small batches: many commits, so a crash lands between two of them
# longer than a rebalance can take: a worker counts the time it spends rejoining the group as
# idle, and with 4 s one left the group mid-stream during a rebalance on the embedded broker
IDLE_EXIT_S = 10.0
SETTLE_TIMEOUT_S = 60.0
ASSIGNED = "assigned "
__all__ = ["services"]


# -- the worker process ----------------------------------------------------------------------
def main() -> None:
    bootstrap, redis_url, topic, prefix, idle = sys.argv[1:6]
    logging.basicConfig(
        stream=sys.stdout,
        # FEATUREPIPE_DEBUG_GROUP=1: the Kafka client's group membership and fetches too
        level=logging.INFO if os.environ.get("FEATUREPIPE_DEBUG_GROUP") else logging.WARNING,
        format="%(created).3f %(name)s: %(message)s",
    )
    logging.getLogger("featurepipe.stream").setLevel(logging.INFO)  # assignments
    worker = StreamWorker(
        load_definitions(ROOT / "feature_defs"),
        WorkerConfig(
            bootstrap=bootstrap,
            group_id=prefix,
            prefix=prefix,
            idle_exit_s=float(idle),
            max_batch=MAX_BATCH,
        ),
        connect(redis_url, timeout=2.0),
        topics={"transactions": topic},
    )
    worker.install_signal_handlers()
    c = worker.run()
    counters = {"events": c.events, "valid": c.valid, "invalid": c.invalid, "batches": c.batches}
    print("counters " + json.dumps(counters), flush=True)


# -- the test's side -------------------------------------------------------------------------
@dataclass
class Worker:
    """A worker process; its output goes to a file, read for assignments and counters."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def assignments(self) -> list[tuple[float, frozenset[int]]]:
        """(wall time, partitions) of every assignment the worker logged, oldest first."""
        out = []
        for line in self.lines():
            at, _, rest = line.partition(" ")
            _, sep, listed = rest.partition(ASSIGNED)
            if sep and rest.startswith("featurepipe.stream"):
                out.append((float(at), frozenset(p for _, p in ast.literal_eval(listed))))
        return out

    def counters(self) -> dict[str, int]:
        for line in self.lines():
            if line.startswith("counters "):
                return dict(json.loads(line.removeprefix("counters ")))
        raise AssertionError(f"{self.name} printed no counters:\n{self.log.read_text()}")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


class Feeder:
    """Produces the log from a thread in chunks at a steady rate, but never past what the test
    has released (``release``): one segment per step of the group, sent while the step runs,
    then the tail once the group's last change has settled."""

    def __init__(self, log: pl.DataFrame, topic: str, bootstrap: str, chunk: int, pause_s: float) -> None:
        self.log, self.topic, self.bootstrap = log, topic, bootstrap
        self.chunk, self.pause_s = chunk, pause_s
        self.sent = 0
        self.allowed = 0
        self.cancelled = False
        self.error: BaseException | None = None
        self.more = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def release(self, upto: int) -> None:
        with self.more:
            self.allowed = upto
            self.more.notify()

    def cancel(self) -> None:
        with self.more:
            self.cancelled = True
            self.more.notify()

    def _run(self) -> None:
        try:
            while self.sent < self.log.height:
                with self.more:
                    self.more.wait_for(lambda: self.cancelled or self.allowed > self.sent)
                    if self.cancelled:
                        return
                n = min(self.chunk, self.allowed - self.sent)
                self.sent += produce_frame(
                    self.log.slice(self.sent, n), self.topic, self.bootstrap, "user_id"
                )
                time.sleep(self.pause_s)
        except BaseException as e:  # reported by the test
            self.error = e

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the producer did not finish"
        assert self.error is None, self.error
        assert self.sent == self.log.height


def _store(client: redis.Redis, prefix: str) -> StateStore:
    return StateStore(client, prefix)


def _consumed(client: redis.Redis, prefix: str) -> int:
    """Events the group has committed (the group is the prefix)."""
    return sum(_store(client, prefix).read_offsets(prefix).values())


def _snapshot(client: redis.Redis, prefix: str) -> dict[Any, StoredState | None]:
    """Every stored state of the view: entity -> (state bytes, fingerprint, quarantine)."""
    store = _store(client, prefix)
    layout = store.layout
    keys = client.scan_iter(match=layout.state_key_pattern(VIEW), count=5000)
    texts = [layout.entity_text(k, VIEW) for k in keys]
    entities = sorted(decode_entity(t) for t in texts if t is not None)
    assert len(entities) == len(texts)
    return dict(zip(entities, store.read_states([(VIEW, e) for e in entities]), strict=True))


def _wait(
    what: str, done: Callable[[], bool], timeout: float = SETTLE_TIMEOUT_S,
    explain: Callable[[], str] = str,
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{explain()}")
        time.sleep(0.1)


class ElasticRun:
    """Worker processes of one group (group = key prefix) on one topic."""

    def __init__(self, s: infra.DevServices, topic: str, prefix: str, tmp: Path) -> None:
        self.services, self.topic, self.prefix, self.tmp = s, topic, prefix, tmp
        self.client = connect(s.redis_url)
        self.workers: dict[str, Worker] = {}
        self.gone: set[str] = set()
        self.terminated: set[str] = set()

    def start(self, name: str) -> Worker:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.test_elastic_workers", self.services.kafka_bootstrap,
                 self.services.redis_url, self.topic, self.prefix, str(IDLE_EXIT_S)],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )
        self.workers[name] = w = Worker(name, proc, log)
        return w

    def describe(self) -> str:
        return "\n".join(
            f"{w.name} (exit {w.proc.poll()}): {[(round(t, 1), sorted(p)) for t, p in w.assignments()]}"
            f"\n  " + "\n  ".join(w.lines()[-5:])
            for w in self.workers.values()
        ) + f"\nnow {time.time():.1f}"

    def live(self) -> list[Worker]:
        return [w for n, w in self.workers.items() if n not in self.gone]

    def settled(self, since: float) -> bool:
        """Every live worker was assigned after ``since``; together they hold every partition
        exactly once."""
        latest = []
        for w in self.live():
            got = w.assignments()
            if not got or got[-1][0] < since or not w.alive:
                return False
            latest.append(got[-1][1])
        held = [p for parts in latest for p in parts]
        return sorted(held) == list(range(PARTITIONS))

    def step(self, feeder: Feeder, upto: int, action: Callable[[], None]) -> None:
        """Release the log up to ``upto`` and run ``action`` (start or stop a worker) while it
        is being sent; wait until the group settled and applied everything sent."""
        feeder.release(upto)
        since = time.time()
        action()
        assert feeder.sent < upto, "the step should happen while events are being sent"
        _wait("the group to settle", lambda: self.settled(since), explain=self.describe)
        _wait("the segment to be applied",
              lambda: feeder.sent == upto and _consumed(self.client, self.prefix) == upto,
              explain=self.describe)

    def join(self, name: str) -> None:
        self.start(name)

    def terminate(self, name: str) -> None:
        w = self.workers[name]
        w.proc.send_signal(signal.SIGTERM)  # stops after the batch in flight, leaves the group
        self.gone.add(name)
        self.terminated.add(name)

    def kill(self, name: str) -> None:
        w = self.workers[name]
        assert w.alive and w.assignments()[-1][1], f"{name} should hold partitions when killed"
        os.kill(w.proc.pid, signal.SIGKILL)
        w.proc.wait()
        self.gone.add(name)

    def stop_all(self) -> None:
        for w in self.workers.values():
            if w.alive:
                w.proc.kill()
                w.proc.wait()


@pytest.fixture
def elastic(services: infra.DevServices, tmp_path: Path) -> Iterator[Callable[[str], ElasticRun]]:
    runs: list[ElasticRun] = []

    def make(topic: str) -> ElasticRun:
        run = ElasticRun(services, topic, unique("fp-elastic"), tmp_path)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.stop_all()
        _store(run.client, run.prefix).clear()


def _reference(s: infra.DevServices, topic: str, events: int) -> tuple[str, threading.Thread]:
    """One uninterrupted worker in this process, reading the topic while it is produced."""
    prefix = unique("fp-single")
    worker = StreamWorker(
        load_definitions(ROOT / "feature_defs"),
        WorkerConfig(bootstrap=s.kafka_bootstrap, group_id=prefix, prefix=prefix,
                     idle_exit_s=SETTLE_TIMEOUT_S, max_events=events, max_batch=MAX_BATCH),
        connect(s.redis_url), topics={"transactions": topic},
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return prefix, thread


def _scenario(
    s: infra.DevServices,
    elastic: Callable[[str], ElasticRun],
    log: pl.DataFrame,
    steps: list[tuple[str, str]],
    *,
    chunk: int,
    pause_s: float,
    tail: int,
) -> None:
    """Run ``steps`` (join, terminate or kill a named worker) on the elastic group, each while
    its own segment of the log is produced; then the tail; then compare with one worker."""
    topic = unique("tx-elastic")
    ensure_topics(s.kafka_bootstrap, {topic: PARTITIONS, topic + ".dlq": 1})
    client = connect(s.redis_url)
    ref_prefix, ref = _reference(s, topic, log.height)
    run = elastic(topic)
    feeder = Feeder(log, topic, s.kafka_bootstrap, chunk, pause_s)
    head = log.height - tail
    try:
        for i, (verb, name) in enumerate(steps):
            action: Callable[[str], None] = getattr(run, verb)
            run.step(feeder, head * (i + 1) // len(steps), partial(action, name))
        feeder.release(log.height)  # the tail, to the settled group
        feeder.join(SETTLE_TIMEOUT_S * 2)
        ref.join(SETTLE_TIMEOUT_S * 2)
        assert not ref.is_alive(), "the reference worker did not finish"
        for w in run.live():  # the survivors stop on their own once the topic is drained
            assert w.proc.wait(SETTLE_TIMEOUT_S * 2) == 0, w.log.read_text()
        for name in run.terminated:
            assert run.workers[name].proc.wait(SETTLE_TIMEOUT_S) == 0, name
    finally:
        feeder.cancel()
        run.stop_all()
    for w in run.workers.values():
        # every worker held partitions at some point; those that exited applied events
        assert any(parts for _, parts in w.assignments()), w.name
        if w.proc.returncode == 0:
            counters = w.counters()
            assert counters["valid"] > 0 and counters["invalid"] == 0, (w.name, counters)

    # every event was applied: the positions are the single worker's, which read all of them
    # (the broker's reported end offsets are not used: some Kafka-protocol brokers report the
    # last batch's base offset there)
    positions = _store(client, ref_prefix).read_offsets(ref_prefix)
    assert sorted(positions) == [(topic, p) for p in range(PARTITIONS)]
    assert sum(positions.values()) == log.height
    assert _store(client, run.prefix).read_offsets(run.prefix) == positions
    reference, elastic_states = _snapshot(client, ref_prefix), _snapshot(client, run.prefix)
    assert len(reference) == log["user_id"].n_unique()
    assert all(st is not None and st.state and st.quarantine is None for st in reference.values())
    assert elastic_states.keys() == reference.keys()
    differ = [e for e in reference if elastic_states[e] != reference[e]]
    assert not differ, f"{len(differ)} entities differ, e.g. {differ[:5]}"
    view = load_definitions(ROOT / "feature_defs").view(VIEW)
    assert online_vs_batch(view, client, run.prefix, log) == 0
    _store(client, ref_prefix).clear()


def test_workers_join_leave_and_crash_mid_stream(
    services: infra.DevServices, elastic: Callable[[str], ElasticRun]
) -> None:
    """1 worker, then 3 (two join), then 2 (one stops with SIGTERM), then 1 (one is killed
    with SIGKILL), with events flowing throughout: the same stored bytes as one worker."""
    log = generate_transactions(80_000, users=800, seed=41)
    _scenario(
        services, elastic, log,
        [("join", "w1"), ("join", "w2"), ("join", "w3"), ("terminate", "w1"), ("kill", "w2")],
        chunk=500, pause_s=0.15, tail=5_000,
    )


@pytest.mark.slow
@pytest.mark.usefixtures("kafka_client")
def test_workers_churn_through_200k_events(
    services: infra.DevServices, elastic: Callable[[str], ElasticRun]
) -> None:
    """Longer churn with either Kafka client: four workers join one by one, two are killed,
    one stops, a fifth joins late; 200k events."""
    log = generate_transactions(200_000, users=3_000, seed=43)
    _scenario(
        services, elastic, log,
        [("join", "w1"), ("join", "w2"), ("join", "w3"), ("join", "w4"), ("kill", "w2"),
         ("terminate", "w3"), ("join", "w5"), ("kill", "w1")],
        chunk=1_000, pause_s=0.1, tail=20_000,
    )


if __name__ == "__main__":
    main()
