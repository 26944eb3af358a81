"""Decode + query of dense entities' states (a lookup's work besides the round trip): the
working tree against a base revision, in the same run.

A lookup decodes each state and queries it once. Where windows hold many events, the query
builds what it keeps for the next query (running sums, counted values: ``compile.python_state``)
and a lookup never asks again: this measures what that costs against folding the window.

For each of the three ratings views of ``benchmarks/parity_speed.py`` (by user, movie, genre)
and the ``user_spend`` view on a log of few, busy users, each tree's child (a fresh
subprocess, alternating the order) replays the log into states (no queries), encodes them,
then times, in CPU seconds, ``loads`` + ``query`` at the log's end of the 100 entities with the
most retained events, ``--repeat`` times over. The answers of both trees must be identical.

    python benchmarks/dense_queries.py --base <rev> [--rounds 3] [--repeat 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab import ROOT, export, run_child  # the benchmarks directory is on sys.path
from parity_speed import ML_DEFS, generate_ratings

CHILD = r"""
import hashlib, json, sys, time
from pathlib import Path
import polars as pl
import featurepipe
from featurepipe.compile.python_state import ViewProgram
from featurepipe.dev.datagen import generate_transactions
from featurepipe.dsl.loader import load_definitions
from featurepipe.parity.harness import normalize_events

root, defs, logs, repeat = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
assert Path(featurepipe.__file__).resolve().is_relative_to(root.resolve()), featurepipe.__file__
out = {}
views = [(load_definitions(defs).view(v), logs) for v in ("user_ratings", "movie_ratings", "genre_ratings")]
views.append((load_definitions(str(root / "feature_defs")).view("user_spend"), None))
for view, log in views:
    if log is None:
        events = generate_transactions(200_000, users=200)
    else:
        events = pl.read_parquet(log)
    ev = normalize_events(view, events)
    key = view.entity.key
    prog = ViewProgram(view.ir)
    states = {}
    for seq, e in enumerate(ev.to_dicts()):
        if e[key] is None:
            continue
        s = states.get(e[key])
        if s is None:
            s = states[e[key]] = prog.new_state()
        prog.ingest(s, e, seq)
    busiest = sorted(states, key=lambda k: (-len(states[k].buffer), str(k)))[:100]
    blobs = [prog.dumps(states[k]) for k in busiest]
    t_end = max(s.max_ts for s in states.values()) + 1
    times = []
    for _ in range(repeat):
        t = time.process_time()
        answers = [prog.query(prog.loads(b), t_end) for b in blobs]
        times.append(time.process_time() - t)
    out[view.name] = {
        "ms": sorted(times)[len(times) // 2] * 1e3,
        "events": sum(len(states[k].buffer) for k in busiest),
        "digest": hashlib.sha256(repr(answers).encode()).hexdigest(),
    }
print(json.dumps(out))
"""


def run(tree: Path, defs: Path, log: Path, repeat: int) -> dict[str, dict[str, float | str]]:
    result: dict[str, dict[str, float | str]] = run_child(
        CHILD, tree, str(defs), str(log), str(repeat)
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--ml-events", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="featurepipe-dense-") as tmp:
        work = Path(tmp)
        base_tree = work / "base"
        base_tree.mkdir()
        sha = export(args.base, base_tree)
        defs = work / "ml_defs.py"
        defs.write_text(ML_DEFS)
        log = work / "ratings.parquet"
        generate_ratings(args.ml_events).write_parquet(log)
        trees = {f"base {sha}": base_tree, "working tree": ROOT}
        runs: dict[str, list[dict[str, dict[str, float | str]]]] = {name: [] for name in trees}
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name in order:
                runs[name].append(run(trees[name], defs, log, args.repeat))
                print(f"round {r + 1}/{args.rounds}: {name} done", file=sys.stderr)
    base_name, work_name = list(trees)
    print(
        f"decode + query of the 100 entities with the most retained events, at the log's end; "
        f"CPU ms per 100 entities, median of {args.repeat} repeats, median of {args.rounds} "
        f"rounds alternating; {os.cpu_count()} cores"
    )
    print(f"| view | retained events | {base_name} | {work_name} | working / base |")
    print("|---|---|---|---|---|")
    same = True
    for view in runs[base_name][0]:
        med = {
            name: statistics.median(float(x[view]["ms"]) for x in rs) for name, rs in runs.items()
        }
        digests = {str(x[view]["digest"]) for rs in runs.values() for x in rs}
        same &= len(digests) == 1
        events = runs[work_name][0][view]["events"]
        print(
            f"| {view} | {events:,} | {med[base_name]:.2f} | {med[work_name]:.2f} | "
            f"{med[work_name] / med[base_name]:.3f} |"
        )
    print(f"identical answers in every run: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
