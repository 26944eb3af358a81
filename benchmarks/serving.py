"""Serving benchmark: stream throughput, event-to-Redis freshness, online lookup latency.

Everything runs on the embedded services of ``featurepipe dev`` (Tansu broker, valkey-server),
started in a temporary directory and stopped at the end; lookups are also timed against the real
Redis on 127.0.0.1:6379 when one answers (under a unique key prefix, deleted afterwards). Each
measurement sits beside a baseline timed in the same run; read the ratios, the machine is noisy.

1. **Throughput**: ``--events`` generated transactions are produced (timed separately) to a
   4-partition topic, then consumed by one in-process ``StreamWorker``. Events/s are counted from
   the start of the first processed batch to the end of the last (the consumer-group join is
   excluded; the wall time including it is reported too). Baseline: a bare ``KafkaConsumer`` with
   the worker's settings that only polls and ``json.loads`` the same messages, run before and
   after the worker (the ratio uses their mean). A second worker run under cProfile shows where
   the time goes.
2. **Freshness** (now - Kafka message timestamp, at the worker's Redis commit): p50/p99 of the
   backlog run above (inflated: events wait in the backlog) and of a steady-state run in which a
   separate producer process sends at a fixed rate while the worker consumes.
3. **Lookups**: ``OnlineReader.read`` of all 25 features for 1 random entity and for 100 random
   entities, at the end of the event history (windows populated) and at now (windows empty).
   Timed on the same calls, interleaved call by call in a rotating order: featurepipe with its
   answer cache (the default: an answer is reused only for the same state bytes and request
   times that change no window; the share reused is printed), featurepipe with the cache off
   (every state decoded and queried: the cold path), the previous lookup path kept as the
   reference (``OnlineReader._read_one_by_one``), and two raw redis-py baselines returning the
   same bytes without decoding: a pipelined HMGET per key, and one script call for all keys.
   Then the cached reader once more over the same calls (every answer cached). Feast's Python
   SDK (in a separate venv, ``--feast-python``: Feast needs pandas < 3, the bench extra pandas
   >= 3) reads the same 25 values for the same entities from the same Redis, if installed.

Usage: ``.venv/bin/python benchmarks/serving.py [--events N] [--quick] [--lookups-only]
[--feast-python VENV/bin/python]`` (``--lookups-only`` skips sections 1 and 2 and writes the
states with ``materialize``, which gives the same answers as the stream).
Usage: ``.venv/bin/python benchmarks/serving.py [--events N] [--quick]``
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import multiprocessing as mp
import os
import pstats
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec
import numpy as np
import polars as pl
import redis
from kafka import KafkaConsumer, KafkaProducer

ROOT = Path(__file__).resolve().parents[1]
VIEW = "user_spend"
REAL_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_FEAST_PY = os.environ.get("FEAST_PYTHON", "")  # a venv with feast + redis; empty: skip


# -- helpers ---------------------------------------------------------------------------------
def revision() -> str:
    """Commit under test, + if featurepipe/ or feature_defs/ has local edits."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    edits = subprocess.run(
        [*git, "status", "--porcelain", "--", "featurepipe", "feature_defs"],
        capture_output=True,
        text=True,
    )
    return (head.stdout.strip() or "unknown") + ("+" if edits.stdout.strip() else "")


def pct(values: list[float] | np.ndarray, p: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), p)) if len(values) else float("nan")


