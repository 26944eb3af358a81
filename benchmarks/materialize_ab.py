"""A/B benchmark of ``materialize`` end to end: the working tree against a base revision.

One Parquet log of ``generate_transactions(--events, users=--users, seed=11)``. Each round, a
fresh process of each tree (alternating which goes first) runs ``materialize`` of the view
``user_spend`` (25 features) from that log into the Redis on 127.0.0.1:6379 under its own key
prefix: read, validate, sort, compute and write every state. Each child prints its wall and
CPU seconds and a checksum of every key it wrote (but the generation record, a fresh id and
time each run, and the meta record's clock time), read back in key order, then deletes its keys; both trees must write the same
states.

    .venv/bin/python benchmarks/materialize_ab.py --base <rev> [--events 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab import ROOT, export, run_child  # the benchmarks directory is on sys.path

REDIS = "redis://127.0.0.1:6379/0"

CHILD = r"""
import hashlib, json, sys, time
from datetime import UTC, datetime
import redis
import featurepipe
from featurepipe.dsl.loader import load_definitions
from featurepipe.online.materialize import materialize

tree, log, prefix, url = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
assert featurepipe.__file__.startswith(tree), featurepipe.__file__
view = load_definitions(f"{tree}/feature_defs").view("user_spend")
client = redis.Redis.from_url(url)
wall, cpu = time.perf_counter(), time.process_time()
report = materialize(view, datetime(2030, 1, 1, tzinfo=UTC), client, path=log, prefix=prefix,
                     resume=False)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
digest = hashlib.sha256()
keys = sorted(client.scan_iter(match=f"{prefix}*", count=10_000))
pipe = client.pipeline(transaction=False)
for k in keys:
    pipe.type(k)
types = pipe.execute()
for k, t in zip(keys, types):
    if k == f"{prefix}:generation".encode():  # a fresh id and clock time each run
        continue
    digest.update(k[len(prefix):])
    if t == b"hash":
        for f, v in sorted(client.hgetall(k).items()):
            if f != b"materialized_at":  # the meta record's clock time
                digest.update(f + b"=" + v)
    elif t == b"string":
        digest.update(client.get(k) or b"")
for i in range(0, len(keys), 1000):
    client.delete(*keys[i : i + 1000])
print(json.dumps({"wall": wall, "cpu": cpu, "events": report.events, "keys": len(keys),
                  "digest": digest.hexdigest()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from featurepipe.dev.datagen import generate_transactions

    with tempfile.TemporaryDirectory(prefix="featurepipe-materialize-ab-") as tmp:
        work = Path(tmp)
        base_tree = work / "base"
        base_tree.mkdir()
        sha = export(args.base, base_tree)
        log = work / "transactions.parquet"
        generate_transactions(args.events, users=args.users, seed=11).write_parquet(log)
        trees = {f"base {sha}": base_tree, "working tree": ROOT}
        runs: dict[str, list[dict[str, float | str]]] = {name: [] for name in trees}
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for i, name in enumerate(order):
                prefix = f"materialize-ab-{r}-{i}"
                runs[name].append(run_child(CHILD, trees[name], str(log), prefix, REDIS))
                print(f"round {r + 1}/{args.rounds}: {name} done", file=sys.stderr)
    print(
        f"materialize A/B, {args.events:,} events of {args.users:,} users, user_spend, "
        f"{args.rounds} rounds alternating, into Redis 127.0.0.1:6379; events/s from wall "
        "seconds, median (min-max); CPU seconds median"
    )
    print("| tree | events/s | CPU s |")
    print("|---|---|---|")
    med = {}
    for name, xs in runs.items():
        rates = [args.events / float(x["wall"]) for x in xs]
        med[name] = statistics.median(rates)
        cpu = statistics.median(float(x["cpu"]) for x in xs)
        print(f"| {name} | {med[name]:,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) | {cpu:.2f} |")
    base_name, work_name = list(trees)
    print(f"working / base events/s (medians): {med[work_name] / med[base_name]:.3f}")
    digests = {str(x["digest"]) for xs in runs.values() for x in xs}
    print(f"identical states in every run: {len(digests) == 1}")
    if len(digests) != 1:
        for name, xs in runs.items():
            print(f"{name}: " + ", ".join(str(x["digest"])[:12] for x in xs))
    if len(digests) != 1:
        sys.exit(1)


if __name__ == "__main__":
    main()
