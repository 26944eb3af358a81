"""Training-set partitions: per-partition cost on the local engine and on a Dask cluster.

Generates a transactions log (benchmarks/scale.py's data and view), then builds the same
training set

1. on the local engine, in a fresh process, with P1 and P2 partitions: per-partition wall time,
   with the scan alone timed apart (read every file, keep and order the partition's events) and the rest (sort,
   aggregate, join to the label rows), and the process's peak RSS over its RSS before the job;
2. on a Dask LocalCluster of W worker processes (one thread each) with P1 partitions: the
   job's wall time, each task's time on its worker (Dask's task stream), each worker's peak
   RSS over its RSS before the job, and that the result equals the local one bit for bit;
3. Dask's own costs: import time, cluster start, one empty task's round trip.

docs/distributed.md turns these numbers into the estimate for larger jobs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
MB = 1_000_000


def _scale() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "featurepipe_bench_scale", ROOT / "benchmarks" / "scale.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def rss_bytes() -> int:
    """This process's resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> None:
    """Start the peak RSS over from now (Linux: clear_refs 5 resets VmHWM)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return peak_rss_bytes()


def _requests(repo: Path) -> tuple[Any, list[Any], list[str]]:
    from featurepipe.batch.engine import BatchEngine
    from featurepipe.store import FeatureStore

    scale = _scale()
    store = FeatureStore(repo)
    wanted = store.resolve(scale.FEATURES)
    requests = [(store.definitions.view(v), names) for v, names in wanted.items()]
    engine = BatchEngine(
        store.root.resolve(), quarantine_dir=store.quarantine_dir, featurepipe_version="bench"
    )
    return engine, requests, scale.FEATURES


class TimedLocal:
    """Runs the tasks here, one after another, timing the scan and the whole of each."""

    def __init__(self) -> None:
        self.tasks: list[dict[str, Any]] = []

    def run(self, tasks: Any) -> list[pl.DataFrame]:
        out = []
        for t in tasks:
            t0 = time.perf_counter()
            events = t.events.collect(engine="streaming").height  # read, checked, ordered
            scan = time.perf_counter() - t0
            t0 = time.perf_counter()
            out.append(t.compute())
            self.tasks.append(
                {
                    "events": events,
                    "labels": t.queries.height,
                    "scan_s": scan,
                    "task_s": time.perf_counter() - t0,
                }
            )
        return out


def child_local(spec: dict[str, Any]) -> None:
    """In a fresh process: the job on the local engine; per-task times and the peak RSS."""
    engine, requests, features = _requests(Path(spec["repo"]))
    labels = pl.read_parquet(spec["labels"])
    before = rss_bytes()
    reset_peak()
    runner = TimedLocal()
    t0 = time.perf_counter()
    out = engine.historical_features(
        labels,
        requests,
        timestamp="event_timestamp",
        references=features,
        partitions=int(spec["partitions"]),
        engine="streaming",
        runner=runner,
    )
    # the job's time without the scans timed apart (the engine alone runs each scan once)
    wall = time.perf_counter() - t0 - sum(t["scan_s"] for t in runner.tasks)
    out.frame.write_ipc(spec["out"])
    result = {"wall_s": wall, "rss_before": before, "peak": hwm_bytes(), "tasks": runner.tasks}
    Path(spec["result"]).write_text(json.dumps(result))


def run_local(repo: Path, labels: Path, partitions: int, work: Path) -> dict[str, Any]:
    spec = {
        "repo": str(repo),
        "labels": str(labels),
        "partitions": partitions,
        "out": str(work / f"local-{partitions}.arrow"),
        "result": str(work / f"local-{partitions}.json"),
    }
    subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True)
    return dict(json.loads(Path(spec["result"]).read_text()))


def _worker_mark() -> int:
    reset_peak()
    return rss_bytes()


def _worker_peak() -> int:
    return hwm_bytes()


def run_dask(repo: Path, labels_path: Path, partitions: int, workers: int) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    from featurepipe.batch.distributed import DaskRunner

    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    )
    started = time.perf_counter() - t0
    try:
        engine, requests, features = _requests(repo)
        labels = pl.read_parquet(labels_path)
        runner = DaskRunner(cluster.scheduler_address)
        client: Client = runner._client
        try:
            empty = []
            for _ in range(20):
                t = time.perf_counter()
                client.submit(int, 1, pure=False).result()
                empty.append(time.perf_counter() - t)
            before = client.run(_worker_mark)
            with _task_stream(client) as stream:
                t0 = time.perf_counter()
                out = engine.historical_features(
                    labels,
                    requests,
                    timestamp="event_timestamp",
                    references=features,
                    partitions=partitions,
                    engine="streaming",
                    runner=runner,
                )
                wall = time.perf_counter() - t0
            peaks = client.run(_worker_peak)
        finally:
            runner.close()
    finally:
        cluster.close()
    tasks = [
        sum(s["stop"] - s["start"] for s in rec["startstops"] if s["action"] == "compute")
        for rec in stream.data
        if str(rec["key"]).startswith("featurepipe-")
    ]
    return {
        "start_s": started,
        "empty_task_ms": sorted(empty)[len(empty) // 2] * 1e3,
        "wall_s": wall,
        "task_s": tasks,
        "worker_growth": [peaks[w] - before[w] for w in peaks],
        "worker_peak": list(peaks.values()),
        "frame": out.frame,
    }


class _task_stream:
    def __init__(self, client: Any) -> None:
        from distributed import get_task_stream

        self._ctx = get_task_stream(client)

    def __enter__(self) -> Any:
        return self._ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def dask_import_s() -> float:
    code = "import time; t=time.perf_counter(); import distributed; print(time.perf_counter()-t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def _stats(values: list[float]) -> str:
    v = sorted(values)
    return f"median {v[len(v) // 2]:.2f}, max {v[-1]:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=8_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--labels", type=int, default=800_000, help="1 per 10 events: 1B x 100M's mix")
    ap.add_argument("--chunk", type=int, default=2_000_000, help="events per Parquet file")
    ap.add_argument("--partitions", type=int, nargs=2, default=[8, 32], metavar=("P1", "P2"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_local(json.loads(args.child))
        return 0
    from featurepipe.batch.distributed import ClusterError

    try:
        import distributed  # noqa: F401
    except ImportError:
        print("distributed benchmark NOT RUN: pip install 'featurepipe[distributed]'")
        return 0
    scale = _scale()
    p1, p2 = args.partitions
    with tempfile.TemporaryDirectory(prefix="featurepipe-distributed-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        data = scale.make_dataset(
            work / "repo", args.events, users=args.users, labels=args.labels, chunk=args.chunk
        )
        print(
            f"generated in {time.perf_counter() - t:.1f} s: {scale.describe(data, data.memory_bytes)}"
        )
        local = {p: run_local(data.repo, data.labels, p, work) for p in (p1, p2)}
        try:
            dask = run_dask(data.repo, data.labels, p1, args.workers)
        except ClusterError as e:
            print(f"dask run failed: {e}")
            return 1
        same = dask.pop("frame").equals(pl.read_ipc(work / f"local-{p1}.arrow"))
    print(
        f"\nDask: import {dask_import_s():.2f} s, LocalCluster of {args.workers} processes started in "
        f"{dask['start_s']:.2f} s, empty task round trip {dask['empty_task_ms']:.1f} ms (median of 20)"
    )
    print(
        "\n| engine | partitions | job s | per task s | scan s (of task) | events/partition | labels/partition | peak RSS growth |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for p, r in local.items():
        tasks = r["tasks"]
        print(
            f"| local (1 process) | {p} | {r['wall_s']:.1f} | {_stats([x['task_s'] for x in tasks])} "
            f"| {_stats([x['scan_s'] for x in tasks])} "
            f"| {sum(x['events'] for x in tasks) / len(tasks):,.0f} | {sum(x['labels'] for x in tasks) / len(tasks):,.0f} "
            f"| {(r['peak'] - r['rss_before']) / MB:,.0f} MB (peak {r['peak'] / MB:,.0f} MB) |"
        )
    growth = ", ".join(f"{g / MB:,.0f}" for g in dask["worker_growth"])
    peaks = ", ".join(f"{g / MB:,.0f}" for g in dask["worker_peak"])
    print(
        f"| dask ({args.workers} workers) | {p1} | {dask['wall_s']:.1f} | {_stats(dask['task_s'])} | - | "
        f"{args.events / p1:,.0f} | {args.labels / p1:,.0f} | {growth} MB per worker (peaks {peaks} MB) |"
    )
    print(f"\ndask result equals the local one (partitions={p1}): {same}")
    print(f"machine: {os.cpu_count()} cores; Polars {pl.__version__}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
