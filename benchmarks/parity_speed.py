"""`featurepipe parity` in process: the working tree's harness against a base revision's, same run.

The base revision is exported with ``git archive`` (``benchmarks/ab.py``'s helper). Each round
runs ``run_parity`` of each tree in a fresh subprocess, alternating the order (drift on a noisy
machine hits both alike), on the same event logs and the same definitions:

- ``user_spend`` (``feature_defs/fraud.py``, 25 features) on ``generate_transactions(--events)``;
- three views of a MovieLens-like ratings log (``generate_ratings`` below, ``--ml-events``):
  keyed by user, by movie and by genre (a third key with few, dense entities). Users rate in
  bursts (hundreds of ratings within minutes, many in the same second), movie popularity is
  Zipf-distributed, a few ratings, genres and user ids are null, 2% of the events arrive up to
  an hour late.

Times are CPU seconds of the child process (``time.process_time``, all threads): in each child
``time.perf_counter`` is replaced by it, so the report's own ``seconds_stream`` (the per-event
replay with its queries, the figure ``featurepipe parity`` prints as events/s) is CPU time too;
the replay is single-threaded, so that is its wall time on an idle machine. "whole" is the
whole ``run_parity`` call (replay, batch plan, comparison). The script fails unless both trees
give identical reports (every count, every mismatch, every first difference).

    python benchmarks/parity_speed.py --events 200000 --ml-events 100000 --rounds 3 [--base <rev>]
    python benchmarks/parity_speed.py --ml-events 100000 --explain
    python benchmarks/parity_speed.py --jobs 2 --rounds 4 [--base <rev>]  # wall: 1 and 2 processes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab import ROOT, export  # the benchmarks directory is on sys.path, not a package

ML_DEFS = '''
"""Three views of one MovieLens-like ratings source: by user, by movie, by genre."""
from datetime import datetime

from pydantic import BaseModel

import featurepipe as fp


class Rating(BaseModel):
    userId: int | None
    movieId: int
    rating: float | None
    genre: str | None
    timestamp: datetime


ratings = fp.Source("ratings", schema=Rating, timestamp="timestamp")


@fp.feature_view(entity=fp.Entity("user", key="userId"), source=ratings, lateness="1d")
def user_ratings(t):
    return {
        "n_total": fp.count(),
        "n_30d": fp.count(window="30d"),
        "mean_rating_30d": fp.mean(t.rating, window="30d"),
        "std_rating_30d": fp.std(t.rating, window="30d"),
        "max_rating_7d": fp.max(t.rating, window="7d"),
        "distinct_movies": fp.count_distinct(t.movieId),
        "distinct_genres_30d": fp.count_distinct(t.genre, window="30d"),
        "last_movie": fp.last(t.movieId),
        "first_seen": fp.first(t.timestamp),
        "high_30d": fp.count(window="30d", where=t.rating >= 4.0),
    }


@fp.feature_view(entity=fp.Entity("movie", key="movieId"), source=ratings, lateness="1d")
def movie_ratings(t):
    return {
        "n_total": fp.count(),
        "mean_rating": fp.mean(t.rating),
        "n_7d": fp.count(window="7d"),
        "mean_rating_30d": fp.mean(t.rating, window="30d"),
        "distinct_users_30d": fp.count_distinct(t.userId, window="30d"),
        "last_rating": fp.last(t.rating),
    }


@fp.feature_view(entity=fp.Entity("genre", key="genre"), source=ratings, lateness="1h")
def genre_ratings(t):
    return {
        "n_1h": fp.count(window="1h"),
        "n_24h": fp.count(window="24h"),
        "mean_rating_24h": fp.mean(t.rating, window="24h"),
        "distinct_users_24h": fp.count_distinct(t.userId, window="24h"),
        "n_total": fp.count(),
    }
'''

GENRES = ["Drama", "Comedy", "Action", "Thriller", "Romance", "Horror", "Sci-Fi", "Documentary"]
GENRES += ["Animation", "Crime", "Children", "Mystery"]


def generate_ratings(
    n: int,
    *,
    users: int = 2_000,
    movies: int = 5_000,
    years: float = 3.0,
    late_fraction: float = 0.02,
    seed: int = 11,
) -> pl.DataFrame:
    """``n`` MovieLens-like ratings in arrival order (see the module docstring)."""
    rng = np.random.default_rng(seed)
    weight = rng.pareto(1.2, users) + 1.0  # ratings per user: heavy-tailed
    per_user = np.maximum(1, weight / weight.sum() * n).astype(np.int64)
    user = np.repeat(np.arange(1, users + 1), per_user)[:n]
    user = np.concatenate([user, rng.integers(1, users + 1, n - len(user))])
    span = int(years * 365 * 86_400)
    first_day = rng.integers(0, span, users)[user - 1]
    # sessions a few days apart; within one, ratings seconds apart, often the same second
    session = (rng.geometric(0.3, n) - 1) * rng.integers(1, 40, n) * 86_400
    within = rng.exponential(20.0, n).astype(np.int64) // 3 * 3
    seconds = np.minimum(first_day + session + within, span - 1)
    movie = rng.zipf(1.3, n) % movies + 1
    start_us = int(datetime(2016, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
    ts = seconds * 1_000_000 + start_us
    frame = pl.DataFrame(
        {
            "userId": user,
            "movieId": movie,
            "rating": rng.integers(1, 11, n) / 2.0,
            "genre": np.array(GENRES, dtype=object)[movie * 7919 % len(GENRES)].tolist(),
            "timestamp": ts,
        }
    )

    def nulls(p: float) -> pl.Series:
        return pl.Series(rng.random(n) < p)

    frame = frame.with_columns(
        pl.when(nulls(0.005)).then(None).otherwise(pl.col("userId")).alias("userId"),
        pl.when(nulls(0.02)).then(None).otherwise(pl.col("rating")).alias("rating"),
        pl.when(nulls(0.03)).then(None).otherwise(pl.col("genre")).alias("genre"),
        pl.col("timestamp").cast(pl.Datetime("us", "UTC")),
    )
    late = np.where(rng.random(n) < late_fraction, rng.uniform(0, 3600e6, n), 0).astype(np.int64)
    return frame[np.argsort(ts + late, kind="stable")]


CHILD = r"""
import json, sys, time
from pathlib import Path
import polars as pl
import featurepipe
from featurepipe.dsl.loader import load_definitions

