from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import featurepipe as fp
from featurepipe import kernels
from featurepipe.dev.datagen import generate_transactions
from featurepipe.testing import assert_parity

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_plan_prints_fingerprint_and_both_plans() -> None:
    out = _run("plan", "--defs", "feature_defs")
    assert out.returncode == 0, out.stderr
    v = fp.load_definitions(ROOT / "feature_defs").view("user_spend")
    assert v.fingerprint in out.stdout
    assert "def prepare_event(ev, seq):" in out.stdout and "def compact(c, rec):" in out.stdout
    assert "batch plan" in out.stdout and "SELECT" in out.stdout.upper()


def test_parity_cli_zero_mismatches_on_generated_log(tmp_path: Path) -> None:
    log = tmp_path / "t.parquet"
    generate_transactions(20_000, users=500, seed=3).write_parquet(log)
    out = _run("parity", "--defs", "feature_defs", "--events", str(log), "--sample", "0.5")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 mismatches" in out.stdout


def test_parity_cli_bad_input_exit_code(tmp_path: Path) -> None:
    log = tmp_path / "bad.parquet"
    pl.DataFrame({"user_id": ["u1"]}).write_parquet(log)
    out = _run("parity", "--defs", "feature_defs", "--events", str(log))
    assert out.returncode == 2
    assert "lacks field" in out.stdout


def test_parity_detects_a_one_ulp_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness is not vacuous: nudge the per-event float-sum finalization by one ulp."""
    import math

    view = fp.load_definitions(ROOT / "feature_defs").view("user_spend")
    log = generate_transactions(3_000, users=100, seed=5)
    original = kernels.finalize_float_sum
    monkeypatch.setattr(
        kernels, "finalize_float_sum", lambda *a: math.nextafter(original(*a), math.inf)
    )
    with pytest.raises(fp.ParityError, match="amount_sum_24h"):
        assert_parity(view, log, sample=0.5)


def test_definition_error_exit_code(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(
        "import featurepipe as fp\nfrom tests.schema import entity, source\n"
        "@fp.feature_view(entity=entity, source=source)\n"
        "def v(t):\n    return {'s': fp.sum(t.s)}\n"
    )
    out = _run("plan", "--defs", str(tmp_path))
    assert out.returncode == 2
    assert "feature 's'" in out.stdout
