"""``featurepipe serve``: the real HTTP server, in a subprocess, over a real Redis-protocol server.

A small project is written to a temporary directory; the server is started on a free port
before anything is materialized (so readiness is seen going from 503 to 200), then the views
are materialized and every endpoint is exercised over HTTP. Expected values are worked out by
hand from the events below and, for the plain view, also taken from the batch engine
(``FeatureStore.get_historical_features``, the Polars path) at the same instant.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from featurepipe.online.materialize import materialize
from featurepipe.online.redis_conn import connect
from featurepipe.serve import SERVED_LOG_SCHEMA
from featurepipe.store import FeatureStore

pytest_plugins = ["redis_server"]  # fixture redis_url

T0 = datetime(2026, 3, 1, tzinfo=UTC)
UNTIL = T0 + timedelta(hours=1)  # materialized up to here; lookups are made at this instant
AT = "2026-03-01T01:00:00Z"
API_KEY = "s3cret-key"

DEFS = """
from datetime import datetime

from pydantic import BaseModel

import featurepipe as fp


class Tx(BaseModel):
    user_id: str
    merchant_id: str
    amount: float | None
    country: str | None
    ts: datetime


tx = fp.Source("serve_tx", schema=Tx, timestamp="ts", batch=fp.ParquetSource("data/tx/"))
user = fp.Entity("user", key="user_id")
pair = fp.Entity("user_merchant", key=("user_id", "merchant_id"))


@fp.feature_view(entity=user, source=tx, lateness="1h")
def serve_spend(t):
    return {
        "n_1h": fp.count(window="1h"),
        "n_total": fp.count(),
        "amount_sum": fp.sum(t.amount, default=0.0),
        "amount_mean_7d": fp.mean(t.amount, window="7d"),
        "last_country": fp.last(t.country),
        "first_seen": fp.first(t.ts),
    }


@fp.feature_view(entity=user, source=tx, lateness="1h")
def serve_risk(t):
    return {
        "ratio": fp.request("amount", float) / fp.mean(t.amount, window="7d"),
        "seen_after_last": fp.request("seen_at", datetime) > fp.max(t.ts),
        "recent_amounts": fp.last_k(t.amount, 2),
        "countries": fp.count_by(t.country),
        "by_null_country": fp.count(by=t.country.is_null()),
    }


@fp.feature_view(entity=pair, source=tx, lateness="1h")
def serve_pair(t):
    return {"pair_n": fp.count(), "pair_sum": fp.sum(t.amount, default=0.0)}
