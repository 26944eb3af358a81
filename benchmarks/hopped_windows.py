"""Hopped windows against sliding ones: state size, lookup time, batch time (`make bench`).

Two views over the same generated transactions differ only in their windows: every feature of
one slides (``window="7d"``), the other hops (``window="7d", hop="1h"``, Chronon's sawtooth).
The hopped view keeps events individually only back to the hop boundary before newest -
lateness and older ones as one tile per hour, so busy entities hold at most 7 x 24 tiles.

Printed, each hopped figure beside the sliding one measured in the same run:

1. state bytes and retained items per entity after the whole log (msgpack, as stored);
2. per-entity CPU to decode a state and answer a query at the log's end (the lookup's work);
3. 100-entity lookups through Redis (embedded valkey): states written by materialize, p50/p99
   of ``OnlineReader.read`` with the answer cache off, the two views interleaved call by call;
4. the batch plan over the log (one query per event), which does not use tiles.

Values are checked equal to the batch plan at the lookup time before timing.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import featurepipe as fp  # noqa: E402
from featurepipe.compile.polars_aggs import TS, BatchProgram  # noqa: E402
from featurepipe.compile.python_state import ViewProgram  # noqa: E402
from featurepipe.dev.datagen import generate_transactions  # noqa: E402
from featurepipe.parity.harness import normalize_events  # noqa: E402

# the example's contract, entity and source (feature_defs/fraud.py)
_EXAMPLE = fp.load_definitions(ROOT / "feature_defs").view("user_spend")
USER, SOURCE = _EXAMPLE.entity, _EXAMPLE.source


def make_view(name: str, hop: str | None) -> Any:
    w: dict[str, Any] = {"window": "7d", "hop": hop}

    def features(t: Any) -> dict[str, Any]:
        return {
            "count_7d": fp.count(**w),
            "amount_sum_7d": fp.sum(t.amount, default=0.0, **w),
            "amount_mean_7d": fp.mean(t.amount, **w),
            "amount_std_7d": fp.std(t.amount, **w),
            "amount_max_7d": fp.max(t.amount, **w),
            "merchants_7d": fp.count_distinct(t.merchant_id, **w),
            "foreign_7d": fp.count(where=t.country.fill_null("?") != "US", **w),
            "last_country_7d": fp.last(t.country, **w),
        }

    return fp.feature_view(entity=USER, source=SOURCE, name=name, lateness="1h")(features)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--no-redis", action="store_true", help="skip the lookups through Redis")
    args = ap.parse_args()
    print(
        f"hopped vs sliding windows: {args.events:,} events, {args.users} users over 30 days, "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    log = generate_transactions(args.events, users=args.users, seed=3)
    views = {"sliding": make_view("spend_sliding", None), "hopped": make_view("spend_hopped", "1h")}
    end_us = int(log["event_time"].cast(pl.Int64).max()) + 1  # type: ignore[arg-type]
    at_us = end_us + 1_800_000_000  # half an hour after the last event
    R: dict[str, dict[str, Any]] = {}
    for label, view in views.items():
        ev = normalize_events(view, log)
        prog = ViewProgram(view.ir)
        states: dict[str, Any] = {}
        for seq, row in enumerate(ev.iter_rows(named=True)):
            st = states.get(row["user_id"])
            if st is None:
                st = states[row["user_id"]] = prog.new_state()
            prog.ingest(st, row, seq)
        blobs = {k: prog.dumps(s) for k, s in states.items()}
        sizes = [len(b) for b in blobs.values()]
        items = [len(s.buffer) + sum(len(t) for t in s.tiles) for s in states.values()]
        t0 = time.thread_time()
        for _ in range(5):
            answers = {k: prog.query(prog.loads(b), at_us) for k, b in blobs.items()}
        cpu_us = (time.thread_time() - t0) / (5 * len(blobs)) * 1e6
        keys = sorted(blobs)
        q = pl.DataFrame({"user_id": keys, TS: [at_us] * len(keys)})
        t1 = time.perf_counter()
        batch_rows = BatchProgram(view.ir).features(ev.lazy(), q).drop("user_id", TS).rows()
        assert [answers[k] for k in keys] == batch_rows, f"{label}: per-event != batch"
        qe = ev.select("user_id", TS)
        t1 = time.perf_counter()
        BatchProgram(view.ir).features(ev.lazy(), qe)
        batch_s = time.perf_counter() - t1
        R[label] = {
            "bytes_mean": statistics.mean(sizes),
            "bytes_p99": pct(sizes, 99),
            "items_mean": statistics.mean(items),
            "items_max": max(items),
            "decode_query_us": cpu_us,
            "batch_s": batch_s,
            "view": view,
            "states": len(states),
        }
        print(
            f"{label:8s} {len(states)} entities: state bytes mean {R[label]['bytes_mean']:,.0f} "
            f"p99 {R[label]['bytes_p99']:,}; retained items (events + tiles) mean "
            f"{R[label]['items_mean']:.1f} max {R[label]['items_max']}; decode + query "
            f"{cpu_us:.1f} us CPU/entity; batch plan over {len(ev):,} query points {batch_s:.2f}s"
        )
    if not args.no_redis:
        lookups(log, views, at_us, R)
    s, h = R["sliding"], R["hopped"]
    print("\nhopped / sliding (same run):")
    print(f"  state bytes, mean          {h['bytes_mean'] / s['bytes_mean']:.2f}x")
    print(f"  state bytes, p99           {h['bytes_p99'] / s['bytes_p99']:.2f}x")
    print(f"  retained items, max        {h['items_max'] / s['items_max']:.2f}x")
    print(f"  decode + query CPU         {h['decode_query_us'] / s['decode_query_us']:.2f}x")
    if "p50" in h:
        print(f"  100-entity lookup p50      {h['p50'] / s['p50']:.2f}x")
        print(f"  100-entity lookup p99      {h['p99'] / s['p99']:.2f}x")
    print(f"  batch plan time            {h['batch_s'] / s['batch_s']:.2f}x")
    return 0


def lookups(log: pl.DataFrame, views: dict[str, Any], at_us: int, R: dict[str, Any]) -> None:
    from featurepipe.dev import infra
    from featurepipe.online.lookup import OnlineReader
    from featurepipe.online.materialize import materialize
    from featurepipe.online.redis_conn import connect

    with tempfile.TemporaryDirectory(prefix="fp-hop-") as tmp:
        work = Path(tmp)
        svc = infra.up(workdir=work)
        try:
            client = connect(svc.redis_url)
            path = work / "tx.parquet"
            log.write_parquet(path)
            until = datetime.fromtimestamp(at_us // 1_000_000, UTC)
            readers = {}
            for label, view in views.items():
                materialize(view, until, client, path=path, prefix=f"hop-{label}")
                readers[label] = (
                    OnlineReader(client, [view], f"hop-{label}", cache_bytes=0),
                    {view.name: list(view.feature_names)},
                )
            users = sorted(log["user_id"].unique().to_list())
            rng = random.Random(5)
            batches = [rng.sample(users, min(100, len(users))) for _ in range(400)]
            times: dict[str, list[float]] = {k: [] for k in readers}
            for i, ents in enumerate(batches):
                order = list(readers) if i % 2 else list(reversed(readers))
                for label in order:
                    reader, wanted = readers[label]
                    t = time.perf_counter()
                    reader.read(ents, wanted, at_us=at_us)
                    if i >= 20:  # warm-up
                        times[label].append((time.perf_counter() - t) * 1e3)
            for label, ts in times.items():
                R[label]["p50"], R[label]["p99"] = pct(ts, 50), pct(ts, 99)
                print(f"{label:8s} 100-entity lookup: p50 {pct(ts, 50):.2f} ms, p99 {pct(ts, 99):.2f} ms")
        finally:
            infra.down(workdir=work)


if __name__ == "__main__":
    raise SystemExit(main())
