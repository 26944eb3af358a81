"""`featurepipe monitor --consistency`: served values recomputed by the batch engine, bit for bit.

Lookups are made from a real Redis-protocol server and written as served-feature log rows in
the schema docs/serving-http.md documents (by a writer here, independent of the server's).
A store filled correctly agrees on every value; a store that missed events (materialized up
to an earlier time, then read later: loss) and a log of a version the definitions do not hold
are reported, naming the entity, the time and both values.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import featurepipe as fp
from featurepipe import load_definitions
from featurepipe.monitoring.consistency import check_consistency
from featurepipe.online.materialize import materialize
from featurepipe.online.redis_conn import connect
from featurepipe.store import FeatureStore

pytest_plugins = ["redis_server"]  # fixture redis_url

DEFS = """
from datetime import datetime

from pydantic import BaseModel

import featurepipe as fp


class Tx(BaseModel):
    user_id: str
    amount: float | None
    country: str | None
    ts: datetime


tx = fp.Source("cons_tx", schema=Tx, timestamp="ts", batch=fp.ParquetSource("data/tx/"))
user = fp.Entity("user", key="user_id")


@fp.feature_view(entity=user, source=tx, lateness="1h")
def spend(t):
    return {
        "n_1h": fp.count(window="1h"),
        "total": fp.sum(t.amount, default=0.0),
        "mean_1h": fp.mean(t.amount, window="1h"),
        "last_country": fp.last(t.country),
        "last_at": fp.max(t.ts),
        "ratio": fp.request("amount", float) / fp.mean(t.amount),
        "last_amounts": fp.last_k(t.amount, 3),
        "by_country": fp.sum(t.amount, by=t.country),
        "nan_mean": fp.mean(t.amount / 0.0),
    }