"""

# u1: 10.0 at m1 from US (00:20), 30.0 at m2 from FR (00:30); u2: 4.0 at m1, no country (00:25)
TX = {
    "user_id": ["u1", "u2", "u1"],
    "merchant_id": ["m1", "m1", "m2"],
    "amount": [10.0, 4.0, 30.0],
    "country": ["US", None, "FR"],
    "ts": [T0 + timedelta(minutes=20), T0 + timedelta(minutes=25), T0 + timedelta(minutes=30)],
}
SPEND = ["n_1h", "n_total", "amount_sum", "amount_mean_7d", "last_country", "first_seen"]
# by hand, at 01:00; u3 has no event: the declared defaults
BY_HAND = {
    "u1": [2, 2, 40.0, 20.0, "FR", "2026-03-01T00:20:00Z"],
    "u2": [1, 1, 4.0, 4.0, None, "2026-03-01T00:25:00Z"],
    "u3": [0, 0, 0.0, None, None, None],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A ``featurepipe serve`` subprocess and how to talk to it."""

    port: int
    proc: subprocess.Popen[str]
    headers: dict[str, str] = field(default_factory=dict)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = raw if raw is not None else None if body is None else json.dumps(body).encode()
            hdrs = {**self.headers, **(headers or {})}
            if data is not None:
                hdrs.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            ctype = resp.getheader("content-type") or ""
            parsed: Any = json.loads(payload) if "json" in ctype else payload.decode()
            return resp.status, parsed, {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()

    def post(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        status, parsed, _ = self.call("POST", path, body, **kw)
        return status, parsed

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)


def start_server(root: Path, redis_url: str, prefix: str, *args: str) -> Server:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("FEATUREPIPE_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "featurepipe.cli", "serve", "--repo", str(root),
         "--redis-url", redis_url, "--prefix", prefix, "--port", str(port), *args],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    server = Server(port, proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if server.call("GET", "/health")[0] == 200:
                return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise AssertionError("server did not come up within 60 s")


def write_project(root: Path, prefix: str) -> None:
    (root / "feature_defs").mkdir(parents=True)
    (root / "feature_defs" / "serve_defs.py").write_text(DEFS)
    (root / "featurepipe.toml").write_text(f'definitions = "feature_defs"\nprefix = "{prefix}"\n')
    (root / "data" / "tx").mkdir(parents=True)
    pl.DataFrame(
        TX,
        schema={
            "user_id": pl.String,
            "merchant_id": pl.String,
            "amount": pl.Float64,
            "country": pl.String,
            "ts": pl.Datetime("us", "UTC"),
        },
    ).write_parquet(root / "data" / "tx" / "part-0.parquet")


def materialize_views(root: Path, redis_url: str, prefix: str, names: list[str]) -> None:
    store = FeatureStore(root)
    client = connect(redis_url)
    try:
        for name in names:
            materialize(store.definitions.view(name), UNTIL, client, root=root, prefix=prefix)
    finally:
        client.close()


def delete_prefix(redis_url: str, prefix: str) -> None:
    client = connect(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@dataclass
class Project:
    root: Path
    redis_url: str
    prefix: str
    server: Server
    log_dir: Path
    ready_before: tuple[int, Any]  # /ready before anything was materialized
    ready_partial: tuple[int, Any]  # /ready with one view of three materialized


@pytest.fixture(scope="module")
def project(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    root = tmp_path_factory.mktemp("serve")
    prefix = f"fptest-serve-{uuid.uuid4().hex[:12]}"
    write_project(root, prefix)
    log_dir = root / "served"
    server = start_server(
        root, redis_url, prefix, "--api-key", API_KEY, "--log-sample", "1.0",
        "--log-dir", str(log_dir), "--log-flush-seconds", "0.2", "--max-entities", "50",
        "--max-body-bytes", "20000",
    )  # fmt: skip
    server.headers = {"X-API-Key": API_KEY}
    try:
        before = server.call("GET", "/ready")[:2]
        materialize_views(root, redis_url, prefix, ["serve_spend"])
        partial = server.call("GET", "/ready")[:2]
        materialize_views(root, redis_url, prefix, ["serve_risk", "serve_pair"])
        yield Project(root, redis_url, prefix, server, log_dir, before, partial)
    finally:
        server.stop()
        delete_prefix(redis_url, prefix)


def features(project: Project, body: dict[str, Any]) -> dict[str, Any]:
    status, got = project.server.post("/features", body)
    assert status == 200, got
    return dict(got)


# -- values ------------------------------------------------------------------------------------
def test_values_worked_by_hand(project: Project) -> None:
    users = ["u1", "u2", "u3", "u1"]
    got = features(project, {"features": ["serve_spend"], "entities": {"user_id": users}, "at": AT})
    assert got["features"] == [f"serve_spend:{f}" for f in SPEND]
    for i, f in enumerate(SPEND):
        assert got["values"][f"serve_spend:{f}"] == [BY_HAND[u][i] for u in users], f
    assert got["found"] == {"serve_spend": [True, True, False, True]}
    assert got["at"] == AT and got["at_us"] == int(UNTIL.timestamp()) * 1_000_000
    store = FeatureStore(project.root)
    assert got["fingerprints"] == {"serve_spend": store.definitions.view("serve_spend").fingerprint}


def test_values_equal_the_batch_engine(project: Project) -> None:
    """The Polars training-set path at the same instant gives the same values."""
    users = ["u1", "u2", "u3"]
    store = FeatureStore(project.root)
    batch = store.get_historical_features(
        pl.DataFrame({"user_id": users, "event_timestamp": [UNTIL] * 3}), ["serve_spend"]
    )
    got = features(project, {"features": ["serve_spend"], "entities": {"user_id": users}, "at": AT})
    for f in SPEND:
        expected = batch[f].to_list()
        if f == "first_seen":
            expected = [None if v is None else v.strftime("%Y-%m-%dT%H:%M:%SZ") for v in expected]
        assert got["values"][f"serve_spend:{f}"] == expected, f


def test_http_equals_the_in_process_lookup(project: Project) -> None:
    """The same answer as ``FeatureStore.get_online_features``, at an epoch-microsecond time."""
    store = FeatureStore(project.root, redis_url=project.redis_url)
    refs = ["serve_spend:n_total", "serve_spend:amount_mean_7d", "serve_pair"]
    keys = {"user_id": ["u1", "u2", "u1"], "merchant_id": ["m1", "m1", "m2"]}
    at_us = int(UNTIL.timestamp()) * 1_000_000
    expected = store.get_online_features(keys, refs, at=UNTIL, as_dicts=True)
    got = features(project, {"features": refs, "entities": keys, "at": at_us})
    for name in ["n_total", "amount_mean_7d"]:
        assert got["values"][f"serve_spend:{name}"] == [r[name] for r in expected]
    for name in ["pair_n", "pair_sum"]:
        assert got["values"][f"serve_pair:{name}"] == [r[name] for r in expected]
    assert got["found"]["serve_pair"] == [r["serve_pair_found"] for r in expected]


def test_composite_keys(project: Project) -> None:
    got = features(
        project,
        {
            "features": ["serve_pair"],
            "entities": {"user_id": ["u1", "u1", "u2", "u2"], "merchant_id": ["m1", "m2", "m1", "m2"]},
            "at": AT,
        },
    )
    assert got["values"]["serve_pair:pair_n"] == [1, 1, 1, 0]
    assert got["values"]["serve_pair:pair_sum"] == [10.0, 30.0, 4.0, 0.0]
    assert got["found"]["serve_pair"] == [True, True, True, False]


def test_request_time_features(project: Project) -> None:
    """u1's 7-day mean is 20.0 and newest event 00:30; u3 has none."""
    got = features(
        project,
        {
            "features": ["serve_risk", "serve_spend:n_total"],
            "entities": {"user_id": ["u1", "u1", "u3"]},
            "request": {
                "amount": [50.0, 5, 7.5],  # an int for a float field is taken as a float
                "seen_at": ["2026-03-01T00:31:00Z", "2026-03-01T00:29:00+00:00", None],
            },
            "at": AT,
        },
    )
    assert got["values"]["serve_risk:ratio"] == [2.5, 0.25, None]
    assert got["values"]["serve_risk:seen_after_last"] == [True, False, None]
    assert got["values"]["serve_spend:n_total"] == [2, 2, 0]
    assert got["found"] == {"serve_risk": [True, True, False], "serve_spend": [True, True, False]}


def test_default_request_time_is_now(project: Project) -> None:
    """Without 'at' the windows are finalized now: the 1-hour window of 2026 is empty."""
    before = time.time_ns() // 1000
    got = features(project, {"features": ["serve_spend:n_1h", "serve_spend:n_total"],
                             "entities": {"user_id": ["u1"]}})  # fmt: skip
    assert before <= got["at_us"] <= time.time_ns() // 1000
    assert got["values"] == {"serve_spend:n_1h": [0], "serve_spend:n_total": [2]}


def test_version_pin(project: Project) -> None:
    fingerprint = FeatureStore(project.root).definitions.view("serve_spend").fingerprint
    body = {"features": ["serve_spend:n_total"], "entities": {"user_id": ["u1"]}, "at": AT}
    assert features(project, {**body, "pins": {"serve_spend": fingerprint}})["values"] == {
        "serve_spend:n_total": [2]
    }
    status, got = project.server.post("/features", {**body, "pins": {"serve_spend": "0" * 16}})
    assert status == 409 and got["error"]["code"] == "version_mismatch"
    assert "0" * 16 in got["error"]["message"] and fingerprint in got["error"]["message"]


# -- Feast-compatible endpoint -----------------------------------------------------------------
def test_feast_shapes(project: Project) -> None:
    status, got = project.server.post(
        "/get-online-features",
        {
            "features": ["serve_spend:n_total", "serve_spend:last_country"],
            "entities": {"user_id": ["u1", "u2", "u3"]},
        },
    )
    assert status == 200, got
    assert set(got) == {"metadata", "results"}
    assert got["metadata"] == {"feature_names": ["user_id", "n_total", "last_country"]}
    keys, n_total, country = got["results"]
    assert keys["values"] == ["u1", "u2", "u3"]
    assert keys["statuses"] == ["PRESENT"] * 3
    assert keys["event_timestamps"] == ["1970-01-01T00:00:00Z"] * 3
    assert n_total["values"] == [2, 1, 0]
    assert n_total["statuses"] == ["PRESENT", "PRESENT", "NOT_FOUND"]
    # u2's only event had no country: a null value of a found entity
    assert country["values"] == ["FR", None, None]
    assert country["statuses"] == ["PRESENT", "NULL_VALUE", "NOT_FOUND"]
    stamps = n_total["event_timestamps"]
    assert len(stamps) == 3 and len(set(stamps)) == 1 and stamps[0].endswith("Z")


def test_feast_full_names_request_data_and_feature_service(project: Project) -> None:
    """Request data ride in 'entities', as in Feast; the lookup is made now, when u1's 7-day
    window is empty (ratio null) but its newest event (00:30, a lifetime max) is known."""
    status, got = project.server.post(
        "/get-online-features",
        {
            "feature_service": "serve_risk",
            "entities": {
                "user_id": ["u1", "u1"],
                "amount": [50.0, 5.0],
                "seen_at": ["2026-03-01T00:31:00Z", "2026-03-01T00:29:00Z"],
            },
            "full_feature_names": True,
        },
    )
    assert status == 200, got
    assert got["metadata"]["feature_names"] == [
        "user_id",
        "serve_risk__ratio",
        "serve_risk__seen_after_last",
        "serve_risk__recent_amounts",
        "serve_risk__countries",
        "serve_risk__by_null_country",
    ]
    keys, ratio, seen, recent, *_ = got["results"]
    # lifetime lists and maps do not depend on the time: u1's two amounts, newest first
    assert recent == {**recent, "values": [[30.0, 10.0]] * 2, "statuses": ["PRESENT"] * 2}
    assert keys["values"] == ["u1", "u1"]
    assert ratio == {**ratio, "values": [None, None], "statuses": ["NULL_VALUE"] * 2}
    assert seen == {**seen, "values": [True, False], "statuses": ["PRESENT"] * 2}


def test_feast_errors(project: Project) -> None:
    post = project.server.post
    status, got = post("/get-online-features", {"entities": {"user_id": ["u1"]}})
    assert status == 400 and "features" in got["error"]["message"]
    status, got = post("/get-online-features", {"features": ["nope:x"], "entities": {"user_id": ["u1"]}})
    assert status == 400 and got["error"]["code"] == "unknown_feature"
    status, got = post(
        "/get-online-features", {"features": ["serve_spend:n_total"], "entities": {"user_id": "u1"}}
    )
    assert status == 400 and "'entities'" in got["error"]["message"]


# -- bad requests: a 4xx naming the problem, never a 500 ---------------------------------------
GOOD = {"features": ["serve_spend:n_total"], "entities": {"user_id": ["u1"]}}


@pytest.mark.parametrize(
    ("body", "status", "code", "says"),
    [
        (b"{not json", 400, "malformed_json", "not valid JSON"),
        (b"", 400, "malformed_json", "empty"),
        (b"[1, 2]", 400, "bad_request", "JSON object"),
        ({**GOOD, "features": ["serve_spend:nope"]}, 400, "unknown_feature", "nope"),
        ({**GOOD, "features": ["no_such_view"]}, 400, "unknown_feature", "no_such_view"),
        ({**GOOD, "features": []}, 400, "bad_request", "empty"),
        ({**GOOD, "features": "serve_spend"}, 400, "bad_request", "'features'"),
        ({**GOOD, "entities": {"user_id": [42]}}, 400, "bad_request", "user_id"),
        ({**GOOD, "entities": {}}, 400, "bad_request", "user_id"),
        ({**GOOD, "entities": {"customer": ["u1"]}}, 400, "bad_request", "customer"),
        (
            {"features": ["serve_pair"], "entities": {"user_id": ["u1"]}},
            400,
            "bad_request",
            "merchant_id",
        ),
        ({**GOOD, "entities": {"user_id": ["u1"] * 51}}, 413, "too_many_entities", "50"),
        (
            {**GOOD, "features": ["serve_risk"], "request": {"amount": ["lots"], "seen_at": [None]}},
            400,
            "bad_request",
            "amount",
        ),
        (
            {**GOOD, "features": ["serve_risk"], "request": {"amount": [1.0]}},
            400,
            "bad_request",
            "seen_at",
        ),
        (
            {**GOOD, "features": ["serve_risk"], "request": {"amount": [1.0], "seen_at": ["soon"]}},
            400,
            "bad_request",
            "seen_at",
        ),
        ({**GOOD, "request": {"amount": [1.0]}}, 400, "bad_request", "amount"),
        ({**GOOD, "request": {"amount": 1.0}}, 400, "bad_request", "amount"),
        ({**GOOD, "at": "yesterday-ish"}, 400, "bad_request", "yesterday-ish"),
        ({**GOOD, "at": 1.5}, 400, "bad_request", "'at'"),
        ({**GOOD, "pins": {"serve_pair": "abc"}}, 400, "bad_request", "serve_pair"),
        ({**GOOD, "pins": ["abc"]}, 400, "bad_request", "'pins'"),
        ({**GOOD, "entites": {}}, 400, "bad_request", "entites"),
        ({"features": ["serve_spend"]}, 400, "bad_request", "entities"),
        ({**GOOD, "entities": {"user_id": ["u1" * 12000]}}, 413, "body_too_large", "bytes"),
    ],
)
def test_bad_requests(project: Project, body: Any, status: int, code: str, says: str) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got_status, got, _ = project.server.call("POST", "/features", raw=raw)
    assert (got_status, got["error"]["code"]) == (status, code), got
    assert says in got["error"]["message"], got
    assert got["error"]["status"] == status


def test_unknown_path_and_method(project: Project) -> None:
    status, got, _ = project.server.call("GET", "/nope")
    assert status == 404 and got["error"]["code"] == "not_found"
    status, got, _ = project.server.call("GET", "/features")
    assert status == 405 and "POST" in got["error"]["message"]


def test_store_not_initialized_is_503(project: Project, tmp_path: Path) -> None:
    """A server over an empty prefix answers lookups 503 (and /health 200)."""
    prefix = f"fptest-serve-empty-{uuid.uuid4().hex[:8]}"
    write_project(tmp_path / "p", prefix)
    server = start_server(tmp_path / "p", project.redis_url, prefix)
    try:
        status, got = server.post("/features", GOOD)
        assert status == 503 and got["error"]["code"] == "store_not_ready", got
        assert "materialize" in got["error"]["message"]
        assert server.call("GET", "/health")[0] == 200
    finally:
        assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled


def test_unreachable_store_is_503(tmp_path: Path) -> None:
    write_project(tmp_path / "p", "fptest-unreachable")
    server = start_server(tmp_path / "p", f"redis://127.0.0.1:{free_port()}/0", "fptest-unreachable")
    try:
        status, got = server.post("/features", GOOD)
        assert status == 503 and got["error"]["code"] == "store_unavailable", got
        status, ready, _ = server.call("GET", "/ready")
        assert status == 503 and "cannot be reached" in ready["problem"]
    finally:
        server.stop()


# -- auth --------------------------------------------------------------------------------------
def test_auth(project: Project) -> None:
    call = project.server.call
    status, got, headers = call("POST", "/features", GOOD, headers={"X-API-Key": ""})
    assert status == 401 and got["error"]["code"] == "unauthorized"
    assert headers["www-authenticate"].startswith("Bearer")
    status, _, _ = call("POST", "/features", GOOD, headers={"X-API-Key": "wrong"})
    assert status == 401
    project.server.headers = {}
    try:
        assert call("POST", "/features", GOOD)[0] == 401
        assert call("POST", "/get-online-features", GOOD)[0] == 401
        assert call("POST", "/features", GOOD, headers={"Authorization": f"Bearer {API_KEY}"})[0] == 200
        assert call("POST", "/features", GOOD, headers={"X-API-Key": API_KEY})[0] == 200
        # probes and the description need no key
        for path in ["/health", "/ready", "/metrics", "/openapi.json", "/docs"]:
            assert call("GET", path)[0] == 200, path
    finally:
        project.server.headers = {"X-API-Key": API_KEY}


# -- readiness, metrics, description -----------------------------------------------------------
def test_readiness_follows_materialization(project: Project) -> None:
    status, body = project.ready_before
    assert status == 503 and body["ready"] is False and "no generation" in body["problem"]
    status, body = project.ready_partial
    assert status == 503 and body["views"]["serve_spend"]["ok"] is True
    assert body["views"]["serve_risk"] == {
        "fingerprint": body["views"]["serve_risk"]["fingerprint"],
        "served": None,
        "ok": False,
        "problem": "not materialized in this store generation",
    }
    status, body, _ = project.server.call("GET", "/ready")
    assert status == 200 and body["ready"] is True and body["generation"]
    assert all(v["ok"] and v["served"] == v["fingerprint"] for v in body["views"].values())


def test_metrics(project: Project) -> None:
    features(project, GOOD)
    project.server.post("/features", {**GOOD, "features": ["nope"]})
    status, text, headers = project.server.call("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'featurepipe_serve_requests_total{endpoint="/features",status="200"}' in text
    assert 'featurepipe_serve_errors_total{code="unknown_feature",endpoint="/features"}' in text
    assert 'featurepipe_serve_request_duration_seconds_bucket{endpoint="/features",le="0.002"}' in text
    assert "featurepipe_serve_entity_rows_total" in text
    assert "featurepipe_serve_log_rows_total" in text


def test_openapi_and_docs(project: Project) -> None:
    status, spec, _ = project.server.call("GET", "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    assert {"/features", "/get-online-features", "/health", "/ready", "/metrics"} <= set(
        spec["paths"]
    )
    status, page, _ = project.server.call("GET", "/docs")
    assert status == 200 and "POST /get-online-features" in page


# -- served-feature log ------------------------------------------------------------------------
def test_served_feature_log(project: Project) -> None:
    rid = f"req-{uuid.uuid4().hex[:8]}"
    status, _, _ = project.server.call(
        "POST",
        "/features",
        {
            "features": ["serve_spend:n_total", "serve_spend:first_seen", "serve_risk:ratio"],
            "entities": {"user_id": ["u1", "u3"]},
            "request": {"amount": [50.0, 1.0]},
            "at": AT,
        },
        headers={"X-Request-ID": rid},
    )
    assert status == 200
    deadline = time.monotonic() + 20
    rows = pl.DataFrame()
    while time.monotonic() < deadline:
        files = sorted(project.log_dir.glob("served-*.parquet"))
        if files:
            frame = pl.concat([pl.read_parquet(f) for f in files])
            rows = frame.filter(pl.col("request_id") == rid)
            if len(rows):
                break
        time.sleep(0.1)
    assert dict(frame.schema) == SERVED_LOG_SCHEMA
    assert len(rows) == 6  # 2 request rows x 3 features
    rows = rows.sort("row", "view", "feature")
    at = UNTIL
    assert rows["request_time"].to_list() == [at] * 6
    assert rows["endpoint"].unique().to_list() == ["/features"]
    assert [json.loads(e) for e in rows["entity"]] == [{"user_id": "u1"}] * 3 + [{"user_id": "u3"}] * 3
    assert json.loads(rows["request"][0]) == {"amount": 50.0}
    got = {(r["row"], r["feature"]): r for r in rows.iter_rows(named=True)}
    assert got[(0, "n_total")]["value"] == "2" and got[(0, "n_total")]["value_num"] == 2.0
    assert got[(0, "first_seen")]["value"] == '"2026-03-01T00:20:00Z"'
    assert got[(0, "first_seen")]["value_num"] is None
    assert got[(0, "ratio")]["value"] == "2.5" and got[(0, "ratio")]["found"] is True
    assert got[(1, "n_total")]["found"] is False and got[(1, "ratio")]["value"] == "null"
    fingerprints = {
        v: FeatureStore(project.root).definitions.view(v).fingerprint
        for v in ("serve_spend", "serve_risk")
    }
    assert {r["view"]: r["fingerprint"] for r in got.values()} == fingerprints


def test_lists_and_maps(project: Project) -> None:
    """List and map features as JSON arrays and objects (keys as JSON text), worked by hand:
    u1 10.0 (US, 00:20) then 30.0 (FR, 00:30); u2 4.0 with no country."""
    refs = ["serve_risk:recent_amounts", "serve_risk:countries", "serve_risk:by_null_country"]
    got = features(
        project,
        {"features": refs, "entities": {"user_id": ["u1", "u2", "u3"]}, "at": AT,
         "request": {"amount": [1.0, 1.0, 1.0], "seen_at": [AT, AT, AT]}},
    )  # fmt: skip
    assert got["values"]["serve_risk:recent_amounts"] == [[30.0, 10.0], [4.0], None]
    assert got["values"]["serve_risk:countries"] == [{"FR": 1, "US": 1}, None, None]
    assert got["values"]["serve_risk:by_null_country"] == [{"false": 2}, {"true": 1}, None]


def test_served_log_is_consistent_with_the_batch_engine(project: Project) -> None:
    """The served-feature log of real HTTP lookups, recomputed by the batch engine
    (`featurepipe monitor --consistency`): every served value agrees, bit for bit."""
    from featurepipe.monitoring.consistency import check_consistency

    rid = f"req-{uuid.uuid4().hex[:8]}"
    body = {
        "features": ["serve_spend", "serve_risk", "serve_pair"],
        "entities": {"user_id": ["u1", "u2", "u3", "u1"], "merchant_id": ["m1", "m1", "m1", "m2"]},
        "request": {"amount": [50.0, 2.0, 1.0, -0.0], "seen_at": [AT, "2026-03-01T00:26:00Z", AT, AT]},
        "at": AT,
    }
    status, _, _ = project.server.call("POST", "/features", body, headers={"X-Request-ID": rid})
    assert status == 200
    deadline = time.monotonic() + 20
    rows = pl.DataFrame()
    while time.monotonic() < deadline and not len(rows):
        files = sorted(project.log_dir.glob("served-*.parquet"))
        if files:
            frame = pl.concat([pl.read_parquet(f) for f in files])
            rows = frame.filter(pl.col("request_id") == rid)
        time.sleep(0.1)
    assert len(rows) == 4 * (6 + 5 + 2)
    report = check_consistency(FeatureStore(project.root), rows)
    assert report.ok and report.compared == len(rows), report.to_json()
    # a value changed in the log is found
    bad = rows.with_columns(
        pl.when((pl.col("feature") == "amount_sum") & (pl.col("row") == 0))
        .then(pl.lit("40.000000001"))
        .otherwise(pl.col("value"))
        .alias("value")
    )
    report = check_consistency(FeatureStore(project.root), bad)
    assert report.mismatched == 1