root, defs, view_name, log = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
assert Path(featurepipe.__file__).resolve().is_relative_to(root.resolve()), featurepipe.__file__
time.perf_counter = time.process_time  # the report's own seconds become CPU seconds
from featurepipe.parity.harness import run_parity

view = load_definitions(defs).view(view_name)
events = pl.read_parquet(log)
t = time.process_time()
report = run_parity(view, events)
whole = time.process_time() - t
doc = report.as_dict()
doc.pop("seconds_wall", None)
out = {
    "whole": whole,
    "stream": doc.pop("seconds_stream"),
    "batch": doc.pop("seconds_batch"),
    "report": doc,
}
print(json.dumps(out))
"""


WALL_CHILD = r"""
import json, sys, time
from pathlib import Path
import polars as pl
from featurepipe.dsl.loader import load_definitions
from featurepipe.parity.harness import run_parity

if __name__ == "__main__":  # the check's worker processes are spawned: they import this
    defs, view_name, log, jobs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    view = load_definitions(defs).view(view_name)
    events = pl.read_parquet(log)
    t = time.perf_counter()
    report = run_parity(view, events, jobs=jobs)
    whole = time.perf_counter() - t
    doc = report.as_dict()
    out = {"whole": whole, "jobs": doc.pop("jobs"), "stream": doc.pop("seconds_stream"),
           "batch": doc.pop("seconds_batch"), "report": doc}
    doc.pop("seconds_wall")
    print(json.dumps(out))