"""
T0 = datetime(2026, 3, 1, tzinfo=UTC)
UNTIL = T0 + timedelta(hours=2)
MINUTES = [5, 10, 20, 35, 50, 70, 95]
TX = {
    "user_id": ["u1", "u2", "u1", "u2", "u1", "u1", "u2"],
    "amount": [10.0, 4.0, -0.0, None, 30.5, 0.1, 7.25],
    "country": ["US", None, "FR", "FR", "US", "DE", "US"],
    "ts": [T0 + timedelta(minutes=m) for m in MINUTES],
}
FEATURES = ["n_1h", "total", "mean_1h", "last_country", "last_at", "ratio", "last_amounts",
            "by_country", "nan_mean"]  # fmt: skip
DTYPES = {"n_1h": "int", "total": "float", "mean_1h": "float", "last_country": "str",
          "last_at": "datetime", "ratio": "float", "last_amounts": "list[float]",
          "by_country": "map[str,float]", "nan_mean": "float"}  # fmt: skip
USERS = ["u1", "u2", "u3"]  # u3 has no event: served the defaults, found = False
AMOUNTS = [100.0, 8.0, 1.0]


def _json(dtype: str, v: Any) -> str | None:
    """A value as the server logs it (docs/serving-http.md): NaN and infinities as strings,
    datetimes as RFC 3339 UTC text."""

    def enc(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")
        if isinstance(x, datetime):
            return x.astimezone(UTC).isoformat().replace("+00:00", "Z")
        if isinstance(x, list):
            if x and isinstance(x[0], dict) and set(x[0]) == {"key", "value"}:  # a map's entries
                return {str(e["key"]): enc(e["value"]) for e in x}
            return [enc(y) for y in x]
        return x

    return None if v is None else json.dumps(enc(v))


def served_log(store: FeatureStore, at: datetime, fingerprint: str | None = None) -> pl.DataFrame:
    """Lookups of every user at ``at`` from the online store, as served-feature log rows."""
    view = store.definitions.view("spend")
    df = store.get_online_features(
        {"user_id": USERS}, ["spend"], at=at, request={"amount": AMOUNTS}
    )
    rows: dict[str, list[Any]] = {k: [] for k in (
        "request_id", "endpoint", "served_at", "request_time", "row", "entity", "request", "view",
        "fingerprint", "found", "feature", "dtype", "value", "value_num")}  # fmt: skip
    for i, r in enumerate(df.iter_rows(named=True)):
        for f in FEATURES:
            rows["request_id"].append("req-1")
            rows["endpoint"].append("/features")
            rows["served_at"].append(at)
            rows["request_time"].append(at)
            rows["row"].append(i)
            rows["entity"].append(json.dumps({"user_id": r["user_id"]}))
            rows["request"].append(json.dumps({"amount": AMOUNTS[i]}))
            rows["view"].append("spend")
            rows["fingerprint"].append(fingerprint or view.fingerprint)
            rows["found"].append(r["spend_found"])
            rows["feature"].append(f)
            rows["dtype"].append(DTYPES[f])
            rows["value"].append(_json(DTYPES[f], r[f]))
            v = r[f]
            rows["value_num"].append(float(v) if isinstance(v, int | float) else None)
    return pl.DataFrame(rows).with_columns(
        pl.col("served_at", "request_time").cast(pl.Datetime("us", "UTC")),
        pl.col("row").cast(pl.Int32),
    )


@pytest.fixture(scope="module")
def project(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    root = tmp_path_factory.mktemp("consistency")
    (root / "feature_defs").mkdir()
    (root / "feature_defs" / "spend.py").write_text(DEFS)
    (root / "data" / "tx").mkdir(parents=True)
    pl.DataFrame(
        TX,
        schema={"user_id": pl.String, "amount": pl.Float64, "country": pl.String,
                "ts": pl.Datetime("us", "UTC")},
    ).write_parquet(root / "data" / "tx" / "part-0.parquet")  # fmt: skip
    view = load_definitions(root / "feature_defs").view("spend")
    client = connect(redis_url)
    good, stale = (f"fptest-cons-{uuid.uuid4().hex[:10]}" for _ in range(2))
    materialize(view, UNTIL, client, root=root, prefix=good)
    # a store that missed the events after 40 minutes (restored from an old snapshot, say)
    materialize(view, T0 + timedelta(minutes=40), client, root=root, prefix=stale)
    try:
        yield root, good, stale
    finally:
        for prefix in (good, stale):
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
        client.close()


def test_a_correct_store_agrees_on_every_value(project: tuple[Path, str, str], redis_url: str) -> None:
    root, good, _ = project
    store = FeatureStore(root, redis_url=redis_url, prefix=good)
    log = pl.concat([served_log(store, UNTIL), served_log(store, T0 + timedelta(minutes=60))])
    # u1 has a -0.0 (0/0: NaN), u2 only positives (+inf), u3 no event (null)
    assert set(log.filter(pl.col("feature") == "nan_mean")["value"]) == {'"NaN"', '"Infinity"', None}
    report = check_consistency(store, log)
    assert report.ok, report.to_json()
    assert report.compared == log.height == 2 * len(USERS) * len(FEATURES)


def test_loss_is_found_and_named(project: tuple[Path, str, str], redis_url: str) -> None:
    """The stale store answers at UNTIL without the events after 40 minutes. By hand: u1's
    events after 40 min are 30.5 (50 min, US) and 0.1 (70 min, DE), so its total, last country,
    last time, ratio, last amounts and by-country sums differ; n_1h and mean_1h at 2h cover
    1h..2h, where the stale store has no event for u1 (null mean, count 0) but the batch sees
    0.1 at 70 min. u2's only later event is 7.25 at 95 min."""
    root, good, stale = project
    log = served_log(FeatureStore(root, redis_url=redis_url, prefix=stale), UNTIL)
    report = check_consistency(FeatureStore(root, redis_url=redis_url, prefix=good), log)
    assert not report.ok
    bad = {f.feature: f for f in report.features if f.mismatched}
    assert set(bad) == set(FEATURES) - {"nan_mean"}  # NaN (u1) and +inf (u2) either way
    assert {e["entity"] for e in bad["total"].examples} == {'{"user_id": "u1"}', '{"user_id": "u2"}'}
    u1 = next(e for e in bad["total"].examples if "u1" in e["entity"])
    # docs/semantics.md: each float held as round(x * 2**40), the exact total times 2**-40
    fixed = 10 * 2**40 + 0 + int(30.5 * 2**40) + round(0.1 * 2**40)
    assert u1["served"] == 10.0 and u1["recomputed"] == float(fixed) * 2**-40
    assert u1["request_time"] == "2026-03-01T02:00:00Z" and u1["found"] is True
    assert bad["last_country"].mismatched == 2  # u1 FR -> DE, u2 FR -> US; u3 agrees (null)


