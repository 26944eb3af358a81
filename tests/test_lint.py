"""ruff and mypy --strict stay clean on the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "cmd",
    [
        ["ruff", "check", "featurepipe", "tests"],
        ["mypy", "featurepipe"],
    ],
)
def test_clean(cmd: list[str]) -> None:
    exe = shutil.which(cmd[0], path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip(f"{cmd[0]} not installed")
    out = subprocess.run([exe, *cmd[1:]], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
