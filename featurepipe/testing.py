"""Test helpers for users' own suites: ``assert_parity`` fails with a readable diff."""

from __future__ import annotations

from typing import Any

import polars as pl

from featurepipe.dsl.definitions import FeatureView
from featurepipe.errors import ParityError
from featurepipe.ir.describe import describe
from featurepipe.parity.harness import ParityReport, run_parity


def assert_parity(view: FeatureView, events: pl.DataFrame, **kwargs: Any) -> ParityReport:
    """Replay ``events`` through both paths; raise ``ParityError`` on any differing value."""
    report = run_parity(view, events, **kwargs)
    if not report.ok:
        lines = [f"view '{view.name}': {report.mismatches} mismatching value(s)"]
        for f in report.features:
            if f.mismatched:
                lines.append(f"  {f.name} = {describe(view.ir.feature(f.name).expr)}")
                lines.append(f"    {f.mismatched}/{f.compared} differ; first: {f.first}")
        raise ParityError("\n".join(lines))
    return report
