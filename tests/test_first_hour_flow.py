"""The README's "Your first project", command by command, as a user runs it: init, plan,
training-set from CSV labels, dev up (the project's own embedded broker and Redis server, found
by every later command through the project's record, also from a subdirectory), materialize,
get, parity, produce, stream, get again, dlq, dev down. Expected values are counted by hand
from the sample files with plain Python (no featurepipe code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from tests.services import unique


def _fp(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "COLUMNS": "200", **env}
    for var in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        full.pop(var, None)  # the project's `dev up` record is what the commands must find
    out = subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, env=full,
    )
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    return out


def _ok(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    out = _fp(cwd, env, *args)
    assert out.returncode == 0, f"{args}: {out.stdout}{out.stderr}"
    return out


def _us(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_readme_first_project(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    env: dict[str, str] = {}
    _ok(tmp_path, env, "init", "shop")
    shop = tmp_path / "shop"
    topic, prefix = unique("orders"), unique("shop")
    defs = shop / "feature_defs" / "orders.py"
    defs.write_text(defs.read_text().replace('topic="orders"', f'topic="{topic}"'))
    cfg = shop / "featurepipe.toml"
    cfg.write_text(
        cfg.read_text()
        .replace('prefix = "fp"', f'prefix = "{prefix}"')
        .replace('group = "featurepipe"', f'group = "{prefix}"')
    )

    # the sample files, read without featurepipe
    hist = pl.read_parquet(shop / "data" / "orders" / "part-0.parquet")
    new = pl.read_csv(shop / "data" / "new_orders.csv")
    labels = pl.read_csv(shop / "data" / "labels.csv")
    hist_rows = [(c, t) for c, t in zip(hist["customer_id"], hist["ordered_at"], strict=True)]
    new_rows = [(c, _us(t)) for c, t in zip(new["customer_id"], new["ordered_at"], strict=True)]
    cutover = min(t for _, t in new_rows).date()

    _ok(shop, env, "plan")

    train = _ok(
        shop, env, "training-set", "--entities", "data/labels.csv",
        "--features", "customer_orders", "--out", "train.parquet",
    )
    got = pl.read_parquet(shop / "train.parquet")
    assert got.height == labels.height, train.stdout
    for row in got.head(40).iter_rows(named=True):
        at = row["event_timestamp"]
        want = sum(1 for c, t in hist_rows if c == row["customer_id"] and t < at)
        assert row["orders_total"] == want, row

    _ok(shop, env, "dev", "up")
    try:
        _flow_on_services(shop, env, hist_rows, new_rows, cutover)
    finally:
        _ok(shop, env, "dev", "down")
    # the whole README path, as a user would run it, stays well inside ten minutes
    print(f"first-project flow: {time.perf_counter() - t0:.1f}s")


def _flow_on_services(
    shop: Path,
    env: dict[str, str],
    hist_rows: list[tuple[str, datetime]],
    new_rows: list[tuple[str, datetime]],
    cutover: date,
) -> None:
    status = _ok(shop / "data", env, "dev", "status")  # found from a subdirectory
    assert "up" in status.stdout
    _ok(shop, env, "materialize", "--until", cutover.isoformat())
    customer = "c0001"
    before = sum(1 for c, _ in hist_rows if c == customer)
    at = datetime(cutover.year, cutover.month, cutover.day, tzinfo=UTC) + timedelta(days=1)
    get = _ok(
        shop / "data", env, "get", "--entity", f"customer_id={customer}",
        "--features", "customer_orders", "--at", at.isoformat(), "--json",
    )
    [online] = json.loads(get.stdout)
    assert online["customer_orders_found"] is True
    assert online["orders_total"] == before
    assert online["orders_24h"] == 0  # the last day is not in Parquet

    parity = _ok(shop, env, "parity")
    assert "0 mismatches" in parity.stdout

    # one broken row among the new orders: sent, dead-lettered by the worker, never counted
    bad_time = max(t for _, t in new_rows).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with (shop / "data" / "new_orders.csv").open("a") as f:
        f.write(f"o999999,{customer},lots,US,{bad_time}\n")
    sent = _ok(shop, env, "produce", "--view", "customer_orders", "--events", "data/new_orders.csv")
    assert "amount" in sent.stdout  # the summary warns what the worker will refuse
    _ok(shop, env, "stream", "--idle-exit", "5")
    get = _ok(
        shop, env, "get", "--entity", f"customer_id={customer}",
        "--features", "customer_orders", "--at", at.isoformat(), "--json",
    )
    [online] = json.loads(get.stdout)
    new_count = sum(1 for c, _ in new_rows if c == customer)
    assert new_count > 0
    assert online["orders_total"] == before + new_count
    assert online["orders_24h"] == new_count

    dlq = _ok(shop, env, "dlq", "list", "--view", "customer_orders", "--json")
    [summary] = json.loads(dlq.stdout)
    assert summary["letters"] == 1
    [category] = summary["categories"]
    assert category["count"] == 1 and "amount" in category["category"]
    shown = _ok(shop, env, "dlq", "show", "--view", "customer_orders", "--json")
    [letter] = json.loads(shown.stdout)["letters"]
    assert "o999999" in letter["value"] and "lots" in letter["value"]