def test_another_version_is_not_recomputed(project: tuple[Path, str, str], redis_url: str) -> None:
    root, good, _ = project
    store = FeatureStore(root, redis_url=redis_url, prefix=good)
    log = served_log(store, UNTIL, fingerprint="00000000deadbeef")
    report = check_consistency(store, log)
    assert not report.ok and report.compared == 0
    assert report.skipped == {
        f"view 'spend' version 00000000deadbeef (the definitions hold "
        f"{store.definitions.view('spend').fingerprint})": log.height
    }


def test_cli_exit_codes(project: tuple[Path, str, str], redis_url: str, tmp_path: Path) -> None:
    root, good, stale = project
    served_log(FeatureStore(root, redis_url=redis_url, prefix=good), UNTIL).write_parquet(
        tmp_path / "good.parquet"
    )
    served_log(FeatureStore(root, redis_url=redis_url, prefix=stale), UNTIL).write_parquet(
        tmp_path / "stale.parquet"
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "featurepipe.cli", "monitor", *args, "--repo", str(root)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"},
        )  # fmt: skip

    out = run("--current", str(tmp_path / "good.parquet"), "--consistency")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"consistent: {len(USERS) * len(FEATURES)} served values" in out.stdout
    out = run("--current", str(tmp_path / "stale.parquet"), "--consistency", "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    got = json.loads(out.stdout)
    assert not got["ok"] and got["mismatched"] > 0
    out = run("--current", str(tmp_path / "stale.parquet"), "--consistency")
    assert out.returncode == 1 and "INCONSISTENT" in out.stdout and "u1" in out.stdout


def test_in_process_lookups_and_get_keep_a_served_log_that_recomputes_exactly(
    project: tuple[Path, str, str], redis_url: str, tmp_path: Path
) -> None:
    """`FeatureStore(log_dir=...)` and `featurepipe get --log-dir` write the served-feature
    log (the server's schema) of their lookups; recomputed, every value agrees."""
    from featurepipe.online.served_log import SCHEMA

    root, good, _ = project
    logs = tmp_path / "served"
    with FeatureStore(root, redis_url=redis_url, prefix=good, log_dir=logs) as store:
        store.get_online_features({"user_id": USERS}, ["spend"], at=UNTIL, request={"amount": AMOUNTS})
        store.get_online_features(
            {"user_id": ["u1"]}, ["spend:total", "spend:last_amounts"], as_dicts=True,
            at=T0 + timedelta(minutes=45),
        )  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", "get", "--entity", "user_id=u2", "--features",
         "spend:by_country,spend:last_at", "--at", "2026-03-01T01:30:00Z", "--log-dir", str(logs),
         "--repo", str(root), "--redis-url", redis_url, "--prefix", good],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    log = pl.concat([pl.read_parquet(f) for f in sorted(logs.glob("served-*.parquet"))])
    assert dict(log.schema) == SCHEMA
    assert log.height == len(USERS) * len(FEATURES) + 2 + 2
    assert sorted(set(log["endpoint"])) == ["get", "python"]
    assert sorted(set(log["request_time"])) == [
        T0 + timedelta(minutes=45), T0 + timedelta(minutes=90), UNTIL
    ]
    report = check_consistency(FeatureStore(root), log)
    assert report.ok and report.compared == log.height, report.to_json()
    with pytest.raises(fp.DataError, match="log_sample"):
        FeatureStore(root, log_dir=logs, log_sample=1.5)


def test_the_log_is_what_was_served(project: tuple[Path, str, str], redis_url: str, tmp_path: Path) -> None:
    """The log keeps a snapshot: rows changed by the caller after the lookup, NumPy keys and a
    NaN request value are logged as served, and recompute exactly."""
    import numpy as np

    root, good, _ = project
    logs = tmp_path / "served"
    with FeatureStore(root, redis_url=redis_url, prefix=good, log_dir=logs) as store:
        rows = store.get_online_features(
            {"user_id": np.array(["u1", "u2"])}, ["spend:ratio", "spend:last_amounts"],
            at=UNTIL, request={"amount": [math.nan, np.float64(2.0)]}, as_dicts=True,
        )  # fmt: skip
        rows[0]["last_amounts"].append(999.0)
    log = pl.read_parquet(sorted(logs.glob("served-*.parquet")))
    assert log.height == 4
    amounts = log.filter((pl.col("feature") == "last_amounts") & (pl.col("row") == 0))["value"]
    assert amounts.to_list() == ["[0.1,30.5,-0.0]"]
    assert json.loads(log["request"][0]) == {"amount": "NaN"}
    report = check_consistency(FeatureStore(root), log)
    assert report.ok and report.compared == 4, report.to_json()