"""


def run_wall(tree: Path, defs: Path, view: str, log: Path, jobs: int) -> dict[str, object]:
    """``run_parity(jobs=jobs)`` of the tree ``tree`` in a fresh process: wall seconds."""
    script = tree / ".parity_wall_child.py"  # in the tree: the spawned workers import it
    script.write_text(WALL_CHILD)
    try:
        done = subprocess.run(
            [sys.executable, str(script), str(defs), view, str(log), str(jobs)],
            env={**os.environ, "PYTHONPATH": str(tree)},
            cwd=tree,
            capture_output=True,
            text=True,
        )
    finally:
        script.unlink()
    if done.returncode:
        sys.exit(f"benchmark child failed in {tree}:\n{done.stderr[-3000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def jobs_wall(
    cases: list[tuple[str, Path, Path, int]], trees: dict[str, Path], jobs: int, rounds: int
) -> None:
    """Wall time of each tree with one process and with ``jobs`` processes, the order of the
    four runs rotating by round."""
    entries = [(t, j) for t in trees for j in (1, jobs)]
    runs: dict[tuple[str, str, int], list[dict[str, object]]] = {}
    for r in range(rounds):
        for view, defs, log, _ in cases:
            turn = entries[r % len(entries) :] + entries[: r % len(entries)]
            for name, j in turn:
                runs.setdefault((view, name, j), []).append(
                    run_wall(trees[name], defs, view, log, j)
                )
            print(f"round {r + 1}/{rounds}: {view} done", file=sys.stderr)
    print(
        f"featurepipe parity in process, 1 process and --jobs {jobs}, {rounds} rounds, the "
        f"order rotating, {os.cpu_count()} cores; events/s from wall seconds of the whole "
        "run_parity (worker start-up included), median of the rounds (min-max)"
    )
    head = [f"{t}: {j} process{'es' if j > 1 else ''}" for t, j in entries]
    print("| view | events | queries | " + " | ".join(head) + " |")
    print("|---|---|---|" + "---|" * len(entries))
    identical = True
    for view, _, _, n in cases:
        reports = {
            json.dumps(x["report"], sort_keys=True) for e in entries for x in runs[(view, *e)]
        }
        identical &= len(reports) == 1
        first = runs[(view, *entries[0])][0]["report"]
        assert isinstance(first, dict)
        cells = [view, f"{n:,}", f"{first['queries']:,}"]
        base = None
        for e in entries:
            rates = [n / float(str(x["whole"])) for x in runs[(view, *e)]]
            med = statistics.median(rates)
            base = med if base is None else base
            cells.append(f"{med:,.0f} ({min(rates):,.0f}-{max(rates):,.0f}), {med / base:.2f}x")
        print("| " + " | ".join(cells) + " |")
    print(f"(ratios against the first column: {head[0]})")
    for view, _, _, _ in cases:
        for e in entries:
            xs = runs[(view, *e)]
            print(
                f"- {view}, {e[0]}, {e[1]} process(es) (report: {xs[0]['jobs']}): median seconds "
                f"wall {_median(xs, 'whole'):.2f}; per-event replay {_median(xs, 'stream'):.2f}, "
                f"batch plan {_median(xs, 'batch'):.2f} (summed over the processes)"
            )
    print(f"identical reports in every run: {identical}")
    if not identical:
        sys.exit(1)


def run(tree: Path, defs: Path, view: str, log: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), str(defs), view, str(log)],
        env={**os.environ, "PYTHONPATH": str(tree)},
        cwd=tree,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(f"benchmark child failed in {tree}:\n{done.stderr[-3000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def explain(ml_events: list[int]) -> None:
    """Why the 3-view log is slow, measured on the working tree at each size: for each view,
    the retained events an own-time query point folds (the entity's state buffer just before
    the event) and the CPU microseconds of that ``ViewProgram.query``; on the batch side, the
    own-time points that a later-arriving, earlier-timestamped event of their entity makes take
    the batch plan's late-event paths (runs between the late events; pairs for short windows
    and the kinds without runs), and the (point, event) pairs a lifetime window would take
    (the entity's events timestamped before the point), all explicit before those paths."""
    import time

    from featurepipe.compile.polars_aggs import SEQ, TS
    from featurepipe.compile.python_state import ViewProgram
    from featurepipe.dsl.loader import load_definitions
    from featurepipe.parity.harness import normalize_events

    with tempfile.TemporaryDirectory(prefix="featurepipe-parity-explain-") as tmp:
        (Path(tmp) / "ml_defs.py").write_text(ML_DEFS)
        defs = load_definitions(Path(tmp) / "ml_defs.py")
    print(
        "| view | events | retained events per point: mean / p99 | us per query (CPU) "
        "| points with late events | their lifetime pairs (were all explicit before) |"
    )
    print("|---|---|---|---|---|---|")
    for n in ml_events:
        log = generate_ratings(n)
        for name in ("user_ratings", "movie_ratings", "genre_ratings"):
            view = defs.view(name)
            key, ts_col = view.entity.key, view.source.timestamp
            ev = normalize_events(view, log).filter(pl.col(key).is_not_null())
            prog = ViewProgram(view.ir)
            names = list(view.source.fields)
            states: dict[Any, Any] = {}
            retained: list[int] = []
            spent = 0.0
            for seq, event in zip(ev[SEQ], ev.select(names).iter_rows(named=True), strict=True):
                st = states.get(event[key])
                if st is None:
                    st = states[event[key]] = prog.new_state()
                t = event[ts_col]
                if prog.can_answer(st, t):
                    retained.append(len(st.buffer))
                    c = time.process_time()
                    prog.query(st, t)
                    spent += time.process_time() - c
                prog.ingest(st, event, seq)
            later_min = pl.col(TS).reverse().cum_min().reverse().shift(-1).over(key)
            points = ev.sort(key, SEQ).with_columns(
                (later_min < pl.col(TS)).fill_null(False).alias("dirty"),
                (pl.col(TS).rank("min").over(key) - 1).alias("before"),
            )
            dirty = points.filter("dirty")
            r = sorted(retained)
            print(
                f"| {name} | {n:,} | {sum(r) / len(r):,.0f} / {r[int(0.99 * len(r))]:,} "
                f"| {spent / len(r) * 1e6:,.1f} | {dirty.height:,} of {ev.height:,} "
                f"| {int(dirty['before'].sum()):,} |"
            )


def _median(xs: list[dict[str, object]], step: str) -> float:
    return statistics.median(float(str(x[step])) for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare against")
    parser.add_argument("--events", type=int, default=200_000, help="generated transactions")
    parser.add_argument("--ml-events", type=int, default=100_000, help="generated ratings")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--views", default="", help="comma-separated subset of the views")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="instead: why the 3-view log is slow, at --ml-events and at half of it",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="wall time instead of CPU: the base revision and the working tree, each with one "
        "process and with this many (run_parity(jobs=...))",
    )
    args = parser.parse_args()
    if args.explain:
        explain([args.ml_events // 2, args.ml_events])
        return
    from featurepipe.dev.datagen import generate_transactions

    with tempfile.TemporaryDirectory(prefix="featurepipe-parity-speed-") as tmp:
        work = Path(tmp)
        (work / "ml_defs.py").write_text(ML_DEFS)
        generate_transactions(args.events).write_parquet(work / "transactions.parquet")
        generate_ratings(args.ml_events).write_parquet(work / "ratings.parquet")
        cases = [
            ("user_spend", ROOT / "feature_defs", work / "transactions.parquet", args.events),
            ("user_ratings", work / "ml_defs.py", work / "ratings.parquet", args.ml_events),
            ("movie_ratings", work / "ml_defs.py", work / "ratings.parquet", args.ml_events),
            ("genre_ratings", work / "ml_defs.py", work / "ratings.parquet", args.ml_events),
        ]
        if args.views:
            cases = [c for c in cases if c[0] in args.views.split(",")]
        base_tree = work / "base"
        base_tree.mkdir()
        sha = export(args.base, base_tree)
        trees = {f"base {sha}": base_tree, "working tree": ROOT}
        if args.jobs:
            jobs_wall(cases, trees, args.jobs, args.rounds)
            return
        runs: dict[tuple[str, str], list[dict[str, object]]] = {}
        for r in range(args.rounds):
            for view, defs, log, _ in cases:
                order = list(trees) if r % 2 == 0 else list(reversed(trees))
                for name in order:
                    runs.setdefault((view, name), []).append(run(trees[name], defs, view, log))
                print(f"round {r + 1}/{args.rounds}: {view} done", file=sys.stderr)

    base_name, work_name = list(trees)
    print(
        f"featurepipe parity in process, {args.rounds} rounds alternating, {os.cpu_count()} "
        "cores; events/s from CPU seconds, median of the rounds (min-max)"
    )
    print(
        "| view | events | queries | per-event replay: base | working | ratio "
        "| whole run_parity: base | working | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    identical = True
    details = []
    for view, _, _, n in cases:
        reports = {json.dumps(x["report"], sort_keys=True) for t in trees for x in runs[view, t]}
        identical &= len(reports) == 1
        first = runs[view, base_name][0]["report"]
        assert isinstance(first, dict)
        cells: list[str] = [view, f"{n:,}", f"{first['queries']:,}"]
        for step in ("stream", "whole"):
            med = {}
            for t in trees:
                rates = [n / float(str(x[step])) for x in runs[view, t]]
                med[t] = statistics.median(rates)
                cells.append(f"{med[t]:,.0f} ({min(rates):,.0f}-{max(rates):,.0f})")
            cells.append(f"{med[work_name] / med[base_name]:.2f}x")
        print("| " + " | ".join(cells) + " |")
        details.append(
            f"- {view}: median CPU seconds, per-event replay / batch plan: "
            + "; ".join(
                f"{t} {_median(runs[view, t], 'stream'):.2f} / {_median(runs[view, t], 'batch'):.2f}"
                for t in trees
            )
        )
    print("\n".join(details))
    print(f"identical reports in every run: {identical}")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
