"""materialize in entity-hash shards, here and on Dask, against one unsharded replay.

One Parquet log of ``--events`` generated transactions (``--users`` users) and one plain
valkey-server (``featurepipe.dev.infra.start_redis``, no password, on a free loopback port).
View ``user_spend`` of ``feature_defs/`` is materialized with every event (cut-over just after
the last one), each run under a fresh key prefix:

1. **unsharded** local (the baseline): one sorted replay of every entity;
2. **local shards**: ``shards=--shards``, each shard's events read and replayed in turn in this
   process;
3. **Dask shards**: ``shards=--shards`` with ``runner=DaskRunner("local:--workers")``, a
   LocalCluster of worker processes (one thread each) on this machine that compute the shards'
   states while this process writes them to Redis. The cluster is started once, before the
   rounds (its start time is printed apart), and stopped at the end.

Each round runs the three in a rotating order. Reported per run: wall seconds, events/s and
entities/s, wall / baseline wall, this process's RSS before the run and its peak RSS growth
(Linux: the peak is reset with ``/proc/self/clear_refs`` before each run and read from
``VmHWM`` after it, over the RSS before it; elsewhere ``ru_maxrss``, which only grows). Memory
the allocators kept from an earlier run counts in "RSS before" and is reused without growth:
read the two together. For Dask, also the peak growth of the workers' RSS summed (psutil,
sampled every 50 ms). Then the per-shard compute cost: the Dask tasks' compute times
(``distributed.get_task_stream``) and one shard's ``StateTask.compute`` timed here. Finally
the state hashes of ``--sample`` entities are read back from the three prefixes and compared
(``states equal``).

    python benchmarks/materialize_shards.py [--events 1000000] [--users 50000] [--shards 8]
                                            [--workers 2] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psutil
import redis

from featurepipe import load_definitions
from featurepipe.batch.distributed import DaskRunner
from featurepipe.batch.sources import read_events
from featurepipe.dev import infra
from featurepipe.dev.datagen import generate_transactions
from featurepipe.ir.entity_keys import with_composite_key
from featurepipe.ir.timebase import as_utc
from featurepipe.online.materialize import materialize, shard_tasks
from featurepipe.online.redis_conn import connect
from featurepipe.online.state_store import StateStore

ROOT = Path(__file__).resolve().parents[1]
VIEW = "user_spend"
MB = 1_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def valkey(workdir: Path) -> Iterator[tuple[str, int]]:
    """A plain valkey-server on a free loopback port: (URL, PID); killed on exit."""
    port = free_port()
    proc = infra.start_redis(port, workdir / "valkey.log")
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"valkey-server exited ({proc.returncode}), see its log")
            try:
                with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as c:
                    c.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("valkey-server did not answer within 15 s") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# -- memory --------------------------------------------------------------------------------------
def rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def reset_peak() -> bool:
    """Start this process's peak RSS over from now (Linux: clear_refs 5 resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class ChildSampler:
    """Samples the summed RSS of this process's descendants (``exclude``: PIDs left out)."""

    def __init__(self, exclude: set[int], every_s: float = 0.05) -> None:
        self.exclude = exclude
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        total = 0
        for child in psutil.Process().children(recursive=True):
            if child.pid in self.exclude:
                continue
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(self.every_s)

    def __enter__(self) -> ChildSampler:
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


# -- runs ----------------------------------------------------------------------------------------
def run(
    name: str,
    fn: Callable[[str], Any],
    prefix: str,
    valkey_pid: int,
    dask: bool,
) -> dict[str, Any]:
    """One materialization: wall time, its report, this process's and the workers' peak RSS."""
    before = rss_bytes()
    resettable = reset_peak()
    peak0 = peak_bytes()
    sampler = ChildSampler({valkey_pid})
    tasks: list[dict[str, Any]] = []
    with sampler:
        children0 = sampler.peak
        t0 = time.perf_counter()
        if dask:
            import distributed

            with distributed.get_task_stream() as ts:
                report = fn(prefix)
            tasks = list(ts.data)
        else:
            report = fn(prefix)
        wall = time.perf_counter() - t0
    peak = peak_bytes()
    growth = peak - before if resettable else max(0, peak - peak0)
    compute = [
        sum(s["stop"] - s["start"] for s in t.get("startstops", ()) if s.get("action") == "compute")
        for t in tasks
        if "materialize" in str(t.get("key", ""))
    ]
    return {
        "name": name,
        "report": report,
        "wall": wall,
        "rss_before": before,
        "rss_growth": growth,
        "workers_growth": (sampler.peak - children0) if dask else None,
        "task_compute": compute,
    }


def shard_compute_seconds(view: Any, path: Path, until: Any, shards: int) -> tuple[float, int]:
    """``StateTask.compute`` of shard 0 of ``shards``, timed here (the events' lazy frame built
    as materialize builds it); (seconds, entities of the shard)."""
    key = view.entity.key
    lf, _ = read_events(view.source, path=path, end=as_utc(until))
    lf = with_composite_key(lf, view.ir.entity_parts)
    usable = pl.col(key).is_not_null() & pl.col(view.source.timestamp).is_not_null()
    fields = list(dict.fromkeys([*view.source.fields, key]))
    task = shard_tasks(view, lf.filter(usable), fields, shards)[0]
    t0 = time.perf_counter()
    frame = task.compute()
    return time.perf_counter() - t0, frame.height


def states_equal(client: Any, prefixes: list[str], entities: list[Any]) -> bool:
    got = [StateStore(client, p).read_states([(VIEW, e) for e in entities]) for p in prefixes]
    return all(s is not None for s in got[0]) and all(g == got[0] for g in got[1:])


