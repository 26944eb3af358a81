"""A/B benchmark of the compilers: the working tree against a base revision, in the same run.

A refactor must not slow the hot paths. This script exports ``--base`` (default ``HEAD``) with
``git archive`` and times, in fresh subprocesses that alternate between the two trees (so drift
on a noisy machine hits both alike), on the generated transactions log and the
``user_spend`` view of each tree's own ``feature_defs/``:

- batch: ``BatchProgram.features`` with one query per event at its own time;
- per-event ingest: ``ViewProgram.ingest`` over the log in arrival order;
- per-event query: ``ViewProgram.query`` for 10,000 sampled entities at their newest time;
- state bytes: ``dumps`` + ``loads`` of every entity's state.

Times are CPU seconds of the process (all threads), which other load on the machine disturbs far
less than wall time; the batch step's wall seconds are printed too (Polars runs on every core). It prints min and median CPU seconds per tree and the ratio working / base of the medians
(above 1 = the working tree is slower), and checks that both trees computed identical values
and identical state bytes (with ``--layout-change``, only values: the bytes' sizes are printed).

    python benchmarks/ab.py --events 200000 --rounds 5 [--base <rev>] [--batch-only]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import hashlib, json, random, sys, time
from pathlib import Path
import polars as pl
import featurepipe
from featurepipe.compile.polars_aggs import TS, BatchProgram
from featurepipe.compile.python_state import ViewProgram
from featurepipe.dev.datagen import generate_transactions
from featurepipe.dsl.loader import load_definitions
from featurepipe.parity.harness import normalize_events

root, n, users = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
steps = set(sys.argv[4].split(","))
assert Path(featurepipe.__file__).resolve().is_relative_to(root.resolve()), featurepipe.__file__
view = load_definitions(root / "feature_defs").view("user_spend")
key = view.entity.key
ev = normalize_events(view, generate_transactions(n, users=users))
out = {}
clock = time.process_time  # CPU seconds of every thread: robust to other load on the machine
t, wall = clock(), time.perf_counter()
batch = BatchProgram(view.ir).features(ev.lazy(), ev.select(key, TS))
out["batch"], out["batch (wall)"] = clock() - t, time.perf_counter() - wall
digest = hashlib.sha256(repr(batch.rows()).encode())
if "ingest" not in steps:
    out.update(digest=digest.hexdigest(), states="", state_size=0)
    print(json.dumps(out))
    sys.exit(0)
dicts = ev.select(list(view.source.fields)).to_dicts()
prog = ViewProgram(view.ir)
states = {}
t = clock()
for seq, e in enumerate(dicts):
    st = states.get(e[key])
    if st is None:
        st = states[e[key]] = prog.new_state()
    prog.ingest(st, e, seq)
out["ingest"] = clock() - t
newest = ev.group_by(key).agg(pl.col(TS).max()).sort(key).rows()
sample = random.Random(0).sample(newest, min(10_000, len(newest)))
t = clock()
values = [prog.query(states[u], ts) for u, ts in sample]
out["query"] = clock() - t
t = clock()
blobs = [prog.dumps(s) for s in states.values()]
for b in blobs:
    prog.loads(b)
out["state_bytes"] = clock() - t
digest.update(repr(values).encode())
out["digest"] = digest.hexdigest()
digest = hashlib.sha256()
for b in blobs:
    digest.update(b)
out["states"] = digest.hexdigest()
out["state_size"] = sum(map(len, blobs))
print(json.dumps(out))
"""

STEPS = ("batch", "ingest", "query", "state_bytes")


def export(rev: str, dest: Path) -> str:
    git = ["git", "-C", str(ROOT)]
    sha = subprocess.run([*git, "rev-parse", "--short", rev], capture_output=True, text=True)
    tar = subprocess.run([*git, "archive", "--format=tar", rev], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        archive.extractall(dest, filter="data")
    return sha.stdout.strip()


def run_child(child: str, tree: Path, *args: str) -> Any:
    """Run the script ``child`` with ``tree`` first on the path (its ``featurepipe``) and
    ``args``; its last line of output, as JSON."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", child, str(tree), *args],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(f"benchmark child failed in {tree}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(
    tree: Path, n: int, users: int = 10_000, steps: tuple[str, ...] = STEPS
) -> dict[str, float | str]:
    result: dict[str, float | str] = run_child(CHILD, tree, str(n), str(users), ",".join(steps))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare against")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--users",
        type=int,
        default=10_000,
        help="entities of the generated log (fewer: denser windows; 200 users of 200,000 "
        "events hold about 230 events per 7-day window)",
    )
    parser.add_argument(
        "--layout-change",
        action="store_true",
        help="the working tree changes the stored state layout: its bytes may differ "
        "(values must not)",
    )
    parser.add_argument(
        "--batch-only",
        action="store_true",
        help="time the batch step alone (the others take most of a run's time)",
    )
    args = parser.parse_args()
    steps = ("batch", "batch (wall)") if args.batch_only else (*STEPS, "batch (wall)")
    with tempfile.TemporaryDirectory(prefix="featurepipe-ab-") as tmp:
        base_tree = Path(tmp)
        sha = export(args.base, base_tree)
        trees = {f"base {sha}": base_tree, "working tree": ROOT}
        runs: dict[str, list[dict[str, float | str]]] = {name: [] for name in trees}
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name in order:
                runs[name].append(run(trees[name], args.events, args.users, steps))
                print(f"round {r + 1}/{args.rounds}: {name} done", file=sys.stderr)
    digests = {str(x["digest"]) for rs in runs.values() for x in rs}
    states = {str(x["states"]) for rs in runs.values() for x in rs}
    print(
        f"A/B, {args.events:,} events of {args.users:,} users, {args.rounds} rounds alternating, "
        f"{os.cpu_count()} cores; CPU seconds min / median"
    )
    print("| step | " + " | ".join(trees) + " | working / base (median) |")
    print("|---|" + "---|" * len(trees) + "---|")
    base_name, work_name = list(trees)
    for step in steps:
        cells = []
        med = {}
        for name in trees:
            xs = [float(x[step]) for x in runs[name]]
            med[name] = statistics.median(xs)
            cells.append(f"{min(xs):.3f} / {med[name]:.3f}")
        print(f"| {step} | " + " | ".join(cells) + f" | {med[work_name] / med[base_name]:.3f} |")
    print(f"identical values in every run: {len(digests) == 1}")
    print(f"identical state bytes in every run: {len(states) == 1}")
    if len(states) != 1:
        sizes = {name: int(rs[0]["state_size"]) for name, rs in runs.items()}
        print("state bytes in all: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
    # each tree writes the same bytes in every run, whatever the other writes
    stable = all(len({str(x["states"]) for x in rs}) == 1 for rs in runs.values())
    if len(digests) != 1 or not stable or (len(states) != 1 and not args.layout_change):
        sys.exit(1)


if __name__ == "__main__":
    main()
