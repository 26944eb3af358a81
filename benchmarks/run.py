"""Throughput benchmark of featurepipe on the generated transactions log (`make bench`).

Every featurepipe number is paired with a naive baseline measured in the same run, so the
ratios are meaningful on a noisy machine; absolute rates are not asserted anywhere.

1. batch: BatchProgram.features with one query per event at the event's own time (a
   training-set-like workload), vs a naive Polars join on user_id + window filter + group_by;
2. per-event: ViewProgram.ingest over the whole log in arrival order and ViewProgram.query
   at the newest time of sampled entities, vs per-entity Python lists scanned on query;
3. `featurepipe parity --sample 0.1` end to end on a log of the same size.

With --snapshot the script exports the committed HEAD (`git archive`) to a temporary directory
and reruns itself against that copy, so edits made to the working tree during the run cannot leak
into it.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

import featurepipe
from featurepipe import load_definitions
from featurepipe.compile.polars_aggs import TS, BatchProgram
from featurepipe.compile.python_state import ViewProgram
from featurepipe.dev.datagen import generate_transactions
from featurepipe.parity.harness import normalize_events

SNAPSHOT_ENV = "FEATUREPIPE_BENCH_SNAPSHOT"  # "<commit> <dir>" in a --snapshot rerun
SNAPSHOT = os.environ.get(SNAPSHOT_ENV, "").split(" ", 1)
ROOT = Path(SNAPSHOT[1]) if len(SNAPSHOT) == 2 else Path(__file__).resolve().parents[1]
HOUR = 3_600_000_000
WINDOWS = {"1h": HOUR, "24h": 24 * HOUR, "7d": 7 * 24 * HOUR}
QUERY_SAMPLE = 10_000
TARGET_BATCH = 1_000_000
TARGET_PER_EVENT = 100_000


def timed(fn, *args):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


# ---- 1. batch ---------------------------------------------------------------------------------


def naive_batch(ev: pl.DataFrame, queries: pl.DataFrame) -> pl.DataFrame:
    """count, sum(amount, null as 0), mean(amount, nulls skipped) over [T - w, T), w in 1h/24h/7d:
    join every query with every event of its user, keep the 7d window, group by query."""
    q = queries.select("user_id", pl.col(TS).alias("q_ts")).with_row_index("qid")
    e = ev.select("user_id", pl.col(TS).alias("e_ts"), "amount")
    aggs = []
    for name, w in WINDOWS.items():
        inw = pl.col("e_ts") >= pl.col("q_ts") - w
        aggs += [
            inw.sum().cast(pl.Int64).alias(f"count_{name}"),
            pl.col("amount").fill_null(0.0).filter(inw).sum().alias(f"sum_{name}"),
            pl.col("amount").filter(inw).mean().alias(f"mean_{name}"),
        ]
    per_query = (
        q.lazy()
        .join(e.lazy(), on="user_id", how="inner")
        .filter(
            (pl.col("e_ts") < pl.col("q_ts")) & (pl.col("e_ts") >= pl.col("q_ts") - WINDOWS["7d"])
        )
        .group_by("qid")
        .agg(aggs)
    )
    out = q.lazy().join(per_query, on="qid", how="left").sort("qid").collect()
    counts = [f"count_{name}" for name in WINDOWS]
    sums = [f"sum_{name}" for name in WINDOWS]
    return out.with_columns(pl.col(counts).fill_null(0), pl.col(sums).fill_null(0.0))


def batch_agrees(fp: pl.DataFrame, naive: pl.DataFrame) -> bool:
    """Same counts; sums/means equal up to float rounding (featurepipe sums exactly)."""
    same = (fp["txn_count_1h"] == naive["count_1h"]).all() and (
        fp["txn_count_24h"] == naive["count_24h"]
    ).all()
    for a, b in (
        (fp["amount_sum_24h"], naive["sum_24h"]),
        (fp["amount_mean_7d"], naive["mean_7d"]),
    ):
        same = same and a.is_null().equals(b.is_null())
        same = same and bool(((a - b).abs() <= 1e-9 * b.abs() + 1e-9).fill_null(True).all())
    return bool(same)


# ---- 2. per-event -----------------------------------------------------------------------------


def fp_ingest(prog: ViewProgram, dicts: list[dict], key: str) -> dict:
    states: dict = {}
    get, new, ingest = states.get, prog.new_state, prog.ingest
    for seq, e in enumerate(dicts):
        st = get(e[key])
        if st is None:
            st = states[e[key]] = new()
        ingest(st, e, seq)
    return states


def fp_queries(prog: ViewProgram, states: dict, sample: list[tuple[str, int]]) -> list[tuple]:
    return [prog.query(states[u], t) for u, t in sample]


def naive_ingest(dicts: list[dict], key: str, ts_col: str) -> dict:
    hist: dict = {}
    get = hist.get
    for e in dicts:
        lst = get(e[key])
        if lst is None:
            lst = hist[e[key]] = []
        lst.append((e[ts_col], e["amount"]))
    return hist


def naive_query(events: list[tuple[int, float | None]], t: int) -> tuple:
    """count and sum(amount, null as 0) over [t - w, t) for 1h/24h/7d, by scanning everything."""
    w1, w24, w7 = WINDOWS.values()
    c1 = c24 = c7 = 0
    s1 = s24 = s7 = 0.0
    for ts, amount in events:
        age = t - ts
        if age <= 0 or age > w7:
            continue
        a = 0.0 if amount is None else amount
        c7 += 1
        s7 += a
        if age <= w24:
            c24 += 1
            s24 += a
            if age <= w1:
                c1 += 1
                s1 += a
    return c1, c24, c7, s1, s24, s7


def naive_queries(hist: dict, sample: list[tuple[str, int]]) -> list[tuple]:
    return [naive_query(hist[u], t) for u, t in sample]


# ---- 3. parity --------------------------------------------------------------------------------


def parity(n: int) -> tuple[float, int, str, str]:
    """(wall seconds, exit code, mismatch verdict, last lines) of the CLI parity run."""
    cli = str(Path(sys.executable).with_name("featurepipe"))
    env = {**os.environ, "COLUMNS": "240", "NO_COLOR": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        log = str(Path(tmp) / "transactions.parquet")
        gen = [cli, "generate", "--events", str(n), "--out", log]
        subprocess.run(gen, cwd=ROOT, env=env, check=True, capture_output=True)
        cmd = [cli, "parity", "--events", log, "--sample", "0.1"]
        t = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    found = re.findall(r"([\d,]+) mismatches", done.stdout)
    verdict = f"{found[-1]} mismatches" if found else "no verdict printed"
    return wall, done.returncode, verdict, "\n".join(lines[-2:])


# ---- main -------------------------------------------------------------------------------------


def revision() -> str:
    """Commit of the code under test, + if featurepipe/ or feature_defs/ has local edits."""
    if len(SNAPSHOT) == 2:
        return f"{SNAPSHOT[0]} (clean snapshot)"
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    edits = subprocess.run(
        [*git, "status", "--porcelain", "--", "featurepipe", "feature_defs"],
        capture_output=True,
        text=True,
    )
    return (head.stdout.strip() or "unknown") + ("+" if edits.stdout.strip() else "")


def rerun_in_snapshot(argv: list[str]) -> int:
    """Export the committed HEAD to a temporary directory and rerun this script against it: the
    snapshot goes first on PYTHONPATH (ahead of the editable install, for the CLI run too) and
    provides feature_defs/."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    tar = subprocess.run([*git, "archive", "--format=tar", "HEAD"], capture_output=True, check=True)
    with tempfile.TemporaryDirectory(prefix="featurepipe-bench-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
            archive.extractall(tmp, filter="data")
        pythonpath = os.pathsep.join(p for p in (tmp, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": pythonpath, SNAPSHOT_ENV: f"{head.stdout.strip()} {tmp}"}
        return subprocess.run([sys.executable, __file__, *argv], env=env).returncode


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and its waited
    children): their difference over the run is what other processes took (Linux only)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except OSError:
        busy = math.nan
    own = sum(
        r.ru_utime + r.ru_stime
        for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )
    return busy, own


def rate(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="log size (events)")
    parser.add_argument("--quick", action="store_true", help="100_000 events")
    parser.add_argument(
        "--snapshot", action="store_true", help="benchmark the committed HEAD, not the working tree"
    )
    args = parser.parse_args()
    if args.snapshot and not os.environ.get(SNAPSHOT_ENV):
        sys.exit(rerun_in_snapshot([a for a in sys.argv[1:] if a != "--snapshot"]))
    n = 100_000 if args.quick else args.events

    view = load_definitions(ROOT / "feature_defs").view("user_spend")
    key, ts_col = view.entity.key, view.source.timestamp
    n_features, n_aggs = len(view.ir.features), len(view.ir.aggs)
    rev = revision()
    print(
        f"featurepipe benchmark at {rev}: {n:,} events, view {view.name} ({n_features} features, "
        f"{n_aggs} aggregations), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, Polars {pl.__version__}"
    )
    print(f"featurepipe imported from {Path(featurepipe.__file__).parent}")
    busy0, own0, wall0 = *cpu_seconds(), time.perf_counter()
    df, t_gen = timed(generate_transactions, n)
    ev = normalize_events(view, df)
    n_users = ev[key].n_unique()
    pairs = int((ev.group_by(key).len()["len"].cast(pl.Int64) ** 2).sum())
    print(f"generated in {t_gen:.1f}s: {n_users:,} users, {pairs:,} same-user (query, event) pairs")

    # 1. batch: one query per event, at its own timestamp, no __arrived
    queries = ev.select(key, TS)
    fp_out, t_fp = timed(BatchProgram(view.ir).features, ev.lazy(), queries)
    print(f"batch featurepipe: {t_fp:.2f}s")
    nv_out, t_nv = timed(naive_batch, ev, queries)
    print(f"batch naive join:  {t_nv:.2f}s")
    batch_ok = batch_agrees(fp_out, nv_out)
    del fp_out, nv_out

    # 2. per-event: arrival order, dicts built before timing
    names = list(view.source.fields)
    dicts, t_dicts = timed(ev.select(names).to_dicts)
    prog = ViewProgram(view.ir)
    # the garbage collector's cost grows with live objects: time each ingest with only the
    # dicts alive (baseline first, discarded, rebuilt untimed for the queries)
    _, t_ning = timed(naive_ingest, dicts, key, ts_col)
    del _
    states, t_ing = timed(fp_ingest, prog, dicts, key)
    hist = naive_ingest(dicts, key, ts_col)
    newest = ev.group_by(key).agg(pl.col(TS).max()).sort(key).rows()
    sample = random.Random(0).sample(newest, min(QUERY_SAMPLE, len(newest)))
    fp_vals, t_q = timed(fp_queries, prog, states, sample)
    nv_vals, t_nq = timed(naive_queries, hist, sample)
    names_out = [f.name for f in view.ir.features]
    i1, i24 = names_out.index("txn_count_1h"), names_out.index("txn_count_24h")
    query_ok = all(a[i1] == b[0] and a[i24] == b[1] for a, b in zip(fp_vals, nv_vals, strict=True))
    print(
        f"per-event: dicts {t_dicts:.2f}s, ingest {t_ing:.2f}s (naive {t_ning:.2f}s), "
        f"{len(sample):,} queries {t_q:.2f}s (naive {t_nq:.2f}s)"
    )
    del dicts, states, hist

    # 3. parity, end to end through the CLI
    t_par, code, verdict, tail = parity(n)
    if revision() != rev:
        print(f"WARNING: the code changed during the run ({rev} -> {revision()})")
    print(f"parity: {t_par:.1f}s, exit {code}, {verdict}\n{tail}")

    # aggregates computed by the naive batch / per-event baselines: they do less work than the
    # view's features, so only per-event and per-query rates are compared (no "per value" rate)
    nb, nq = 9, 6
    rows = [
        (
            "batch: events/s (= query points/s)",
            rate(n, t_fp),
            rate(n, t_nv),
            f"{t_nv / t_fp:.3f}x",
            f">= {TARGET_BATCH:,}",
        ),
        ("per-event: build dicts, events/s", rate(n, t_dicts), "", "", ""),
        (
            "per-event: ingest, events/s",
            rate(n, t_ing),
            rate(n, t_ning),
            f"{t_ning / t_ing:.3f}x",
            f">= {TARGET_PER_EVENT:,}",
        ),
        (
            "per-event: query, queries/s",
            rate(len(sample), t_q),
            rate(len(sample), t_nq),
            f"{t_nq / t_q:.3f}x",
            "",
        ),
        ("parity --sample 0.1: wall s", f"{t_par:.1f}", "", "", verdict),
    ]
    head = ("measurement", "featurepipe", "baseline", "fp / baseline", "target / note")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    print()
    for r in [head, tuple("-" * w for w in widths), *rows]:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        print("| " + " | ".join(cells) + " |")
    print(
        f"\nbaselines agree with featurepipe: batch {batch_ok} (txn_count_1h/24h exact, "
        f"amount_sum_24h/amount_mean_7d within 1e-9 rel), per-event {query_ok} "
        f"(txn_count_1h/24h exact)"
    )
    print(
        f"featurepipe computes {n_features} features ({n_aggs} aggregations); baselines compute "
        f"{nb} (batch: count, sum, mean x 1h/24h/7d) and {nq} (per-event: count, sum x 1h/24h/7d)"
    )
    busy1, own1 = cpu_seconds()
    print(
        f"other processes used {busy1 - busy0 - (own1 - own0):.0f} CPU-s during the "
        f"{time.perf_counter() - wall0:.0f} s run ({os.cpu_count()} cores; this run used "
        f"{own1 - own0:.0f} CPU-s): well above 0 means the timings are contended"
    )


if __name__ == "__main__":
    main()