def unique(name: str) -> str:
    return f"bench-{name}-{uuid.uuid4().hex[:8]}"


def print_round(r: int, runs: dict[str, dict[str, Any]], equal: bool, counts_equal: bool) -> None:
    base = runs["unsharded"]["wall"]
    print(f"\nround {r} (run order: {', '.join(runs)})")
    head = (
        f"  {'run':<22} {'wall s':>8} {'events/s':>10} {'entities/s':>11} {'wall/base':>10} "
        f"{'RSS before MB':>14} {'RSS peak +MB':>13} {'workers +MB':>12}"
    )
    print(head)
    for name in ORDER:
        x = runs[name]
        rep = x["report"]
        workers = "" if x["workers_growth"] is None else f"{x['workers_growth'] / MB:,.0f}"
        print(
            f"  {name:<22} {x['wall']:>8.2f} {rep.events / x['wall']:>10,.0f} "
            f"{rep.entities / x['wall']:>11,.0f} {x['wall'] / base:>9.2f}x "
            f"{x['rss_before'] / MB:>14,.0f} {x['rss_growth'] / MB:>13,.0f} {workers:>12}"
        )
    tasks = runs[ORDER[2]]["task_compute"]
    if tasks:
        print(
            f"  Dask tasks: {len(tasks)}, compute s min / median / max: {min(tasks):.2f} / "
            f"{statistics.median(tasks):.2f} / {max(tasks):.2f} (sum {sum(tasks):.2f})"
        )
    print(f"  entities, events equal: {'yes' if counts_equal else 'no'}")
    print(f"  states equal: {'yes' if equal else 'no'}")


ORDER: list[str] = []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="Dask worker processes (local:N)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sample", type=int, default=2_000, help="entities whose states are compared")
    ap.add_argument("--quick", action="store_true", help="a small run (100k events, 5k users)")
    args = ap.parse_args()
    if args.quick:
        args.events, args.users, args.rounds, args.sample = 100_000, 5_000, 1, 500

    ORDER[:] = [
        "unsharded",
        f"local shards={args.shards}",
        f"dask local:{args.workers} shards={args.shards}",
    ]
    defs = load_definitions(ROOT / "feature_defs")
    view = defs.view(VIEW)
    df = generate_transactions(args.events, users=args.users, seed=13)
    until = df["event_time"].max() + timedelta(seconds=1)
    users = sorted(df["user_id"].unique().to_list())
    rng = np.random.default_rng(5)
    sample = [users[i] for i in rng.choice(len(users), min(args.sample, len(users)), replace=False)]
    print(
        f"{df.height:,} events, {len(users):,} users, view {VIEW} "
        f"({len(view.feature_names)} features), {args.shards} shards, Dask local:{args.workers}, "
        f"{args.rounds} rounds, {os.cpu_count()} cores"
    )
    with tempfile.TemporaryDirectory(prefix="fp-bench-shards-") as tmp:
        workdir = Path(tmp)
        path = workdir / "transactions.parquet"
        df.write_parquet(path)
        del df
        with valkey(workdir) as (url, valkey_pid):
            client = connect(url)
            runner: DaskRunner | None = None
            try:
                t0 = time.perf_counter()
                runner = DaskRunner(f"local:{args.workers}")
                print(f"Dask LocalCluster started in {time.perf_counter() - t0:.1f} s")
                calls: dict[str, Callable[[str], Any]] = {
                    ORDER[0]: lambda p: materialize(view, until, client, path=path, prefix=p),
                    ORDER[1]: lambda p: materialize(
                        view, until, client, path=path, prefix=p, shards=args.shards
                    ),
                    ORDER[2]: lambda p: materialize(
                        view, until, client, path=path, prefix=p, shards=args.shards, runner=runner
                    ),
                }
                ratios: dict[str, list[float]] = {name: [] for name in ORDER}
                all_equal = True
                for r in range(1, args.rounds + 1):
                    shift = (r - 1) % len(ORDER)
                    order = ORDER[shift:] + ORDER[:shift]
                    prefixes = {name: unique(f"shards{i}") for i, name in enumerate(ORDER)}
                    runs = {
                        name: run(
                            name,
                            calls[name],
                            prefixes[name],
                            valkey_pid,
                            dask=name == ORDER[2],
                        )
                        for name in order
                    }
                    reports = [runs[n]["report"] for n in ORDER]
                    counts_equal = all(
                        (x.entities, x.events) == (reports[0].entities, reports[0].events)
                        for x in reports
                    )
                    equal = states_equal(client, [prefixes[n] for n in ORDER], sample)
                    all_equal = all_equal and equal and counts_equal
                    print_round(r, runs, equal, counts_equal)
                    for name in ORDER:
                        ratios[name].append(runs[name]["wall"] / runs[ORDER[0]]["wall"])
                    client.flushall()
                seconds, entities = shard_compute_seconds(view, path, until, args.shards)
                print(
                    f"\none shard's StateTask.compute here (shard 0 of {args.shards}, "
                    f"{entities:,} entities): {seconds:.2f} s"
                )
                print(f"\nwall / unsharded wall over {args.rounds} rounds (min / median / max)")
                for name in ORDER:
                    v = ratios[name]
                    print(
                        f"  {name:<26} {min(v):.2f}x / {statistics.median(v):.2f}x / {max(v):.2f}x"
                    )
                print(f"states equal (every round): {'yes' if all_equal else 'no'}")
            finally:
                if runner is not None:
                    runner.close()
                client.close()


if __name__ == "__main__":
    main()
