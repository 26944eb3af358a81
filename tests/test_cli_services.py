"""The service-facing commands, as a user runs them: dev up, parity --e2e, materialize, stream,
get, dev status, dev down — in a scratch directory, against the embedded services."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fp(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, "COLUMNS": "250"}  # rich wraps to the terminal width
    return subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", *args], cwd=cwd, capture_output=True,
        text=True, timeout=timeout, env=env,
    )


def test_service_commands(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "feature_defs", tmp_path / "feature_defs")
    try:
        up = _fp(tmp_path, "dev", "up")
        assert up.returncode == 0, up.stdout + up.stderr
        status = _fp(tmp_path, "dev", "status")
        assert status.returncode == 0 and "up" in status.stdout
        gen = _fp(tmp_path, "generate", "--events", "6000", "--users", "50",
                  "--out", "data/transactions/part-0.parquet")
        assert gen.returncode == 0, gen.stdout + gen.stderr
        e2e = _fp(tmp_path, "parity", "--e2e", "--events", "data/transactions/part-0.parquet")
        assert e2e.returncode == 0, e2e.stdout + e2e.stderr
        assert "0 mismatches" in e2e.stdout
        mat = _fp(tmp_path, "materialize", "--until", "2026-01-20")
        assert mat.returncode == 0, mat.stdout + mat.stderr
        # the worker finds the embedded services through .featurepipe/dev.json
        import polars as pl

        from featurepipe.dev.infra import load
        from featurepipe.stream.produce import ensure_topics, produce_frame

        services = load(tmp_path / ".featurepipe" / "dev.json")
        assert services is not None
        log = pl.read_parquet(tmp_path / "data" / "transactions" / "part-0.parquet")
        ensure_topics(services.kafka_bootstrap, {"transactions": 2})
        produce_frame(log, "transactions", services.kafka_bootstrap, "user_id")
        stream = _fp(tmp_path, "stream", "--idle-exit", "3")
        assert stream.returncode == 0, stream.stdout + stream.stderr
        assert "6,000 events" in stream.stdout and "before the materialize cut-over" in stream.stdout
        user = log["user_id"][0]
        got = _fp(tmp_path, "get", "--entity", f"user_id={user}", "--entity", "user_id=nobody",
                  "--features", "user_spend:txn_count_total,user_spend:last_country",
                  "--at", "2026-02-01")
        assert got.returncode == 0, got.stdout + got.stderr
        assert user in got.stdout and "nobody" in got.stdout and "False" in got.stdout
        pinned = _fp(tmp_path, "get", "--entity", f"user_id={user}", "--features",
                     "user_spend:txn_count_total", "--fingerprint", "user_spend=0000000000000000")
        assert pinned.returncode == 2 and "requested" in pinned.stdout
    finally:
        down = _fp(tmp_path, "dev", "down")
    assert down.returncode == 0
    assert _fp(tmp_path, "dev", "status").returncode == 1
