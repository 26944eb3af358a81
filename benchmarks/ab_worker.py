"""A/B benchmark of the stream worker: the working tree against a base revision, same run.

One embedded broker and valkey-server, one topic of generated events (4 partitions, keyed by
user); each round runs a worker of each tree (``git archive`` of ``--base`` and the working
tree, alternating order) in a fresh subprocess, with its own group and key prefix, until it has
committed every event. Throughput is events / (last commit - first poll that returned events):
the consuming, validating, ingesting and committing work, without start-up. Prints best and
median per tree and the ratio working / base of the medians (below 1 = the working tree is
slower).

    python benchmarks/ab_worker.py --events 200000 --rounds 3 [--base <rev>]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ab import ROOT, export  # same directory: the one export of a base revision

CHILD = r"""
import json, sys, time
from pathlib import Path
import featurepipe
from featurepipe.online.redis_conn import connect
from featurepipe.stream.worker import StreamWorker, WorkerConfig

root, bootstrap, url, topic, prefix, n = sys.argv[1:7]
n = int(n)
assert Path(featurepipe.__file__).resolve().is_relative_to(Path(root).resolve())
defs = featurepipe.load_definitions(Path(root) / "feature_defs")
w = StreamWorker(
    defs,
    WorkerConfig(bootstrap=bootstrap, group_id=prefix, prefix=prefix, idle_exit_s=3, max_events=n),
    connect(url),
    views=["user_spend"],
    topics={"transactions": topic},
)
first = [None]
orig = w.process
def process(polled):
    if first[0] is None:
        first[0] = time.perf_counter()
    orig(polled)
w.process = process
c = w.run()
assert c.events == n, (c.events, n)
# the idle exit adds its wait after the last batch: measure up to the last commit instead
print(json.dumps({"seconds": c.last_flush - (time.time() - (time.perf_counter() - first[0]))}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from featurepipe.dev import infra
    from featurepipe.dev.datagen import generate_transactions
    from featurepipe.stream.produce import ensure_topics, produce_frame

    with tempfile.TemporaryDirectory(prefix="featurepipe-abw-") as tmp:
        base_tree = Path(tmp) / "base"
        sha = export(args.base, base_tree)
        svc = infra.up(workdir=Path(tmp) / "dev")
        try:
            topic = f"abw-{time.time_ns()}"
            ensure_topics(svc.kafka_bootstrap, {topic: 4})
            produce_frame(
                generate_transactions(args.events, users=10_000, seed=5),
                topic,
                svc.kafka_bootstrap,
                "user_id",
            )
            trees = {f"base {sha}": base_tree, "working tree": ROOT}
            rates: dict[str, list[float]] = {name: [] for name in trees}
            for r in range(args.rounds):
                order = list(trees) if r % 2 == 0 else list(reversed(trees))
                for name in order:
                    tree = trees[name]
                    prefix = f"abw-{r}-{time.time_ns()}"
                    done = subprocess.run(
                        [
                            sys.executable, "-c", CHILD, str(tree), svc.kafka_bootstrap,
                            svc.redis_url, topic, prefix, str(args.events),
                        ],
                        env={**os.environ, "PYTHONPATH": str(tree)},
                        cwd=tree,
                        capture_output=True,
                        text=True,
                    )
                    if done.returncode:
                        sys.exit(f"worker of {name} failed:\n{done.stderr[-3000:]}")
                    out = json.loads(done.stdout.strip().splitlines()[-1])
                    rates[name].append(args.events / out["seconds"])
                    print(f"round {r + 1}: {name}: {rates[name][-1]:,.0f} events/s", file=sys.stderr)
        finally:
            infra.down(workdir=Path(tmp) / "dev")
    print(f"worker A/B, {args.events:,} events, 4 partitions, 10,000 users, {args.rounds} rounds")
    print("| tree | events/s best | median |")
    print("|---|---|---|")
    for name, xs in rates.items():
        print(f"| {name} | {max(xs):,.0f} | {statistics.median(xs):,.0f} |")
    base_name, work_name = list(trees)
    ratio = statistics.median(rates[work_name]) / statistics.median(rates[base_name])
    print(f"working / base (median): {ratio:.3f}")


if __name__ == "__main__":
    main()
