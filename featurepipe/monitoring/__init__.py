"""Monitoring: feature distributions now against the baseline of the version that was trained.

``record_baseline`` keeps, per view version (fingerprint), the distribution of every feature
of a training set in the registry; ``monitor`` compares current data (a training set, a frame
of features, or served-feature logs) with it and reports drift and null-rate alarms. The
statistics are in ``featurepipe.monitoring.stats``, the thresholds in ``featurepipe.monitoring.check``;
docs/monitoring.md describes both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from featurepipe.batch.registry import Registry
from featurepipe.monitoring.baseline import (
    BaselineError,
    compute_baseline,
    load_baseline,
    read_baseline,
    record_baseline,
    recorded,
)
from featurepipe.monitoring.check import Report, Thresholds, ThresholdSet, check_view
from featurepipe.monitoring.inputs import CurrentView, read_current


def monitor(
    current: list[CurrentView],
    *,
    registry: Registry | None = None,
    baseline: Mapping[str, Any] | None = None,
    thresholds: ThresholdSet | None = None,
) -> Report:
    """Check every view of ``current`` against its baseline: ``baseline`` when given (it
    applies to the current view of the same name, or to a frame without lineage), else the
    one the registry holds for the view version (fingerprint) that produced the data."""
    th = thresholds or ThresholdSet()
    report = Report()
    for cv in current:
        base = _baseline_for(cv, registry, baseline)
        if base is None:
            continue
        columns = cv.columns
        if cv.view is None:  # a frame of feature columns: `name` or `<view>__<name>`
            view = str(base["view"])
            columns = {}
            for name in base["features"]:
                for column in (f"{view}__{name}", name):
                    if column in cv.columns:
                        columns[name] = cv.columns[column]
                        break
            if not columns:
                raise BaselineError(
                    f"{cv.origin}: none of the baseline's features of view '{view}' is a "
                    f"column ({', '.join(list(base['features'])[:5])}, ...)"
                )
        report.views.append(
            check_view(
                base, columns, th, fingerprint=cv.fingerprint, rows=cv.rows, origin=cv.origin
            )
        )
    if not report.views:
        assert baseline is not None
        seen = ", ".join(sorted({str(cv.view) for cv in current}))
        raise BaselineError(
            f"the baseline is of view '{baseline['view']}'; the current data holds view(s) {seen}"
        )
    return report


def _baseline_for(
    cv: CurrentView, registry: Registry | None, given: Mapping[str, Any] | None
) -> Mapping[str, Any] | None:
    if given is not None:
        return given if cv.view is None or cv.view == given["view"] else None
    if cv.view is None or cv.fingerprint is None:
        raise BaselineError(
            f"{cv.origin} carries no lineage saying which view version produced it: name the "
            "baseline to compare with (--baseline)"
        )
    found = None if registry is None else load_baseline(registry, cv.view, cv.fingerprint)
    if found is None:
        others = [] if registry is None else recorded(registry, cv.view)
        known = f" (recorded: {', '.join(others)})" if others else ""
        raise BaselineError(
            f"no baseline recorded for view '{cv.view}' version {cv.fingerprint}{known}: record "
            "one from its training data with `featurepipe monitor baseline`, or name a baseline "
            "file with --baseline"
        )
    return found


__all__ = [
    "BaselineError",
    "CurrentView",
    "Report",
    "ThresholdSet",
    "Thresholds",
    "compute_baseline",
    "load_baseline",
    "monitor",
    "read_baseline",
    "read_current",
    "record_baseline",
]