def encode_rows(df: pl.DataFrame, key: str) -> list[tuple[bytes, bytes]]:
    """(key, JSON value) per row, exactly as ``produce_frame`` encodes them."""
    rows = df.with_columns(
        pl.col(c).dt.to_string("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        for c, t in df.schema.items()
        if isinstance(t, pl.Datetime)
    )
    enc = msgspec.json.Encoder()
    return [(str(r[key]).encode(), enc.encode(r)) for r in rows.iter_rows(named=True)]


def consumer_settings(bootstrap: str, group: str) -> dict[str, Any]:
    """The KafkaConsumer arguments of ``StreamWorker._connect`` (max_batch = 5000)."""
    return {
        "bootstrap_servers": bootstrap,
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 5000,
        "fetch_max_bytes": 64 << 20,
        "max_partition_fetch_bytes": 8 << 20,
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
    }


def baseline_consume(bootstrap: str, topic: str, n: int) -> dict[str, float]:
    """Poll + json.loads only: the ceiling of kafka-python with the worker's settings."""
    consumer = KafkaConsumer(**consumer_settings(bootstrap, f"bench-base-{uuid.uuid4().hex[:8]}"))
    t_wall = time.perf_counter()
    consumer.subscribe([topic])
    first: float | None = None
    seen = 0
    checksum = 0
    try:
        while seen < n:
            polled = consumer.poll(timeout_ms=200, max_records=5000)
            if not polled:
                if first is not None and time.perf_counter() - first > 120:
                    break
                continue
            if first is None:
                first = time.perf_counter()
            for msgs in polled.values():
                for m in msgs:
                    checksum += len(json.loads(m.value))
                    seen += 1
        end = time.perf_counter()
    finally:
        consumer.close(autocommit=False)
    assert first is not None
    return {
        "events": seen,
        "window_s": end - first,
        "wall_s": end - t_wall,
        "rate": seen / (end - first),
    }


def make_worker(
    defs: Any, bootstrap: str, client: redis.Redis, topic: str, prefix: str, max_events: int
) -> Any:
    from featurepipe.stream.worker import StreamWorker, WorkerConfig

    cfg = WorkerConfig(
        bootstrap=bootstrap, group_id=prefix, prefix=prefix, idle_exit_s=30, max_events=max_events
    )
    return StreamWorker(defs, cfg, client, topics={"transactions": topic})


def run_worker(worker: Any, on_first: Any = None) -> dict[str, Any]:
    """Run to max_events; the processing window is first batch start -> last batch end."""
    marks: dict[str, float] = {}
    inner = worker.process

    def timed(polled: Any) -> None:
        if "first" not in marks and on_first is not None:
            on_first()
        t = time.perf_counter()
        marks.setdefault("first", t)
        inner(polled)
        marks["last"] = time.perf_counter()

    worker.process = timed
    t0 = time.perf_counter()
    c = worker.run()
    wall = time.perf_counter() - t0
    window = marks["last"] - marks["first"]
    return {
        "events": c.events,
        "valid": c.valid,
        "invalid": c.invalid,
        "batches": c.batches,
        "window_s": window,
        "wall_s": wall,
        "join_s": marks["first"] - t0,
        "rate": c.events / window,
        "fresh": list(c.freshness_ms),
    }


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    n = 0
    keys: list[bytes] = []
    for k in client.scan_iter(match=f"{prefix}:*", count=5000):
        keys.append(k)
        if len(keys) >= 5000:
            n += client.delete(*keys)
            keys = []
    if keys:
        n += client.delete(*keys)
    return n


# -- steady-state producer (a separate process: no GIL sharing with the worker) ---------------
def paced_producer(
    bootstrap: str, topic: str, msgs: list[tuple[bytes, bytes]], rate: float, out: Any
) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
    t0 = time.perf_counter()
    for i, (k, v) in enumerate(msgs):
        ahead = t0 + i / rate - time.perf_counter()
        if ahead > 0.001:
            time.sleep(ahead)
        producer.send(topic, key=k, value=v)
    producer.flush()
    out.put((len(msgs), time.perf_counter() - t0))
    producer.close()


# -- profile ---------------------------------------------------------------------------------
def profile_worker(worker: Any) -> tuple[str, dict[str, float], float]:
    prof = cProfile.Profile()
    res = run_worker(worker, on_first=prof.enable)  # from the first batch: no group join
    prof.disable()
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats("tottime").print_stats(8)
    top = "\n".join(
        line
        for line in buf.getvalue().splitlines()
        if line.strip() and not line.lstrip().startswith(("Ordered by", "List reduced"))
    )
    # cumulative time of the phases of one batch (StreamWorker.process and its parts)
    phases = {
        "KafkaConsumer.poll": ("kafka/consumer/group.py", "poll"),
        "StreamWorker.process": ("stream/worker.py", "process"),
        "validate (pydantic parse)": ("stream/validate.py", "parse"),
        "_load_states (Redis read + loads)": ("stream/worker.py", "_load_states"),
        "ViewProgram.ingest": ("compile/python_state.py", "ingest"),
        "_commit (dumps + MULTI/EXEC + Kafka commit)": ("stream/worker.py", "_commit"),
        "ViewProgram.dumps": ("compile/python_state.py", "dumps"),
        "KafkaConsumer.commit (advisory)": ("kafka/consumer/group.py", "commit"),
    }
    raw: dict[Any, Any] = st.stats  # type: ignore[attr-defined]
    cum: dict[str, float] = {}
    for label, (file_end, fn) in phases.items():
        cum[label] = sum(
            v[3] for (f, _, name), v in raw.items() if name == fn and f.endswith(file_end)
        )
    return top, cum, res["window_s"]


# -- lookups ---------------------------------------------------------------------------------
# The raw single-command read: the same state hashes as the pipelined baseline, fetched with one
# script call and returned as bytes (what featurepipe's lookup reads, without its checks).
RAW_SCRIPT = """
local out = {}
for i = 1, #KEYS do
  local row = redis.call('HMGET', KEYS[i], 's', 'f')
  out[2 * i - 1] = row[1]
  out[2 * i] = row[2]
end
return out
"""

# the timed ways of looking up, in the order printed
VARIANTS = {
    "fp": "featurepipe (answer cache on, the default)",
    "fp_nocache": "featurepipe, cache off (every state decoded and queried)",
    "fp_old": "featurepipe, previous path (_read_one_by_one)",
    "base": "raw redis-py: pipelined HMGET per key",
    "script": "raw redis-py: one script call for all keys",
}


def time_lookups(
    client: redis.Redis,
    view: Any,
    prefix: str,
    feats: list[str],
    batches: list[list[str]],
    at_us: int | None,
) -> dict[str, Any]:
    """Every variant on the same batches, interleaved call by call in a rotating order (ms per
    call); then the cached reader once more over the same batches (``fp_warm``: each answer
    cached, states unchanged)."""
    from featurepipe.online.lookup import OnlineReader

    wanted = {VIEW: feats}
    cached = OnlineReader(client, [view], prefix)
    plain = OnlineReader(client, [view], prefix, cache_bytes=0)
    script = client.register_script(RAW_SCRIPT)

    def keys_of(ents: list[str]) -> list[str]:
        return [f"{prefix}:{{{e}}}:{VIEW}" for e in ents]

    def base_read(ents: list[str]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for k in keys_of(ents):
            pipe.hmget(k, ["s", "f"])
        return list(pipe.execute())

    calls: dict[str, Callable[[list[str]], Any]] = {
        "fp": lambda ents: cached.read(ents, wanted, at_us=at_us),
        "fp_nocache": lambda ents: plain.read(ents, wanted, at_us=at_us),
        "fp_old": lambda ents: plain._read_one_by_one(  # the reference path
            {VIEW: ents}, len(ents), wanted, at_us, None
        ),
        "base": base_read,
        "script": lambda ents: script(keys=keys_of(ents)),
    }
    # same keys, same bytes, same answers
    assert keys_of(batches[0][:1])[0] == plain.store.layout.state_key(view, batches[0][0])
    assert all(b is not None for b, _ in base_read(batches[0]))
    assert script(keys=keys_of(batches[0])) == [v for row in base_read(batches[0]) for v in row]
    if at_us is not None:
        assert calls["fp"](batches[0]) == calls["fp_old"](batches[0])
    for ents in batches[:20]:  # warm-up
        for call in calls.values():
            call(ents)
    assert cached.cache is not None
    before = (cached.cache.reused, cached.cache.computed)
    out: dict[str, Any] = {k: [] for k in calls}
    names = list(calls)
    pc = time.perf_counter
    for i, ents in enumerate(batches):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            t = pc()
            calls[name](ents)
            out[name].append((pc() - t) * 1e3)
    reused, computed = (cached.cache.reused - before[0], cached.cache.computed - before[1])
    out["fp_reused"] = reused / max(reused + computed, 1)
    out["fp_warm"] = []
    for ents in batches:
        t = pc()
        calls["fp"](ents)
        out["fp_warm"].append((pc() - t) * 1e3)
    return out


def print_lookups(label: str, r: dict[str, Any]) -> None:
    def cell(k: str) -> str:
        return f"{pct(r[k], 50):6.3f} / {pct(r[k], 99):6.3f}"

    print(f"  {label}")
    for k, text in VARIANTS.items():
        extra = f" ({r['fp_reused']:.0%} of answers reused)" if k == "fp" else ""
        print(f"    {text:<58} p50/p99 {cell(k)} ms{extra}")
    print(
        f"    {'featurepipe, every answer cached (second pass)':<58} p50/p99 {cell('fp_warm')} ms"
    )
    for a, b in (
        ("fp", "fp_old"),
        ("fp_nocache", "fp_old"),
        ("fp", "base"),
        ("fp_nocache", "base"),
        ("fp_nocache", "script"),
    ):
        print(
            f"    {a} / {b}: p50 {pct(r[a], 50) / pct(r[b], 50):.2f}x, "
            f"p99 {pct(r[a], 99) / pct(r[b], 99):.2f}x"
        )


def materialize_log(
    log: pl.DataFrame, view: Any, client: redis.Redis, prefix: str, work: Path
) -> None:
    """The states of ``log`` (every event) written by ``materialize`` (--lookups-only)."""
    from datetime import UTC, datetime

    from featurepipe.online.materialize import materialize

    path = work / "transactions.parquet"
    log.write_parquet(path)
    end_us = int(log["event_time"].cast(pl.Int64).max()) + 1  # type: ignore[arg-type]
    until = datetime.fromtimestamp(end_us // 1_000_000 + 1, UTC)
    materialize(view, until, client, path=path, prefix=prefix)


def copy_states(src: redis.Redis, dst: redis.Redis, keys: list[str]) -> None:
    for i in range(0, len(keys), 2000):
        chunk = keys[i : i + 2000]
        pipe = src.pipeline(transaction=False)
        for k in chunk:
            pipe.hgetall(k)
        values = pipe.execute()
        out = dst.pipeline(transaction=False)
        for k, v in zip(chunk, values, strict=True):
            out.hset(k, mapping=v)
        out.execute()


FEAST_SCRIPT = r'''
import json, sys, tempfile, time, uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
import numpy as np
import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Bool, Float64, Int64, String

spec = json.loads(Path(sys.argv[1]).read_text())
d = Path(tempfile.mkdtemp())
project = "fpbench" + uuid.uuid4().hex[:8]
(d / "feature_store.yaml").write_text(f"""project: {project}
registry: {d}/registry.db
provider: local
online_store:
  type: redis
  connection_string: "{spec['redis']}"
offline_store:
  type: file
entity_key_serialization_version: 3
""")
types = {"INT": Int64, "FLOAT": Float64, "STR": String, "BOOL": Bool, "DATETIME": Int64}
feats = spec["features"]
df = pd.DataFrame(spec["rows"], columns=["user_id", *[f for f, _ in feats]])
df["event_timestamp"] = datetime.now(timezone.utc)
for f, t in feats:
    if t in ("INT", "DATETIME"):
        df[f] = df[f].astype("Int64")
df.to_parquet(d / "src.parquet")
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
fv = FeatureView(
    name="user_spend", entities=[user], ttl=timedelta(0),
    schema=[Field(name=f, dtype=types[t]) for f, t in feats],
    source=FileSource(path=str(d / "src.parquet"), timestamp_field="event_timestamp"),
)
store = FeatureStore(repo_path=str(d))
out = {}
try:
    store.apply([user, fv])
    store.write_to_online_store("user_spend", df)
    refs = [f"user_spend:{f}" for f, _ in feats]
    check = store.get_online_features(features=refs, entity_rows=[{"user_id": spec["check"][0]}])
    out["check"] = {k: v[0] for k, v in check.to_dict().items()}
    for name, batches in spec["batches"].items():
        for ents in batches[:20]:
            store.get_online_features(features=refs, entity_rows=[{"user_id": e} for e in ents])
        ms = []
        for ents in batches:
            t = time.perf_counter()
            store.get_online_features(
                features=refs, entity_rows=[{"user_id": e} for e in ents]
            ).to_dict()
            ms.append((time.perf_counter() - t) * 1e3)
        out[name] = ms
finally:
    store.teardown()
import feast
out["version"] = feast.__version__
print("FEASTJSON" + json.dumps(out, default=str))
'''


def run_feast(
    py: str,
    redis_url: str,
    view: Any,
    rows: list[list[Any]],
    batches: dict[str, Any],
    workdir: Path,
) -> dict[str, Any]:
    parts = urlsplit(redis_url)
    hostport = f"{parts.hostname}:{parts.port or 6379}"
    if parts.password:  # Feast's connection string: host:port[,password=...]
        hostport += f",password={unquote(parts.password)}"
    spec = {
        "redis": hostport,
        "features": [[f, view.ir.feature(f).expr.dtype.name] for f in view.feature_names],
        "rows": rows,
        "batches": batches,
        "check": [rows[0][0]],
    }
    (workdir / "feast_spec.json").write_text(json.dumps(spec, default=str))
    (workdir / "feast_probe.py").write_text(FEAST_SCRIPT)
    r = subprocess.run(
        [py, str(workdir / "feast_probe.py"), str(workdir / "feast_spec.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    for line in r.stdout.splitlines():
        if line.startswith("FEASTJSON"):
            out: dict[str, Any] = json.loads(line[len("FEASTJSON") :])
            return out
    raise RuntimeError(f"feast probe failed (rc {r.returncode}): {r.stderr[-2000:]}")


def stream_sections(
    args: Any,
    svc: Any,
    client: redis.Redis,
    log: pl.DataFrame,
    prefix: str,
    run_id: str,
    defs: Any,
    R: dict[str, Any],
) -> None:
    """Sections 1 and 2: throughput, its profile, steady-state freshness (states under
    ``prefix`` for the lookups)."""
    from featurepipe.dev.datagen import generate_transactions
    from featurepipe.stream.produce import ensure_topics, produce_frame

    topic = f"bench-tx-{run_id}"
    ensure_topics(svc.kafka_bootstrap, {topic: 4})
    t = time.perf_counter()
    produce_frame(log, topic, svc.kafka_bootstrap, "user_id")
    prod_s = time.perf_counter() - t
    R["produce"] = {"s": prod_s, "rate": args.events / prod_s}
    print(
        f"produced {args.events:,} events in {prod_s:.1f}s "
        f"({args.events / prod_s:,.0f}/s, kafka-python producer)"
    )

    b1 = baseline_consume(svc.kafka_bootstrap, topic, args.events)
    print(
        f"baseline consumer #1: {b1['rate']:,.0f} events/s "
        f"(window {b1['window_s']:.2f}s, wall {b1['wall_s']:.2f}s)"
    )
    w = run_worker(make_worker(defs, svc.kafka_bootstrap, client, topic, prefix, args.events))
    print(
        f"worker: {w['rate']:,.0f} events/s (window {w['window_s']:.2f}s, "
        f"{w['batches']} batches; wall {w['wall_s']:.2f}s incl. join {w['join_s']:.2f}s;"
        f" valid {w['valid']:,}, invalid {w['invalid']})"
    )
    b2 = baseline_consume(svc.kafka_bootstrap, topic, args.events)
    print(
        f"baseline consumer #2: {b2['rate']:,.0f} events/s "
        f"(window {b2['window_s']:.2f}s, wall {b2['wall_s']:.2f}s)"
    )
    R["worker"], R["base1"], R["base2"] = w, b1, b2
    bmean = (b1["rate"] + b2["rate"]) / 2
    print(
        f"  featurepipe / baseline = {w['rate'] / bmean:.3f}x; wall-clock rate incl. "
        f"join {w['events'] / w['wall_s']:,.0f}/s"
    )
    print(
        f"  backlog freshness: p50 {pct(w['fresh'], 50):,.0f} ms, "
        f"p99 {pct(w['fresh'], 99):,.0f} ms ({len(w['fresh']):,} samples)"
    )

    # profile (separate run: cProfile slows it down) ----------------------------------
    pprefix = f"{prefix}-prof"
    pn = min(args.profile_events, args.events)
    top, cum, pwin = profile_worker(
        make_worker(defs, svc.kafka_bootstrap, client, topic, pprefix, pn)
    )
    delete_prefix(client, pprefix)
    R["profile"] = {"events": pn, "window_s": pwin, "cum": cum, "top": top}
    print(f"\nprofile: worker on {pn:,} events under cProfile ({pwin:.2f}s window)")
    for k, v in cum.items():
        print(f"  {k:<46} {v:7.2f}s cumulative ({v / pwin:5.1%} of the window)")
    print(top)

    # 2. steady-state freshness ---------------------------------------------------------
    sn = int(args.rate * args.seconds)
    stopic = f"bench-steady-{run_id}"
    sprefix = f"{prefix}-steady"
    ensure_topics(svc.kafka_bootstrap, {stopic: 4})
    msgs = encode_rows(
        log.head(sn) if sn <= log.height else generate_transactions(sn, seed=12), "user_id"
    )
    sworker = make_worker(defs, svc.kafka_bootstrap, client, stopic, sprefix, sn)
    box: dict[str, Any] = {}
    th = threading.Thread(target=lambda: box.update(run_worker(sworker)), daemon=True)
    th.start()
    deadline = time.monotonic() + 60
    while not sworker.assigned_once and time.monotonic() < deadline:
        time.sleep(0.05)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=paced_producer, args=(svc.kafka_bootstrap, stopic, msgs, args.rate, q))
    p.start()
    sent, sent_s = q.get(timeout=args.seconds * 5 + 60)
    p.join(30)
    th.join(args.seconds * 5 + 60)
    s = box
    R["steady"] = {**s, "sent": sent, "sent_s": sent_s, "target_rate": args.rate}
    delete_prefix(client, sprefix)
    print(
        f"\nsteady state: producer sent {sent:,} events in {sent_s:.1f}s "
        f"({sent / sent_s:,.0f}/s, target {args.rate:,.0f}/s); worker processed "
        f"{s['events']:,} in {s['batches']} batches"
    )
    print(
        f"  freshness p50 {pct(s['fresh'], 50):.1f} ms, p99 {pct(s['fresh'], 99):.1f} ms"
        f", max {max(s['fresh']):.1f} ms ({len(s['fresh']):,} samples)"
    )
    fr = np.asarray(s["fresh"])
    print(
        "  share of samples > 100 / 250 / 400 ms: "
        + " / ".join(f"{(fr > x).mean():.2%}" for x in (100, 250, 400))
    )


# -- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    ap.add_argument("--rate", type=float, default=2000.0, help="steady-state events/s")
    ap.add_argument("--seconds", type=float, default=20.0, help="steady-state duration")
    ap.add_argument("--profile-events", type=int, default=100_000)
    ap.add_argument(
        "--lookups-only",
        action="store_true",
        help="only the lookups (states written by materialize instead of the stream worker)",
    )
    ap.add_argument(
        "--feast-python",
        default=DEFAULT_FEAST_PY,
        help="python of a venv with feast installed ('' to skip)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.seconds, args.profile_events = 30_000, 8.0, 20_000
    n1, n100 = (400, 100) if args.quick else (2000, 500)

    sys.path.insert(0, str(ROOT))
    from featurepipe import load_definitions
    from featurepipe.dev import infra
    from featurepipe.dev.datagen import generate_transactions
    from featurepipe.online.lookup import OnlineReader
    from featurepipe.online.redis_conn import connect
    from featurepipe.settings import redact_url

    rev0 = revision()
    print(
        f"featurepipe serving benchmark: commit {rev0}, {os.cpu_count()} cores, "
        f"python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    defs = load_definitions(str(ROOT / "feature_defs"))
    view = defs.view(VIEW)
    feats = list(view.feature_names)
    R: dict[str, Any] = {"events": args.events}

    with tempfile.TemporaryDirectory(prefix="fp-serving-") as tmp:
        work = Path(tmp)
        svc = infra.up(workdir=work)
        real: redis.Redis | None = None
        run_id = uuid.uuid4().hex[:8]
        prefix = f"bench-{run_id}"
        try:
            client = connect(svc.redis_url)
            print(f"kafka (tansu) {svc.kafka_bootstrap}, valkey {redact_url(svc.redis_url)}")

            # 1. throughput -------------------------------------------------------------------
            log = generate_transactions(args.events, seed=11)
            end_us = int(log["event_time"].cast(pl.Int64).max()) + 1_000_000  # type: ignore[arg-type]
            if args.lookups_only:  # states by materialize: the same answers as streamed ones
                t = time.perf_counter()
                materialize_log(log, view, client, prefix, work)
                print(f"materialized {args.events:,} events in {time.perf_counter() - t:.1f}s")
            else:
                stream_sections(args, svc, client, log, prefix, run_id, defs, R)

            # 3. lookups ------------------------------------------------------------------------
            users = sorted(log["user_id"].unique().to_list())
            rng = random.Random(5)
            one = [[rng.choice(users)] for _ in range(n1)]
            hundred = [rng.sample(users, 100) for _ in range(n100)]
            servers: list[tuple[str, redis.Redis]] = [("valkey (embedded)", client)]
            try:
                real = connect(REAL_REDIS, timeout=2.0)
                info = real.info("server")
                # every key of the prefix: the states, the generation, the materialization
                copy_states(client, real, list(client.scan_iter(match=f"{prefix}:*", count=5000)))
                servers.append((f"redis {info.get('redis_version')} :6379", real))
            except Exception as e:
                print(f"real Redis on :6379 not used: {e}")
                real = None
            R["lookups"] = {}
            for name, cl in servers:
                r1 = time_lookups(cl, view, prefix, feats, one, end_us)
                r100 = time_lookups(cl, view, prefix, feats, hundred, end_us)
                r100now = time_lookups(cl, view, prefix, feats, hundred[: n100 // 2], None)
                R["lookups"][name] = {"1": r1, "100": r100, "100now": r100now}
                print(f"\nlookups on {name}: {len(feats)} features, ms per call")
                print_lookups(f"1 entity ({len(one)} calls)", r1)
                print_lookups(f"100 entities ({len(hundred)} calls)", r100)
                print_lookups("100 entities at now (every window empty)", r100now)

            # where lookup time goes: profile 100-entity reads, every answer computed
            prof = cProfile.Profile()
            reader = OnlineReader(client, [view], prefix, cache_bytes=0)
            prof.enable()
            for ents in hundred[:200]:
                reader.read(ents, {VIEW: feats}, at_us=end_us)
            prof.disable()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(8)
            R["lookup_profile"] = buf.getvalue()
            print(f"\nprofile: {len(hundred[:200])} reads of 100 entities, cache off (valkey)")
            print("\n".join(ln for ln in buf.getvalue().splitlines()[-11:] if ln.strip()))

            # Feast -----------------------------------------------------------------------------
            R["feast"] = {}
            if args.feast_python and Path(args.feast_python).exists():
                values = OnlineReader(client, [view], prefix).read(
                    users, {VIEW: feats}, at_us=end_us
                )
                rows = [[u, *[r[f] for f in feats]] for u, r in zip(users, values, strict=True)]
                for name, cl in servers:
                    url = svc.redis_url if cl is client else REAL_REDIS
                    try:
                        t = time.perf_counter()
                        fr = run_feast(
                            args.feast_python, url, view, rows, {"1": one, "100": hundred}, work
                        )
                        fr["total_s"] = time.perf_counter() - t
                        ok = all(
                            fr["check"][f] == rows[0][1 + i]
                            or (
                                isinstance(rows[0][1 + i], float)
                                and fr["check"][f] is not None
                                and abs(fr["check"][f] - rows[0][1 + i]) < 1e-9
                            )
                            for i, f in enumerate(feats)
                            if rows[0][1 + i] is not None
                        )
                        fr["same_values"] = ok
                        R["feast"][name] = fr
                        look = R["lookups"][name]
                        print(f"\nfeast {fr['version']} on {name}: values match {ok}")
                        for k in ("1", "100"):
                            print(
                                f"  {k:>3} entities: p50 {pct(fr[k], 50):.3f} ms, "
                                f"p99 {pct(fr[k], 99):.3f} ms; feast / featurepipe (cache on) "
                                f"p50 {pct(fr[k], 50) / pct(look[k]['fp'], 50):.2f}x, p99 "
                                f"{pct(fr[k], 99) / pct(look[k]['fp'], 99):.2f}x; "
                                "feast / featurepipe (cache off) p50 "
                                f"{pct(fr[k], 50) / pct(look[k]['fp_nocache'], 50):.2f}x, p99 "
                                f"{pct(fr[k], 99) / pct(look[k]['fp_nocache'], 99):.2f}x"
                            )
                    except Exception as e:
                        print(f"feast on {name} not measured: {e}")
                        R["feast"][name] = {"error": str(e)}
            else:
                print("feast: not measured (no --feast-python venv)")
        finally:
            if real is not None:
                removed = delete_prefix(real, prefix)
                print(f"removed {removed:,} keys '{prefix}:*' from Redis :6379")
                real.close()
            infra.down(workdir=work)

    rev1 = revision()
    if rev1 != rev0:
        print(f"WARNING: the code changed during the run ({rev0} -> {rev1})")
    summary(R)
    return 0


def summary(R: dict[str, Any]) -> None:
    print("\n| measurement | featurepipe | baseline | ratio | goal | met |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    if "worker" in R:
        w, s = R["worker"], R["steady"]
        bmean = (R["base1"]["rate"] + R["base2"]["rate"]) / 2
        print(
            f"| events/s, 1 worker (processing window) | {w['rate']:,.0f} | {bmean:,.0f} | "
            f"{w['rate'] / bmean:.3f}x | >= 50k (stretch 100k) | "
            f"{'yes' if w['rate'] >= 50_000 else 'no'} |"
        )
        print(f"| events/s incl. group join (wall) | {w['events'] / w['wall_s']:,.0f} | | | | |")
        print(
            f"| freshness p50 / p99, backlog (ms) | {pct(w['fresh'], 50):,.0f} / "
            f"{pct(w['fresh'], 99):,.0f} | | | (backlog) | |"
        )
        p99 = pct(s["fresh"], 99)
        print(
            f"| freshness p50 / p99, steady {s['target_rate']:,.0f}/s (ms) | "
            f"{pct(s['fresh'], 50):.1f} / {p99:.1f} | | | p99 < 500 | "
            f"{'yes' if p99 < 500 else 'no'} |"
        )

    def ms(r: list[float]) -> str:
        return f"{pct(r, 50):.3f} / {pct(r, 99):.3f}"

    def ratio(a: list[float], b: list[float]) -> str:
        return f"{pct(a, 50) / pct(b, 50):.2f}x / {pct(a, 99) / pct(b, 99):.2f}x"

    for name, look in R["lookups"].items():
        feast = R["feast"].get(name, {})
        for k, goal in (("1", 0.5), ("100", 2.0)):
            r = look[k]
            n = f"{k} entit{'y' if k == '1' else 'ies'}, {name}"
            fe = f"; feast {ms(feast[k])}" if k in feast else ""
            rows = (
                (f"cache on ({r['fp_reused']:.0%} reused)", r["fp"]),
                ("cache off", r["fp_nocache"]),
                ("every answer cached", r["fp_warm"]),
            )
            for label, v in rows:
                met = "yes" if pct(v, 99) <= goal else "no"
                print(
                    f"| lookup {n}, {label}, p50 / p99 (ms) | {ms(v)} | previous path "
                    f"{ms(r['fp_old'])}; pipelined HMGET {ms(r['base'])}{fe} | "
                    f"{ratio(v, r['fp_old'])} of previous; {ratio(v, r['base'])} of HMGET | "
                    f"p99 <= {goal:g} | {met} |"
                )


if __name__ == "__main__":
    raise SystemExit(main())
