"""`featurepipe fit`: frozen, versioned artifacts used identically by both paths."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

import featurepipe as fp
from featurepipe.batch.fit import fit
from featurepipe.dev.datagen import generate_transactions
from featurepipe.testing import assert_parity

ROOT = Path(__file__).resolve().parents[1]
START, END = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "examples" / "fitted" / "feature_defs", tmp_path / "feature_defs")
    (tmp_path / "data" / "transactions").mkdir(parents=True)
    generate_transactions(5_000, users=100, days=4, seed=3).write_parquet(
        tmp_path / "data" / "transactions" / "t.parquet"
    )
    return tmp_path


def test_unfitted_view_is_refused_at_definition_time(repo: Path) -> None:
    with pytest.raises(fp.UnsupportedOperationError, match="run `featurepipe fit"):
        fp.load_definitions(repo / "feature_defs")


def test_fit_freezes_versioned_artifacts_and_baselines(repo: Path) -> None:
    report = fit(repo, "feature_defs", START, END)
    info = report.views["user_risk"]
    view = fp.load_definitions(repo / "feature_defs").view("user_risk")
    assert info["fingerprint"] == view.fingerprint
    vocab = next(n for n in view.ir.features if n.name == "country_code").expr
    assert isinstance(vocab, fp.dsl.definitions.ir.Agg)
    encoded = vocab.arg
    assert encoded is not None and encoded.op == "encode"  # type: ignore[attr-defined]
    values = dict(encoded.params)["vocabulary"]  # type: ignore[attr-defined]
    assert len(values) == 5 and values[0] == "US"  # most frequent first
    base = json.loads(Path(info["baseline"]).read_text())
    assert set(base["features"]) == set(view.feature_names)
    assert 0.0 <= base["features"]["amount_z_mean_24h"]["null_rate"] <= 1.0
    # the fitted view is parity-proven like any other
    events = pl.read_parquet(repo / "data" / "transactions" / "t.parquet")
    assert_parity(view, events, sample=0.3)


def test_refit_on_other_data_changes_the_fingerprint_same_data_does_not(repo: Path) -> None:
    fit(repo, "feature_defs", START, END)
    first = fp.load_definitions(repo / "feature_defs").view("user_risk").fingerprint
    fit(repo, "feature_defs", START, END)
    assert fp.load_definitions(repo / "feature_defs").view("user_risk").fingerprint == first
    fit(repo, "feature_defs", START, datetime(2026, 1, 2, tzinfo=UTC))
    second = fp.load_definitions(repo / "feature_defs").view("user_risk").fingerprint
    assert second != first
    current = json.loads((repo / ".featurepipe" / "registry" / "user_risk" / "current.json").read_text())
    assert len(current["history"]) == 2  # versions are kept


def test_fit_cli(repo: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", "fit", "--repo", str(repo),
         "--start", "2026-01-01", "--end", "2026-01-03"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "user_risk" in out.stdout and "baseline" in out.stdout
