"""Point-in-time training sets: featurepipe vs DuckDB SQL vs pandas, in the same run.

The job: for every label row (user_id, T) compute features of the example view ``user_spend``
(feature_defs/fraud.py) from a transactions log in Parquet, each row seeing only the events of
its user with ``ts < T`` (windows ``T - w <= ts < T``). Default size: 10M events (100k users,
30 days, 10 Parquet files) x 1M label rows; ``--quick``: 1M events (10k users) x 100k labels.

Engines, each in its own child process (peak memory = the child's ru_maxrss from wait4):

* ``featurepipe (subset)``: ``FeatureStore.get_historical_features`` for the 9 features below;
* ``featurepipe (all 25)``: the same call for the whole view;
* ``duckdb (join)``: SQL over the same Parquet files (labels also read from Parquet): a hash join
  of labels with events on user_id and the 7-day range predicate, grouped by label row, plus an
  ASOF join for the lifetime features;
* ``duckdb (window)``: SQL window functions with RANGE frames over labels UNION ALL events;
* ``pandas``: a straightforward implementation (merge labels with events on user_id, chunk by
  chunk of labels, filter the window, group by label row; ``merge_asof`` for the lifetime
  features). ``--pandas-fraction f`` runs the merge/group-by part on the first ``f`` of the
  (shuffled) labels and extrapolates that part linearly; everything else is measured in full.

The subset, specified exactly so that all engines can compute it identically:
txn_count_1h, txn_count_24h (counts), amount_sum_24h (null amount as 0, 0.0 when empty),
amount_mean_7d (nulls skipped, null when none), amount_max_24h (nulls skipped), foreign_count_24h
(country null -> 'UNKNOWN', != 'US'), distinct_merchants_7d, last_country (null country ->
'UNKNOWN', of the latest event by (event_time, arrival order = file then row order); null when
no events), txn_count_total (events before T).

Seconds: inside the child, from reading the labels (after imports) to the result in memory, so
reading the event Parquet files is included for every engine. Every output is compared with
featurepipe's subset: counts, max and last must be equal; float sums and means within 1e-9
relative (featurepipe sums in exact fixed point, the others add floats). No timing is asserted:
read the ratios, all measured in the same run.

``--snapshot`` benchmarks the committed HEAD (``git archive`` into the work directory, first on
the children's PYTHONPATH) so that concurrent edits of the working tree cannot leak into the run.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VIEW = "user_spend"
SUBSET = [
    "txn_count_1h",
    "txn_count_24h",
    "amount_sum_24h",
    "amount_mean_7d",
    "amount_max_24h",
    "foreign_count_24h",
    "distinct_merchants_7d",
    "last_country",
    "txn_count_total",
]
FLOATS = {"amount_sum_24h", "amount_mean_7d"}  # sums: compared within REL_TOL
REL_TOL = 1e-9
HOUR = 3_600_000_000  # microseconds
DAY = 24 * HOUR
WEEK = 7 * DAY
N_FILES = 10
ENGINES = ["featurepipe-subset", "featurepipe-all", "duckdb-join", "duckdb-window", "pandas"]
LABELS = {
    "featurepipe-subset": "featurepipe (9-feature subset)",
    "featurepipe-all": "featurepipe (all 25 features)",
    "duckdb-join": "DuckDB SQL (hash join + ASOF)",
    "duckdb-window": "DuckDB SQL (window functions)",
    "pandas": "pandas (merge + groupby, merge_asof)",
}


# ---- data (child "generate") ------------------------------------------------------------------


def generate(spec: dict[str, Any]) -> dict[str, Any]:
    """The repo (feature_defs/fraud.py + data/transactions/part-*.parquet) and labels.parquet.

    Events: ``generate_transactions`` (arrival order, ~2% late, whole-second timestamps, 3%
    nulls), split into N_FILES files in arrival order. Labels, shuffled: 50% a uniform user at a
    uniform whole second over the span + 1 day (some users have no events; some times are after
    a user's last event); 30% the user and exact time of a random event plus 0, 1h, 24h or 7d
    (rows on the end-exclusive and start-inclusive window bounds); 20% the user of a random
    event at that event's time plus a uniform offset in [0, 7d) microseconds, except that
    events tied in (user, time) with another event get labels 1 microsecond after them.
    """
    import numpy as np
    import polars as pl

    from featurepipe.dev.datagen import generate_transactions

    repo = Path(spec["repo"])
    n, n_labels, users, days = spec["events"], spec["labels"], spec["users"], spec["days"]
    (repo / "feature_defs").mkdir(parents=True)
    shutil.copy(Path(spec["defs"]), repo / "feature_defs" / "fraud.py")
    data = repo / "data" / "transactions"
    data.mkdir(parents=True)
    t = time.perf_counter()
    ev = generate_transactions(n, users=users, days=days, seed=spec["seed"])
    step = -(-n // N_FILES)
    for i in range(N_FILES):
        ev.slice(i * step, step).write_parquet(data / f"part-{i:04d}.parquet")
    rng = np.random.default_rng(spec["seed"] + 1)
    a, b = n_labels // 2, n_labels * 3 // 10
    c = n_labels - a - b
    ts = ev["event_time"].cast(pl.Int64).to_numpy()
    uid = ev["user_id"]
    start = int(ts.min()) // DAY * DAY
    span_s = int((days + 1) * 86_400)
    i2, i3 = rng.integers(0, n, b), rng.integers(0, n, c)
    bounds = np.array([0, HOUR, DAY, WEEK])[rng.integers(0, 4, b)]
    after = rng.integers(0, WEEK, c)
    # events sharing (user, time) with another: their time + 1 microsecond (last_country must
    # take the later arrival), for up to a tenth of the last group
    tied = (
        ev.with_row_index("i")
        .filter(pl.len().over("user_id", "event_time") > 1)["i"]
        .to_numpy()[: c // 10]
    )
    i3[: len(tied)] = tied
    after[: len(tied)] = 1
    labels = pl.DataFrame(
        {
            "user_id": pl.concat(
                [
                    pl.Series(rng.integers(0, users, a)).cast(pl.String).str.replace(r"^", "u"),
                    uid.gather(i2),
                    uid.gather(i3),
                ]
            ),
            "event_timestamp": pl.Series(
                np.concatenate(
                    [
                        start + rng.integers(0, span_s, a) * 1_000_000,
                        ts[i2] + bounds,
                        ts[i3] + after,
                    ]
                )
            ).cast(pl.Datetime("us", "UTC")),
        }
    )
    labels = labels.sample(fraction=1.0, shuffle=True, seed=spec["seed"] + 2).with_columns(
        label=pl.Series(rng.random(n_labels) < 0.1)
    )
    labels.write_parquet(spec["labels_path"])
    keys = ev.select("user_id", "event_time")
    stats = {
        "seconds": time.perf_counter() - t,
        "users_with_events": ev["user_id"].n_unique(),
        "max_events_per_user": int(ev["user_id"].value_counts()["count"].max()),
        "late_events": int((np.diff(ts) < 0).sum()),
        "tied_events": keys.height - keys.unique().height,
        "tie_labels": len(tied),
        "parquet_mb": sum(f.stat().st_size for f in data.glob("*.parquet")) / 1e6,
        "label_users": labels["user_id"].n_unique(),
    }
    return stats


# ---- engines (children) -----------------------------------------------------------------------


def run_featurepipe(spec: dict[str, Any], everything: bool) -> tuple[Any, dict[str, Any]]:
    import polars as pl

    import featurepipe
    from featurepipe.store import FeatureStore

    t = time.perf_counter()
    store = FeatureStore(spec["repo"])
    labels = pl.read_parquet(spec["labels_path"])
    features = [VIEW] if everything else [f"{VIEW}:{f}" for f in SUBSET]
    out = store.get_historical_features(labels, features, timestamp="event_timestamp")
    seconds = time.perf_counter() - t
    info = {
        "seconds": seconds,
        "rows": out.height,
        "features": out.width - labels.width,
        "featurepipe": str(Path(featurepipe.__file__).parent),
    }
    result = out.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("qid"), *SUBSET)
    return result, info


def duckdb_sources(con: Any, spec: dict[str, Any]) -> None:
    """Views ``ev`` (events with an arrival rank ``seq``: file number, then row number in the
    file) and ``lab`` (labels with their row number ``qid``); timestamps as epoch microseconds."""
    files = sorted((Path(spec["repo"]) / "data" / "transactions").glob("*.parquet"))
    parts = [
        f"SELECT user_id, epoch_us(event_time) AS ts, "
        f"{i}::BIGINT * 4294967296 + file_row_number AS seq, amount, "
        f"coalesce(country, 'UNKNOWN') AS country, merchant_id "
        f"FROM read_parquet('{f}', file_row_number = true)"
        for i, f in enumerate(files)
    ]
    con.execute("CREATE TEMP VIEW ev AS " + " UNION ALL ".join(parts))
    con.execute(
        "CREATE TEMP VIEW lab AS SELECT file_row_number AS qid, user_id, "
        f"epoch_us(event_timestamp) AS ts "
        f"FROM read_parquet('{spec['labels_path']}', file_row_number = true)"
    )


DUCKDB_JOIN = f"""
WITH win AS (
    SELECT l.qid,
        count(*) FILTER (WHERE e.ts >= l.ts - {HOUR}) AS txn_count_1h,
        count(*) FILTER (WHERE e.ts >= l.ts - {DAY}) AS txn_count_24h,
        sum(coalesce(e.amount, 0.0)) FILTER (WHERE e.ts >= l.ts - {DAY}) AS amount_sum_24h,
        avg(e.amount) AS amount_mean_7d,
        max(e.amount) FILTER (WHERE e.ts >= l.ts - {DAY}) AS amount_max_24h,
        count(*) FILTER (WHERE e.ts >= l.ts - {DAY} AND e.country <> 'US') AS foreign_count_24h,
        count(DISTINCT e.merchant_id) AS distinct_merchants_7d
    FROM lab l JOIN ev e ON e.user_id = l.user_id AND e.ts < l.ts AND e.ts >= l.ts - {WEEK}
    GROUP BY l.qid
),
-- lifetime features: per (user, ts) the last arrival's country and the event count, then a
-- running total per user; the ASOF join takes the latest (user, ts) strictly before T
points AS (
    SELECT user_id, ts, arg_max(country, seq) AS country, count(*) AS n
    FROM ev GROUP BY user_id, ts
),
running AS (
    SELECT user_id, ts, country,
        sum(n) OVER (PARTITION BY user_id ORDER BY ts ROWS UNBOUNDED PRECEDING) AS total
    FROM points
)
SELECT l.qid,
    coalesce(w.txn_count_1h, 0) AS txn_count_1h,
    coalesce(w.txn_count_24h, 0) AS txn_count_24h,
    coalesce(w.amount_sum_24h, 0.0) AS amount_sum_24h,
    w.amount_mean_7d,
    w.amount_max_24h,
    coalesce(w.foreign_count_24h, 0) AS foreign_count_24h,
    coalesce(w.distinct_merchants_7d, 0) AS distinct_merchants_7d,
    r.country AS last_country,
    coalesce(r.total, 0)::BIGINT AS txn_count_total
FROM lab l
LEFT JOIN win w USING (qid)
ASOF LEFT JOIN running r ON r.user_id = l.user_id AND r.ts < l.ts
ORDER BY l.qid
"""

DUCKDB_WINDOW = f"""
WITH u AS (
    SELECT user_id, ts, seq, amount, country, merchant_id, NULL::BIGINT AS qid FROM ev
    UNION ALL
    SELECT user_id, ts, NULL, NULL, NULL, NULL, qid FROM lab
)
SELECT * FROM (
    SELECT qid,
        count(seq) OVER h1 AS txn_count_1h,
        count(seq) OVER d1 AS txn_count_24h,
        coalesce(sum(coalesce(amount, 0.0)) FILTER (WHERE seq IS NOT NULL) OVER d1, 0.0)
            AS amount_sum_24h,
        avg(amount) OVER w7 AS amount_mean_7d,
        max(amount) OVER d1 AS amount_max_24h,
        count(seq) FILTER (WHERE country <> 'US') OVER d1 AS foreign_count_24h,
        count(DISTINCT merchant_id) OVER w7 AS distinct_merchants_7d,
        arg_max(country, (ts, seq)) OVER life AS last_country,
        count(seq) OVER life AS txn_count_total
    FROM u
    WINDOW
        h1 AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN {HOUR} PRECEDING AND 1 PRECEDING),
        d1 AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN {DAY} PRECEDING AND 1 PRECEDING),
        w7 AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN {WEEK} PRECEDING AND 1 PRECEDING),
        life AS (PARTITION BY user_id ORDER BY ts
                 RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
)
WHERE qid IS NOT NULL
ORDER BY qid
"""


def run_duckdb(spec: dict[str, Any], sql: str) -> tuple[Any, dict[str, Any]]:
    import duckdb

    t = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET threads = {os.cpu_count() or 1}")
    duckdb_sources(con, spec)
    out = con.sql(sql).to_arrow_table()
    seconds = time.perf_counter() - t
    threads = con.execute("SELECT current_setting('threads')").fetchone()
    info = {"seconds": seconds, "rows": out.num_rows, "threads": threads[0] if threads else None}
    return out, info


def run_pandas(spec: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Straightforward pandas. Window features: for each chunk of labels, merge with the events
    of the same user, keep [T - 7d, T), group by label row. Lifetime features: ``merge_asof`` of
    all labels with the events sorted by (ts, arrival), with a running count per user."""
    import numpy as np
    import pandas as pd

    files = sorted((Path(spec["repo"]) / "data" / "transactions").glob("*.parquet"))
    cols = ["user_id", "merchant_id", "amount", "country", "event_time"]
    t = time.perf_counter()
    labels = pd.read_parquet(spec["labels_path"], columns=["user_id", "event_timestamp"])
    labels["ts"] = labels["event_timestamp"].dt.as_unit("us").astype("int64")
    labels["qid"] = np.arange(len(labels), dtype="int64")
    ev = pd.concat([pd.read_parquet(f, columns=cols) for f in files], ignore_index=True)
    ev["ts"] = ev["event_time"].dt.as_unit("us").astype("int64")
    ev["seq"] = np.arange(len(ev), dtype="int64")  # arrival order: files in order, then rows
    ev["country"] = ev["country"].fillna("UNKNOWN")
    ev["amount0"] = ev["amount"].fillna(0.0)
    ev["foreign"] = ev["country"] != "US"
    right = ev[["user_id", "ts", "amount", "amount0", "foreign", "merchant_id"]]
    t_load = time.perf_counter() - t

    t1 = time.perf_counter()
    n_window = round(len(labels) * spec["pandas_fraction"])
    chunk = spec["pandas_chunk"]
    parts = []
    for s in range(0, n_window, chunk):
        q = labels.iloc[s : min(s + chunk, n_window)][["qid", "user_id", "ts"]]
        m = q.merge(right, on="user_id", suffixes=("_q", "_e"))
        m = m[(m["ts_e"] < m["ts_q"]) & (m["ts_e"] >= m["ts_q"] - WEEK)]
        age = m["ts_q"] - m["ts_e"]
        in24 = age <= DAY
        m = m.assign(
            in1h=age <= HOUR,
            in24=in24,
            a24=m["amount0"].where(in24, 0.0),
            x24=m["amount"].where(in24),
            f24=m["foreign"] & in24,
        )
        g = m.groupby("qid")
        part = pd.DataFrame(
            {
                "txn_count_1h": g["in1h"].sum(),
                "txn_count_24h": g["in24"].sum(),
                "amount_sum_24h": g["a24"].sum(),
                "amount_mean_7d": g["amount"].mean(),
                "amount_max_24h": g["x24"].max(),
                "foreign_count_24h": g["f24"].sum(),
                "distinct_merchants_7d": g["merchant_id"].nunique(),
            }
        )
        parts.append(part.reindex(q["qid"]))
    out = pd.concat(parts)
    for c in ["txn_count_1h", "txn_count_24h", "foreign_count_24h", "distinct_merchants_7d"]:
        out[c] = out[c].fillna(0).astype("int64")
    out["amount_sum_24h"] = out["amount_sum_24h"].fillna(0.0)
    t_window = time.perf_counter() - t1

    t2 = time.perf_counter()
    by_time = ev[["user_id", "ts", "seq", "country"]].sort_values(["ts", "seq"])
    by_user = by_time.sort_values(["user_id", "ts", "seq"])
    by_time["total"] = by_user.groupby("user_id").cumcount() + 1  # aligned on the index
    last = pd.merge_asof(
        labels[["qid", "user_id", "ts"]].sort_values("ts"),
        by_time,
        on="ts",
        by="user_id",
        allow_exact_matches=False,  # ts < T; among equal ts the last row = the last arrival
        direction="backward",
    ).set_index("qid")
    last = last.reindex(out.index)
    out["last_country"] = last["country"]
    out["txn_count_total"] = last["total"].fillna(0).astype("int64")
    out = out.reset_index()
    t_life = time.perf_counter() - t2
    seconds = time.perf_counter() - t
    info = {
        "seconds": seconds,
        "rows": len(out),
        "load_s": t_load,
        "window_s": t_window,
        "lifetime_s": t_life,
        "window_rows": n_window,
    }
    return out, info


