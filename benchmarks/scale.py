"""Larger-than-memory training sets under a memory cap (`make bench`).

Generates a transactions log several times larger (in memory) than a cap, then builds a
training set from it in a child process confined to that cap by a cgroup v1 memory limit:

1. with ``partitions=P`` (one streaming pass splits the events into entity-hash partitions on
   disk, each computed alone): must succeed; prints rows, seconds and peak memory;
2. for contrast, the same job with ``partitions=1`` under the same cap: expected to be
   OOM-killed (reported, not required);
3. a check that the rows of a sample of users equal an uncapped in-memory run over just those
   users' events (features of a user depend only on that user's events).

RLIMIT_AS cannot be used as the cap: Polars reserves large virtual regions and fails even to
read a Parquet schema under it. The cgroup needs root and a cgroup v1 memory controller at
/sys/fs/cgroup/memory; without them the script says so and exits 0 without measuring.

Columns: "cgroup peak" (memory.max_usage_in_bytes) includes page cache of the Parquet files the
child reads and writes, which the kernel reclaims under the limit; "anon peak" (memory.stat
total_rss, polled every 20 ms) is what cannot be reclaimed (there is no swap) and what an OOM
kill is about; "last seen in" is the innermost featurepipe function the child was in when it
last reported (every 0.1 s), i.e. roughly where a killed run died.
tests/test_scale.py runs the same proof at a smaller size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
MB = 1_000_000
T0 = datetime(2026, 1, 1, tzinfo=UTC)

DEFS = '''"""Small view for the larger-than-memory proof (schema as feature_defs/fraud.py)."""

from datetime import datetime

from pydantic import BaseModel

import featurepipe as fp


class Transaction(BaseModel):
    transaction_id: str
    user_id: str
    merchant_id: str
    amount: float | None
    country: str | None
    employment_type: str | None
    channel: str | None
    event_time: datetime


user = fp.Entity("user", key="user_id")

transactions = fp.Source(
    "transactions",
    schema=Transaction,
    timestamp="event_time",
    batch=fp.ParquetSource("data/transactions/"),
)


@fp.feature_view(entity=user, source=transactions, lateness="1h")
def user_scale(t):
    return {
        "txn_count_24h": fp.count(window="24h"),
        "amount_sum_7d": fp.sum(t.amount.fill_null(0.0), window="7d", default=0.0),
        "amount_max_24h": fp.max(t.amount, window="24h"),
        "last_country": fp.last(t.country.fill_null("UNKNOWN")),
        "distinct_merchants_7d": fp.count_distinct(t.merchant_id, window="7d"),
    }
'''
VIEW = "user_scale"
FEATURES = [
    f"{VIEW}:{n}"
    for n in (
        "txn_count_24h",
        "amount_sum_7d",
        "amount_max_24h",
        "last_country",
        "distinct_merchants_7d",
    )
]


# ---- data -------------------------------------------------------------------------------------


@dataclass
class Dataset:
    repo: Path
    events: int
    users: int
    days: float
    memory_bytes: int  # sum of estimated_size() of the generated chunks
    parquet_bytes: int
    labels: Path
    label_rows: int


def make_dataset(
    repo: Path,
    events: int,
    *,
    users: int,
    labels: int,
    chunk: int = 5_000_000,
    days_per_chunk: float = 7.0,
    seed: int = 7,
    log: bool = False,
) -> Dataset:
    """A repo with the small view and ``events`` transactions in Parquet chunks of ``chunk``
    rows; chunk i covers days [i, i + 1) * days_per_chunk. Labels: ``labels`` rows of uniform
    users at uniform times over the whole span, written to ``repo/labels.parquet``."""
    (repo / "feature_defs").mkdir(parents=True)
    (repo / "feature_defs" / "scale.py").write_text(DEFS)
    data = repo / "data" / "transactions"
    data.mkdir(parents=True)
    memory = 0
    n_chunks = -(-events // chunk)
    for i in range(n_chunks):
        n = min(chunk, events - i * chunk)
        df = generate(n, users, days_per_chunk, seed + i, T0 + timedelta(days=i * days_per_chunk))
        memory += df.estimated_size()
        df.write_parquet(data / f"part-{i:04d}.parquet")
        del df
        if log:
            print(f"  generated chunk {i + 1}/{n_chunks} ({n:,} events)", flush=True)
    days = n_chunks * days_per_chunk
    rng = np.random.default_rng(seed)
    span_us = int(days * 86_400e6)
    t0_us = int(T0.timestamp() * 1e6)
    pl.DataFrame(
        {
            "user_id": pl.Series(rng.integers(0, users, labels))
            .cast(pl.String)
            .str.replace(r"^", "u"),
            "event_timestamp": pl.Series(t0_us + rng.integers(0, span_us, labels)).cast(
                pl.Datetime("us", "UTC")
            ),
            "label": pl.Series(rng.random(labels) < 0.1),
        }
    ).write_parquet(repo / "labels.parquet")
    parquet = sum(f.stat().st_size for f in data.glob("*.parquet"))
    return Dataset(repo, events, users, days, memory, parquet, repo / "labels.parquet", labels)


def generate(n: int, users: int, days: float, seed: int, start: datetime) -> pl.DataFrame:
    from featurepipe.dev.datagen import generate_transactions

    df = generate_transactions(n, users=users, days=days, seed=seed, start=start)
    # transaction ids unique across chunks (each chunk numbers from t0)
    return df.with_columns(pl.col("transaction_id") + f"-{seed}")


# ---- the memory cap ---------------------------------------------------------------------------


def cgroup_unavailable() -> str | None:
    """Why a cgroup v1 memory limit cannot be set here, or None if it can."""
    if os.geteuid() != 0:
        return "not running as root: cannot create a cgroup to cap memory"
    if not (CGROUP_ROOT / "memory.limit_in_bytes").exists():
        return f"no cgroup v1 memory controller at {CGROUP_ROOT}"
    probe = CGROUP_ROOT / f"featurepipe_scale_{os.getpid()}_probe"
    try:
        probe.mkdir()
        (probe / "memory.limit_in_bytes").write_text(str(64 * MB))
    except OSError as e:
        return f"cannot create a memory cgroup under {CGROUP_ROOT}: {e}"
    finally:
        if probe.exists():
            probe.rmdir()
    return None


@dataclass
class CappedRun:
    partitions: int
    cap_bytes: int
    returncode: int  # negative: killed by that signal
    timed_out: bool
    wall_s: float
    job_s: float | None  # get_historical_features alone, from the child
    rows: int | None
    cgroup_peak: int  # memory.max_usage_in_bytes: includes reclaimable page cache
    anon_peak: int  # highest anonymous memory (total_rss) seen, polled every 20 ms
    failcnt: int  # times usage hit the limit (the kernel then reclaims cache, or OOM-kills)
    oom_kills: int | None  # memory.oom_control's oom_kill counter, where the kernel has it
    where: str  # innermost featurepipe frame of the child when it last reported (or ended)
    stderr_tail: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.rows is not None

    @property
    def oom_killed(self) -> bool:
        return (
            not self.timed_out
            and self.returncode == -signal.SIGKILL
            and (self.oom_kills is None or self.oom_kills > 0)
        )

    @property
    def outcome(self) -> str:
        if self.ok:
            return "ok"
        if self.timed_out:
            return "timed out"
        if self.oom_killed:
            return "OOM-killed"
        return f"failed (exit {self.returncode})"


def run_capped(
    data: Dataset, out: Path, partitions: int, cap_bytes: int, timeout_s: float = 1800.0
) -> CappedRun:
    """Run the training-set job in a child process whose cgroup memory limit is ``cap_bytes``.

    A fresh cgroup per run, removed afterwards. The child's temporary partition files go under
    the repo (TMPDIR) so that a killed child leaves nothing in /tmp.
    """
    cg = CGROUP_ROOT / f"featurepipe_scale_{os.getpid()}_{partitions}_{time.monotonic_ns()}"
    cg.mkdir()
    tmp = data.repo / "tmp"
    tmp.mkdir(exist_ok=True)
    err_path = data.repo / f"child-{partitions}.err"
    res_path = data.repo / f"child-{partitions}.json"
    where_path = data.repo / f"child-{partitions}.where"
    res_path.unlink(missing_ok=True)
    where_path.unlink(missing_ok=True)
    try:
        (cg / "memory.limit_in_bytes").write_text(str(cap_bytes))
        procs = cg / "cgroup.procs"
        spec = {
            "repo": str(data.repo),
            "labels": str(data.labels),
            "out": str(out),
            "partitions": partitions,
            "result": str(res_path),
            "where": str(where_path),
        }
        cmd = [
            "bash",
            "-c",
            f'echo $$ > "{procs}" && exec "$@"',
            "bash",
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            json.dumps(spec),
        ]
        env = {**os.environ, "TMPDIR": str(tmp)}
        t = time.perf_counter()
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        done = threading.Event()
        anon_peak = [0]

        def watch() -> None:
            while not done.wait(0.02):
                anon_peak[0] = max(anon_peak[0], _anon_bytes(cg))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        timed_out = False
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            proc.wait()
        finally:
            done.set()
            watcher.join()
        wall = time.perf_counter() - t
        result = json.loads(res_path.read_text()) if res_path.exists() else {}
        oom_kills = None
        for line in (cg / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                oom_kills = int(line.split()[1])
        return CappedRun(
            partitions=partitions,
            cap_bytes=cap_bytes,
            returncode=proc.returncode,
            timed_out=timed_out,
            wall_s=wall,
            job_s=result.get("seconds"),
            rows=result.get("rows"),
            cgroup_peak=int((cg / "memory.max_usage_in_bytes").read_text()),
            anon_peak=anon_peak[0],
            failcnt=int((cg / "memory.failcnt").read_text()),
            oom_kills=oom_kills,
            where=where_path.read_text() if where_path.exists() else "?",
            stderr_tail=err_path.read_text(errors="replace")[-2000:],
        )
    finally:
        _remove_cgroup(cg)
        shutil.rmtree(tmp, ignore_errors=True)


def _anon_bytes(cg: Path) -> int:
    try:
        for line in (cg / "memory.stat").read_text().splitlines():
            if line.startswith("total_rss "):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _remove_cgroup(cg: Path) -> None:
    for _ in range(50):  # a just-killed task can take a moment to leave the cgroup
        try:
            cg.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    print(f"warning: could not remove cgroup {cg}", file=sys.stderr)


def child_main(spec: dict[str, Any]) -> None:
    """In the capped child: build the training set and record rows and seconds.

    A thread records the innermost featurepipe frame of the main thread every 0.1 s, so that
    the parent can say where an OOM-killed child was.
    """
    from featurepipe.store import FeatureStore

    main_id = threading.get_ident()
    where_path = Path(spec["where"])

    def where() -> None:
        last = ""
        while True:
            frame = sys._current_frames().get(main_id)
            here = ""
            while frame is not None:
                code = frame.f_code
                if "featurepipe" in Path(code.co_filename).parts:
                    here = f"{code.co_name} ({Path(code.co_filename).name}:{frame.f_lineno})"
                    break
                frame = frame.f_back
            if here and here != last:
                where_path.write_text(here)
                last = here
            time.sleep(0.1)

    threading.Thread(target=where, daemon=True).start()
    store = FeatureStore(spec["repo"])
    labels = pl.read_parquet(spec["labels"])
    t = time.perf_counter()
    out = store.get_historical_features(
        labels, FEATURES, partitions=int(spec["partitions"]), engine="streaming"
    )
    seconds = time.perf_counter() - t
    out.write_parquet(spec["out"])
    Path(spec["result"]).write_text(json.dumps({"rows": out.height, "seconds": seconds}))


# ---- correctness on a sample ------------------------------------------------------------------


def check_sample(data: Dataset, out: Path, work: Path, users: int = 200) -> int:
    """Rows of ``users`` sampled label users, from the capped run's output, must equal an
    uncapped in-memory run over those users' events only. Returns the number of rows compared;
    raises AssertionError on a difference."""
    from polars.testing import assert_frame_equal

    from featurepipe.store import FeatureStore

    labels = pl.read_parquet(data.labels)
    pool = labels["user_id"].unique().sort()
    ids = pool.sample(min(users, pool.len()), seed=1).to_list()
    sub = work / "subset"
    shutil.rmtree(sub, ignore_errors=True)
    (sub / "feature_defs").mkdir(parents=True)
    (sub / "feature_defs" / "scale.py").write_text(DEFS)
    (sub / "data" / "transactions").mkdir(parents=True)
    files = sorted((data.repo / "data" / "transactions").glob("*.parquet"))
    # file by file, so the arrival order (file order, then row order) is kept
    events = pl.concat(
        [pl.scan_parquet(f).filter(pl.col("user_id").is_in(ids)).collect() for f in files]
    )
    events.write_parquet(sub / "data" / "transactions" / "part-0.parquet")
    want_labels = labels.filter(pl.col("user_id").is_in(ids))
    want = FeatureStore(sub).get_historical_features(want_labels, FEATURES, engine="in-memory")
    got = pl.read_parquet(out).filter(pl.col("user_id").is_in(ids))
    assert_frame_equal(got, want, rel_tol=1e-9, abs_tol=1e-9)
    shutil.rmtree(sub, ignore_errors=True)
    return want.height


# ---- report -----------------------------------------------------------------------------------


def _mb(b: float | None) -> str:
    return "-" if b is None else f"{b / MB:,.0f} MB"


def describe(data: Dataset, cap_bytes: int) -> str:
    return (
        f"dataset: {data.events:,} events, {data.users:,} users, {data.days:g} days; "
        f"in memory {_mb(data.memory_bytes)} = {data.memory_bytes / cap_bytes:.1f}x the "
        f"{_mb(cap_bytes)} cap (Parquet on disk {_mb(data.parquet_bytes)}); "
        f"{data.label_rows:,} label rows"
    )


def table(runs: list[CappedRun]) -> str:
    head = (
        "partitions",
        "outcome",
        "rows",
        "job s",
        "wall s",
        "cgroup peak",
        "anon peak",
        "failcnt",
        "last seen in",
    )
    rows = [head]
    for r in runs:
        rows.append(
            (
                str(r.partitions),
                r.outcome,
                "-" if r.rows is None else f"{r.rows:,}",
                "-" if r.job_s is None else f"{r.job_s:.1f}",
                f"{r.wall_s:.1f}",
                _mb(r.cgroup_peak),
                _mb(r.anon_peak),
                f"{r.failcnt:,}",
                "-" if r.ok else r.where,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    for row in rows:
        cells = [
            c.ljust(w) if i in (1, len(head) - 1) else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=26_000_000)
    ap.add_argument("--cap-mb", type=int, default=420)
    ap.add_argument("--partitions", type=int, default=64)
    ap.add_argument("--labels", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=5_000_000, help="events per Parquet file")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per capped run")
    ap.add_argument("--no-check", action="store_true", help="skip the sample correctness check")
    ap.add_argument("--no-contrast", action="store_true", help="skip the partitions=1 run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return 0
    reason = cgroup_unavailable()
    if reason:
        print(f"scale benchmark NOT RUN: {reason}")
        return 0
    cap = args.cap_mb * MB
    with tempfile.TemporaryDirectory(prefix="featurepipe-scale-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        data = make_dataset(
            work / "repo",
            args.events,
            users=args.users,
            labels=args.labels,
            chunk=args.chunk,
            log=True,
        )
        print(f"generated in {time.perf_counter() - t:.1f} s")
        print(describe(data, cap), flush=True)
        runs = [run_capped(data, work / "out.parquet", args.partitions, cap, args.timeout)]
        print(f"partitions={args.partitions}: {runs[0].outcome}", flush=True)
        if not args.no_contrast:
            runs.append(run_capped(data, work / "out1.parquet", 1, cap, args.timeout))
            print(f"partitions=1: {runs[1].outcome}", flush=True)
        print()
        print(describe(data, cap))
        print(table(runs))
        part = runs[0]
        if not part.ok:
            print(
                f"\nFAILED: the partitioned run did not complete under the cap.\n{part.stderr_tail}"
            )
            return 1
        if len(runs) > 1 and runs[1].ok:
            print("\nnote: partitions=1 also completed under this cap (no contrast).")
        if args.no_check:
            print("sample check: skipped (--no-check)")
        else:
            t = time.perf_counter()
            n = check_sample(data, work / "out.parquet", work)
            print(
                f"sample check: {n:,} rows of 200 sampled users equal an uncapped in-memory run "
                f"on their events ({time.perf_counter() - t:.1f} s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
