"""The example definitions under examples/ load, and every view is bit-identical on both
paths over a generated log (so the examples cannot rot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurepipe import load_definitions
from featurepipe.dev.datagen import generate_transactions
from featurepipe.testing import assert_parity

ROOT = Path(__file__).resolve().parents[1]
POWER = ROOT / "examples" / "definition_power" / "feature_defs"


@pytest.mark.parametrize("name", ["user_patterns", "user_merchant_spend"])
def test_definition_power_examples_are_bit_identical(name: str) -> None:
    view = load_definitions(POWER).view(name)
    log = generate_transactions(4_000, users=40, merchants=6, days=60, seed=3)
    report = assert_parity(view, log)
    assert report.events == 4_000 and report.queries > 1_000