def child(engine: str, spec: dict[str, Any]) -> None:
    if engine == "generate":
        Path(spec["result"]).write_text(json.dumps(generate(spec)))
        return
    if engine.startswith("featurepipe"):
        out, info = run_featurepipe(spec, everything=engine == "featurepipe-all")
        out.write_parquet(spec["out"])
    elif engine.startswith("duckdb"):
        import pyarrow.parquet as pq

        out, info = run_duckdb(spec, DUCKDB_JOIN if engine == "duckdb-join" else DUCKDB_WINDOW)
        pq.write_table(out, spec["out"])
    elif engine == "pandas":
        out, info = run_pandas(spec)
        out.to_parquet(spec["out"], index=False)
    else:
        raise SystemExit(f"unknown engine {engine}")
    Path(spec["result"]).write_text(json.dumps(info))


# ---- parent -----------------------------------------------------------------------------------


def spawn(
    engine: str, spec: dict[str, Any], env: dict[str, str], timeout_s: float
) -> dict[str, Any]:
    """Run one engine in a child process; its peak RSS from wait4. Returns the child's info
    plus ``peak_mb``, ``wall_s`` and ``ok``."""
    result = Path(spec["work"]) / f"{engine}.json"
    result.unlink(missing_ok=True)
    spec = {**spec, "result": str(result), "out": str(Path(spec["work"]) / f"{engine}.parquet")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", engine, json.dumps(spec)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    info: dict[str, Any] = json.loads(result.read_text()) if result.exists() else {}
    info.update(
        load=os.getloadavg()[0],  # 1-minute load average at the end (2 cores: > 2 = contention)
        peak_mb=usage.ru_maxrss / 1024,  # Linux: kilobytes
        wall_s=time.perf_counter() - t,
        returncode=proc.returncode,
        ok=proc.returncode == 0 and "seconds" in info,
    )
    return info


def compare(reference: Path, other: Path) -> dict[str, Any]:
    """Column by column over the rows ``other`` has (a prefix of the labels for a pandas
    fraction): counts, max and last must be equal; floats within REL_TOL relative."""
    import polars as pl

    ref = pl.read_parquet(reference)
    out = pl.read_parquet(other)
    if out["qid"].cast(pl.Int64).to_list() != list(range(out.height)):
        return {"ok": False, "error": "rows are not in label order"}
    ref = ref.head(out.height)
    report: dict[str, Any] = {"ok": True, "rows": out.height, "columns": {}}
    for name in SUBSET:
        x, y = ref[name], out[name]
        if name in FLOATS:
            nulls = int((x.is_null() != y.is_null()).sum())
            both = pl.DataFrame({"x": x, "y": y}).drop_nulls()
            scale = pl.max_horizontal(pl.col("x").abs(), pl.col("y").abs())
            rel = both.select(
                pl.when(scale > 0).then((pl.col("x") - pl.col("y")).abs() / scale).otherwise(0.0)
            ).to_series()
            max_rel = float(rel.max() or 0.0)
            col = {
                "null_mismatches": nulls,
                "max_rel_diff": max_rel,
                "bit_identical": int((both["x"] == both["y"]).sum()),
                "values": both.height,
                "ok": nulls == 0 and max_rel <= REL_TOL,
            }
        else:
            if x.dtype != y.dtype:
                y = y.cast(x.dtype)
            bad = int((~x.eq_missing(y)).sum())
            col = {"mismatches": bad, "nulls": x.null_count(), "ok": bad == 0}
        report["columns"][name] = col
        report["ok"] &= col["ok"]
    return report


def revision() -> tuple[str, str]:
    """The commit (+ if featurepipe/ or feature_defs/ has local edits) and a digest of those
    edits, to notice edits made during the run."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    paths = ["--", "featurepipe", "feature_defs"]
    status = subprocess.run([*git, "status", "--porcelain", *paths], capture_output=True)
    diff = subprocess.run([*git, "diff", "HEAD", *paths], capture_output=True)
    digest = hashlib.sha1(status.stdout + diff.stdout).hexdigest()
    return (head.stdout.strip() or "unknown") + ("+" if status.stdout.strip() else ""), digest


def export_head(dest: Path) -> str:
    """``git archive HEAD`` of featurepipe/ and feature_defs/ into ``dest``; the commit."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    tar = subprocess.run(
        [*git, "archive", "--format=tar", "HEAD", "featurepipe", "feature_defs"],
        capture_output=True,
        check=True,
    )
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        archive.extractall(dest, filter="data")
    return head.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="1M events x 100k labels")
    parser.add_argument("--users", type=int, help="default: events / 100")
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--engines", default=",".join(ENGINES), help=f"comma-separated subset of {ENGINES}"
    )
    parser.add_argument(
        "--pandas-fraction",
        type=float,
        default=1.0,
        help="run pandas' merge/group-by on this fraction of the labels and extrapolate it",
    )
    parser.add_argument("--pandas-chunk", type=int, default=100_000, help="labels per merge")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per engine")
    parser.add_argument("--workdir", help="keep data and outputs here (default: a temp dir)")
    parser.add_argument(
        "--snapshot", action="store_true", help="benchmark the committed HEAD, not the working tree"
    )
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], json.loads(args.child[1]))
        return
    n_events, n_labels = (1_000_000, 100_000) if args.quick else (args.events, args.labels)
    users = args.users or max(1, n_events // 100)
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}")

    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="featurepipe-training-")
        work = Path(tmp.name)
    env = dict(os.environ)
    code = ROOT
    digest = ""
    if args.snapshot:
        code = work / "snapshot"
        rev = export_head(code) + " (clean snapshot of HEAD)"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code), env.get("PYTHONPATH")) if p)
    else:
        rev, digest = revision()
    spec: dict[str, Any] = {
        "work": str(work),
        "repo": str(work / "repo"),
        "labels_path": str(work / "labels.parquet"),
        "defs": str(code / "feature_defs" / "fraud.py"),
        "events": n_events,
        "labels": n_labels,
        "users": users,
        "days": args.days,
        "seed": args.seed,
        "pandas_fraction": args.pandas_fraction,
        "pandas_chunk": args.pandas_chunk,
    }
    import duckdb
    import pandas
    import polars

    print(
        f"training sets at {rev}: {n_events:,} events ({users:,} users, {args.days:g} days, "
        f"{N_FILES} files) x {n_labels:,} labels; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"{os.cpu_count()} cores; Python {platform.python_version()}, Polars {polars.__version__}, "
        f"DuckDB {duckdb.__version__}, pandas {pandas.__version__}",
        flush=True,
    )
    gen = spawn("generate", spec, env, args.timeout)
    if not gen["ok"]:
        raise SystemExit("data generation failed")
    print(
        f"data in {gen['seconds']:.1f}s: {gen['users_with_events']:,} users with events "
        f"(max {gen['max_events_per_user']:,} events), {gen['late_events']:,} events arriving "
        f"after a later timestamp, {gen['tied_events']:,} events tied in (user, time) with "
        f"an earlier one ({gen['tie_labels']:,} labels just after ties), "
        f"{gen['parquet_mb']:.0f} MB Parquet; labels over {gen['label_users']:,} users",
        flush=True,
    )

    results: dict[str, dict[str, Any]] = {}
    for engine in engines:
        info = spawn(engine, spec, env, args.timeout)
        results[engine] = info
        if not info["ok"]:
            print(f"{engine}: FAILED (exit {info['returncode']}, {info['wall_s']:.0f}s)")
            continue
        extra = ""
        if engine == "pandas":
            frac = args.pandas_fraction
            info["measured_s"] = info["seconds"]
            if frac < 1.0:
                # only the merge/group-by part depends on the number of labels it is run on
                info["seconds"] = info["seconds"] + info["window_s"] * (1.0 / frac - 1.0)
                extra = (
                    f" (extrapolated from {frac:g} of the labels: measured "
                    f"{info['measured_s']:.1f}s)"
                )
            extra += (
                f" [load {info['load_s']:.1f}s, windows {info['window_s']:.1f}s, lifetime "
                f"{info['lifetime_s']:.1f}s]"
            )
        if "featurepipe" in info:
            extra += f" [featurepipe from {info['featurepipe']}]"
        print(
            f"{engine}: {info['seconds']:.2f}s, peak RSS {info['peak_mb']:,.0f} MB, "
            f"load average {info['load']:.1f} at the end{extra}",
            flush=True,
        )

    ref = "featurepipe-subset"
    checks: dict[str, dict[str, Any]] = {}
    if results.get(ref, {}).get("ok"):
        for engine in engines:
            if engine != ref and results[engine]["ok"]:
                checks[engine] = compare(work / f"{ref}.parquet", work / f"{engine}.parquet")

    base = results.get(ref, {}).get("seconds") if results.get(ref, {}).get("ok") else None
    print()
    print("| engine | seconds | ratio vs featurepipe (subset) | peak RSS MB | label rows/s |")
    print("|---|--:|--:|--:|--:|")
    for engine in engines:
        info = results[engine]
        if not info["ok"]:
            print(f"| {LABELS[engine]} | failed | | {info['peak_mb']:,.0f} | |")
            continue
        ratio = f"{info['seconds'] / base:.2f}x" if base else ""
        note = " (extrapolated)" if engine == "pandas" and args.pandas_fraction < 1.0 else ""
        print(
            f"| {LABELS[engine]} | {info['seconds']:.2f}{note} | {ratio} | "
            f"{info['peak_mb']:,.0f} | {n_labels / info['seconds']:,.0f} |"
        )
    print(
        "\nratio = engine seconds / featurepipe (subset) seconds; > 1 means featurepipe is faster"
    )

    print("\nequality with featurepipe (subset):")
    for engine, rep in checks.items():
        if "error" in rep:
            print(f"  {engine}: FAILED: {rep['error']}")
            continue
        parts = []
        for name, col in rep["columns"].items():
            if name in FLOATS:
                parts.append(
                    f"{name} max rel {col['max_rel_diff']:.1e} "
                    f"({col['bit_identical']:,}/{col['values']:,} bit-identical, "
                    f"{col['null_mismatches']} null mismatches)"
                )
            elif col["mismatches"]:
                parts.append(f"{name} {col['mismatches']:,} MISMATCHES")
        verdict = "equal" if rep["ok"] else "DIFFERENT"
        print(
            f"  {engine}: {verdict} on {rep['rows']:,} rows (counts, max, last exact); "
            + "; ".join(parts)
        )

    dk = [
        results[e]["seconds"]
        for e in ("duckdb-join", "duckdb-window")
        if results.get(e, {}).get("ok")
    ]
    if base and dk:
        best = min(dk)
        print(
            f"\ngoal featurepipe <= DuckDB: featurepipe {base:.2f}s vs best DuckDB {best:.2f}s "
            f"-> ratio {base / best:.2f} ({'met' if base <= best else 'NOT met'})"
        )
    if base and results.get("pandas", {}).get("ok"):
        speedup = results["pandas"]["seconds"] / base
        print(
            f"goal featurepipe >= 10x faster than pandas: {speedup:.1f}x "
            f"({'met' if speedup >= 10 else 'NOT met'})"
        )
    if not args.snapshot and revision()[1] != digest:
        print("WARNING: featurepipe/ or feature_defs/ changed during the run (use --snapshot)")
    (work / "summary.json").write_text(
        json.dumps({"rev": rev, "generate": gen, "results": results, "checks": checks}, indent=1)
    )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
