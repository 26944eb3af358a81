"""materialize, vectorized, against the per-event replay it must equal byte for byte (`make bench`).

One Parquet log of ``--events`` generated transactions (``--users`` users). Each round, in
alternating order:

* ``materialize`` end to end (read, validate, sort, compute, write every state) into a fresh
  embedded valkey-server: events/s;
* the state computation alone (``entity_states`` over the same sorted events), vectorized and
  forced per event (``per_event=True``, the path every event took before): events/s of each,
  their ratio, and whether every entity's state bytes are equal.

The views: the example's ``user_spend`` (25 features, 22 aggregations) and the 10 of its
features the issue's measurement used (``--features``). Machine noise: read the ratios.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from materialize_shards import valkey

from featurepipe.batch.sources import read_events
from featurepipe.compile.polars_aggs import SEQ
from featurepipe.compile.python_state import ViewProgram
from featurepipe.dev.datagen import generate_transactions
from featurepipe.dsl.loader import load_definitions
from featurepipe.online.materialize import entity_states, materialize
from featurepipe.online.redis_conn import connect

ROOT = Path(__file__).resolve().parents[1]
UNTIL = datetime(2030, 1, 1, tzinfo=UTC)
TEN = [
    "txn_count_1h", "txn_count_24h", "txn_count_total", "amount_sum_24h", "amount_mean_7d",
    "amount_max_24h", "foreign_count_24h", "distinct_merchants_7d", "first_seen_at",
    "last_country",
]


def revision() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "featurepipe"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def compute(prog: ViewProgram, todo: pl.DataFrame, fields: list[str], key: str, per_event: bool) -> tuple[float, dict[Any, bytes]]:
    gc.collect()
    t = time.perf_counter()
    states = {e: b for e, b, _ in entity_states(prog, todo, fields, key, None, per_event=per_event)}
    return time.perf_counter() - t, states


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="100,000 events, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.events, args.rounds = 100_000, 1
    view = load_definitions(ROOT / "feature_defs").view("user_spend")
    key, fields = view.entity.key, list(view.source.fields)
    print(
        f"materialize speed at {revision()}: {args.events:,} events, {args.users:,} users, "
        f"{args.rounds} round(s); {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores; "
        f"Python {platform.python_version()}, Polars {pl.__version__}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log = work / "transactions.parquet"
        generate_transactions(args.events, users=args.users, seed=11).write_parquet(log)
        lf, _ = read_events(view.source, root=ROOT, path=log, end=UNTIL)
        todo = lf.select(*fields, SEQ).sort(key, SEQ).collect()
        programs = {
            "user_spend (25 features)": ViewProgram(view.ir),
            "10 of its features": ViewProgram(view.ir.restricted_to(TEN)),
        }
        rows: dict[str, list[tuple[float, float, bool]]] = {name: [] for name in programs}
        end_to_end: list[float] = []
        with valkey(work) as (url, _pid):
            client = connect(url)
            for r in range(args.rounds):
                for name, prog in programs.items():
                    order = [False, True] if r % 2 == 0 else [True, False]
                    timed = {pe: compute(prog, todo, fields, key, pe) for pe in order}
                    rows[name].append((timed[False][0], timed[True][0], timed[False][1] == timed[True][1]))
                    del timed
                gc.collect()
                t = time.perf_counter()
                report = materialize(view, UNTIL, client, path=log, prefix=f"fpm{r}", resume=False)
                end_to_end.append(time.perf_counter() - t)
                assert report.events == args.events, report
                client.flushall()

    def rate(seconds: float) -> str:
        return f"{args.events / seconds:,.0f}"

    print("\nState computation alone (entity_states over the sorted events), events/s: median (min-max)\n")
    print("| view | vectorized | per-event replay | vectorized / per-event | states equal |")
    print("|---|---:|---:|---:|---|")
    for name, runs in rows.items():
        vec = sorted(x[0] for x in runs)
        per = sorted(x[1] for x in runs)
        ratios = sorted(p / v for v, p, _ in runs)
        mid = len(runs) // 2
        print(
            f"| {name} | {rate(vec[mid])} ({rate(vec[-1])}-{rate(vec[0])}) | "
            f"{rate(per[mid])} ({rate(per[-1])}-{rate(per[0])}) | "
            f"{ratios[mid]:.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}) | {all(x[2] for x in runs)} |"
        )
    e2e = sorted(end_to_end)
    print(
        f"\nmaterialize end to end (read, validate, sort, compute, write {args.users:,} states to "
        f"valkey), user_spend: {rate(e2e[len(e2e) // 2])} events/s median "
        f"({rate(e2e[-1])}-{rate(e2e[0])}); goal >= 500,000: "
        f"{'met' if args.events / e2e[len(e2e) // 2] >= 500_000 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
