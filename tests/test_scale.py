"""Larger-than-memory training sets: a dataset >= 3x a cgroup memory cap (slow; `make bench`).

The machinery (data generation, the cgroup v1 cap, the capped child) is benchmarks/scale.py; this
test runs it at a size that finishes in about two minutes. It skips where a memory cgroup cannot
be created (not root, or no cgroup v1 memory controller).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]

CAP = 420_000_000  # bytes
EVENTS = 26_000_000  # ~1,350 MB in memory: ~3.2x the cap
CHUNK = 6_000_000  # events per Parquet file
USERS = 100_000
LABELS = 100_000
PARTITIONS = 64
TIMEOUT_S = 400.0  # per capped run


def _scale() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "featurepipe_bench_scale", ROOT / "benchmarks" / "scale.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_partitioned_training_set_runs_under_a_cap_three_times_smaller_than_the_data(
    tmp_path: Path,
) -> None:
    scale = _scale()
    reason = scale.cgroup_unavailable()
    if reason:
        pytest.skip(f"cannot cap memory with a cgroup: {reason}")
    data = scale.make_dataset(tmp_path / "repo", EVENTS, users=USERS, labels=LABELS, chunk=CHUNK)
    assert data.memory_bytes >= 3 * CAP, scale.describe(data, CAP)

    partitioned = scale.run_capped(data, tmp_path / "out.parquet", PARTITIONS, CAP, TIMEOUT_S)
    whole = scale.run_capped(data, tmp_path / "out1.parquet", 1, CAP, TIMEOUT_S)
    report = f"{scale.describe(data, CAP)}\n{scale.table([partitioned, whole])}"

    assert partitioned.ok, (
        f"partitioned run failed under the cap\n{report}\n{partitioned.stderr_tail}"
    )
    assert partitioned.rows == LABELS, report
    assert whole.oom_killed, f"partitions=1 was expected to be OOM-killed under the cap\n{report}"
    assert scale.check_sample(data, tmp_path / "out.parquet", tmp_path) > 0
