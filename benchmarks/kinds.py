"""Cost of each aggregation kind beside `sum` in the same run (`make bench`).

One view per kind, each with the same 7-day window over the same generated transactions (and a
lifetime variant): state bytes per entity after the whole log (as stored in Redis), per-event
ingest CPU, per-entity decode + query CPU (what a lookup pays besides the round trip), and the
batch plan over one query point per event. Every figure is printed with its ratio to `sum`
measured in the same run, which is what to read on a noisy machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import featurepipe as fp  # noqa: E402
from featurepipe.compile.polars_aggs import TS, BatchProgram  # noqa: E402
from featurepipe.compile.python_state import ViewProgram, collector_paused  # noqa: E402
from featurepipe.dev.datagen import generate_transactions  # noqa: E402
from featurepipe.parity.harness import normalize_events  # noqa: E402

# the example's contract, entity and source (feature_defs/fraud.py)
_EXAMPLE = fp.load_definitions(ROOT / "feature_defs").view("user_spend")
USER, SOURCE = _EXAMPLE.entity, _EXAMPLE.source
W = "7d"
KINDS: dict[str, Any] = {
    "sum": lambda t: fp.sum(t.amount, window=W),
    "count_distinct": lambda t: fp.count_distinct(t.merchant_id, window=W),
    "last": lambda t: fp.last(t.country, window=W),
    "mode": lambda t: fp.mode(t.merchant_id, window=W),
    "approx_percentile": lambda t: fp.approx_percentile(t.amount, 0.9, window=W),
    "decayed_sum": lambda t: fp.decayed_sum(t.amount, half_life="1d", window=W),
    "sum (hop 1h)": lambda t: fp.sum(t.amount, window=W, hop="1h"),
    "mode (hop 1h)": lambda t: fp.mode(t.merchant_id, window=W, hop="1h"),
    "approx_percentile (hop 1h)": lambda t: fp.approx_percentile(t.amount, 0.9, window=W, hop="1h"),
    "last_k (k 5)": lambda t: fp.last_k(t.amount, 5, window=W),
    "first_k (k 5)": lambda t: fp.first_k(t.amount, 5, window=W),
    "last_distinct_k (k 5)": lambda t: fp.last_distinct_k(t.merchant_id, 5, window=W),
    "count_by": lambda t: fp.count_by(t.merchant_id, window=W),
    "count_by (hop 1h)": lambda t: fp.count_by(t.merchant_id, window=W, hop="1h"),
    "sum by channel": lambda t: fp.sum(t.amount, by=t.channel, window=W),
    "sum by channel (hop 1h)": lambda t: fp.sum(t.amount, by=t.channel, window=W, hop="1h"),
    "last_k (k 5, lifetime)": lambda t: fp.last_k(t.amount, 5),
    "mode (lifetime)": lambda t: fp.mode(t.merchant_id),
    "approx_percentile (lifetime)": lambda t: fp.approx_percentile(t.amount, 0.9),
}


def measure(name: str, fn: Any, log: pl.DataFrame) -> dict[str, float]:
    view = fp.feature_view(entity=USER, source=SOURCE, name="k", lateness="1h")(lambda t: {"f": fn(t)})
    ev = normalize_events(view, log)
    rows = list(ev.iter_rows(named=True))
    prog = ViewProgram(view.ir)
    states: dict[str, Any] = {}
    with collector_paused():
        t0 = time.thread_time()
        for seq, row in enumerate(rows):
            st = states.get(row["user_id"])
            if st is None:
                st = states[row["user_id"]] = prog.new_state()
            prog.ingest(st, row, seq)
        ingest = time.thread_time() - t0
    blobs = [prog.dumps(s) for s in states.values()]
    at_us = int(ev[TS].max()) + 1  # type: ignore[arg-type]
    t0 = time.thread_time()
    for b in blobs:
        prog.query(prog.loads(b), at_us)
    query = time.thread_time() - t0
    t0 = time.perf_counter()
    BatchProgram(view.ir).features(ev.lazy(), ev.select("user_id", TS))
    batch = time.perf_counter() - t0
    return {
        "bytes": statistics.mean(len(b) for b in blobs),
        "ingest_us": ingest / len(rows) * 1e6,
        "query_us": query / len(blobs) * 1e6,
        "batch_s": batch,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=2_000)
    args = ap.parse_args()
    print(
        f"aggregation kinds, window {W}: {args.events:,} events, {args.users:,} users over 30 days, "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    log = generate_transactions(args.events, users=args.users, seed=9)
    results = {name: measure(name, fn, log) for name, fn in KINDS.items()}
    base = results["sum"]
    print(
        f"\n{'kind':30s} {'state B/entity':>15s} {'ingest us/event':>16s} {'decode+query us':>16s} "
        f"{'batch s':>9s}   (ratio to sum)"
    )
    for name, r in results.items():
        print(
            f"{name:30s} {r['bytes']:>9,.0f} {r['bytes'] / base['bytes']:4.1f}x "
            f"{r['ingest_us']:>10.2f} {r['ingest_us'] / base['ingest_us']:4.1f}x "
            f"{r['query_us']:>10.1f} {r['query_us'] / base['query_us']:4.1f}x "
            f"{r['batch_s']:>6.2f} {r['batch_s'] / base['batch_s']:4.1f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
