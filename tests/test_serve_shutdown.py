"""``featurepipe serve --workers 2``: metrics summed over the workers, and a graceful SIGTERM.

Requests are put in flight deterministically: each client sends its headers and half of its
body, the server receives SIGTERM, then the clients send the rest. Every one of them must get
its full, correct answer, and the served-feature log (flushed only at shutdown here) must hold
every one of them.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from pathlib import Path

import polars as pl
from test_serve import AT, delete_prefix, materialize_views, start_server, write_project

pytest_plugins = ["redis_server"]  # fixture redis_url


def _send_half(port: int, body: bytes, rid: str) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST /features HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Request-ID: {rid}\r\nConnection: close\r\n\r\n"
    ).encode()
    half = len(body) // 2
    s.sendall(head + body[:half])
    return s, body[half:]


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_workers_metrics_and_graceful_shutdown(redis_url: str, tmp_path: Path) -> None:
    prefix = f"fptest-serve-stop-{uuid.uuid4().hex[:12]}"
    root = tmp_path / "p"
    write_project(root, prefix)
    materialize_views(root, redis_url, prefix, ["serve_spend", "serve_risk", "serve_pair"])
    log_dir = tmp_path / "served"
    server = start_server(
        root, redis_url, prefix, "--workers", "2", "--log-sample", "1",
        "--log-dir", str(log_dir), "--log-flush-seconds", "3600",
    )  # fmt: skip
    try:
        body = {"features": ["serve_spend:n_total"], "entities": {"user_id": ["u1"]}, "at": AT}
        for _ in range(20):  # a new connection each: both workers answer some
            assert server.post("/features", body)[0] == 200
        status, text, _ = server.call("GET", "/metrics")
        assert status == 200
        count = re.search(
            r'featurepipe_serve_requests_total\{endpoint="/features",status="200"\} (\S+)', text
        )
        assert count is not None and float(count.group(1)) == 20.0, text

        raw = json.dumps({**body, "entities": {"user_id": ["u1", "u2", "u3"]}}).encode()
        rids = [f"inflight-{i}-{uuid.uuid4().hex[:6]}" for i in range(6)]
        pending = [_send_half(server.port, raw, rid) for rid in rids]
        time.sleep(0.5)  # the requests are in flight: headers read, bodies awaited
        server.proc.terminate()  # SIGTERM
        time.sleep(1.0)
        assert server.proc.poll() is None, "the server exited with requests in flight"
        for s, rest in pending:
            s.sendall(rest)
        for s, _ in pending:
            response = _read_all(s)
            s.close()
            head, _, payload = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), response[:300]
            assert json.loads(payload)["values"] == {"serve_spend:n_total": [2, 1, 0]}
        server.proc.wait(30)
        # the log was written at shutdown, with every request answered in flight
        files = sorted(log_dir.glob("served-*.parquet"))
        assert files and not list(log_dir.glob(".*"))
        logged = pl.concat([pl.read_parquet(f) for f in files])
        assert set(rids) <= set(logged["request_id"].to_list())
        assert len(logged.filter(pl.col("request_id").is_in(rids))) == 6 * 3
    finally:
        server.stop()
        delete_prefix(redis_url, prefix)
