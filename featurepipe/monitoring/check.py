"""Thresholds and alarms: each feature of the current data against its baseline profile.

Checks, and when each raises an alarm (the defaults are ``Thresholds()``'s):

* every feature: the null rate moved by at least ``null_rate_delta`` (absolute, either way)
  and the two-proportion z-test gives a p-value below ``null_pvalue`` (the change is not
  sampling noise);
* numeric: PSI over the baseline's decile bins (plus a NaN bin) at least ``psi``; or the
  two-sample KS test against the baseline's sample with p-value below ``ks_pvalue`` and
  statistic at least ``ks_statistic`` (with tens of thousands of rows any difference is
  significant: the statistic floor keeps the alarm to changes that matter); or a share of at
  least ``out_of_range`` of the values outside the baseline's [min, max];
* categorical: PSI over the baseline's categories (plus one bucket for every other value) at
  least ``psi``; or Jensen-Shannon distance at least ``js``; or a share of at least
  ``new_category`` of values the baseline never saw.

Distribution checks need ``min_rows`` non-null current values; with fewer the feature's
distribution is reported as not checked. Per-feature overrides come from a thresholds table
(``thresholds_from_table``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from featurepipe.dsl.monitoring import Thresholds as Thresholds  # the thresholds' one statement
from featurepipe.dsl.monitoring import ThresholdsError as ThresholdsError
from featurepipe.dsl.monitoring import threshold_values
from featurepipe.monitoring.baseline import category_values, kind_of, numeric_values
from featurepipe.monitoring.stats import bin_counts, js_distance, ks_2samp, proportion_pvalue, psi


@dataclass
class ThresholdSet:
    """The defaults and per-feature overrides (keyed ``view:feature`` or ``feature``)."""

    default: Thresholds = field(default_factory=Thresholds)
    features: dict[str, Thresholds] = field(default_factory=dict)

    def for_feature(self, view: str | None, feature: str) -> Thresholds:
        if view is not None and f"{view}:{feature}" in self.features:
            return self.features[f"{view}:{feature}"]
        return self.features.get(feature, self.default)


def thresholds_from_table(
    table: Mapping[str, Any],
    where: str = "thresholds",
    cli: Mapping[str, Any] | None = None,
    declared: Mapping[str, Mapping[str, Any]] | None = None,
) -> ThresholdSet:
    """A ``ThresholdSet`` from a table like::

        psi = 0.2                       # defaults for every feature
        null_rate_delta = 0.01
        [features."user_spend:amount_sum_24h"]   # or [features.amount_sum_24h]
        psi = 0.3
        [features.first_seen_at]
        skip = true

    ``cli``: thresholds given on the command line; they replace the table's defaults, and
    per-feature entries still win over them (they are more specific). ``declared``: the
    definitions' per-feature thresholds (``fp.monitor``), keyed ``view:feature``: over the
    defaults and the command line, under the table's own per-feature entries (the operator's
    word is the last)."""
    per_feature = table.get("features", {})
    if not isinstance(per_feature, Mapping):
        raise ThresholdsError(f"{where}: 'features' must be a table of feature tables")
    default = replace(
        Thresholds(),
        **threshold_values({k: v for k, v in table.items() if k != "features"}, where),
        **(cli or {}),
    )
    out = ThresholdSet(default)
    for name, values in (declared or {}).items():
        out.features[name] = replace(default, **values)
    for name, entry in per_feature.items():
        if not isinstance(entry, Mapping):
            raise ThresholdsError(f"{where}: features.{name} must be a table")
    # bare feature names first, then view:feature entries: the more specific one wins,
    # whatever the order of the table
    for name, entry in sorted(per_feature.items(), key=lambda kv: ":" in str(kv[0])):
        base = out.features.get(str(name), default)
        values = threshold_values(entry, f"{where}: features.{name}")
        out.features[str(name)] = replace(base, **values)
        if ":" not in str(name):  # a bare feature name also covers its declared view:feature
            for key in [k for k in out.features if k.endswith(f":{name}")]:
                out.features[key] = replace(out.features[key], **values)
    return out


@dataclass
class FeatureResult:
    """One feature checked: its statistics, the alarms raised and the histogram to draw."""

    view: str
    feature: str
    dtype: str
    kind: str
    rows: int = 0
    baseline_null_rate: float | None = None
    null_rate: float | None = None
    null_pvalue: float | None = None
    psi: float | None = None
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    js: float | None = None
    out_of_range: float | None = None
    new_category: float | None = None
    alarms: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bins: list[str] = field(default_factory=list)
    baseline_shares: list[float] = field(default_factory=list)
    current_shares: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["histogram"] = {
            "bins": out.pop("bins"),
            "baseline": out.pop("baseline_shares"),
            "current": out.pop("current_shares"),
        }
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in out.items()
        }


def check_feature(
    view: str, name: str, base: Mapping[str, Any], series: pl.Series, t: Thresholds
) -> FeatureResult:
    """``series`` (the current values of a feature) against its baseline profile ``base``."""
    dtype = str(base["type"])
    r = FeatureResult(view, name, dtype, kind_of(dtype), rows=series.len())
    if r.kind == "skipped":
        r.notes.append(str(base.get("reason", f"{dtype} features are not monitored")))
        return r
    if t.skip:
        r.kind = "skipped"
        r.notes.append("skipped by the thresholds (skip = true)")
        return r
    nulls = series.null_count()
    r.baseline_null_rate = float(base["null_rate"])
    r.null_rate = nulls / r.rows if r.rows else 0.0
    if r.rows:
        r.null_pvalue = proportion_pvalue(int(base["nulls"]), int(base["rows"]), nulls, r.rows)
        if abs(r.null_rate - r.baseline_null_rate) >= t.null_rate_delta and (
            r.null_pvalue < t.null_pvalue
        ):
            r.alarms.append("null_rate")
    present = r.rows - nulls
    if present < t.min_rows:
        r.notes.append(
            f"{present:,} non-null values, fewer than min_rows {t.min_rows:,}: "
            "distribution not checked"
        )
        return r
    if r.kind == "numeric":
        _numeric(r, base, numeric_values(series, dtype), t)
    else:
        _categorical(r, base, category_values(series), t)
    return r


def _numeric(
    r: FeatureResult, base: Mapping[str, Any], x: np.ndarray[Any, Any], t: Thresholds
) -> None:
    edges = [float(e) for e in base["edges"]]
    cur = bin_counts(x, edges) / max(x.size, 1)
    ref = np.asarray(base["shares"], dtype=np.float64)
    r.psi = psi(ref, cur)
    r.bins = _bin_labels(edges, r.dtype)
    r.baseline_shares = ref.tolist()
    r.current_shares = cur.tolist()
    if r.psi >= t.psi:
        r.alarms.append("psi")
    finite = x[np.isfinite(x)]
    sample = np.asarray(base.get("sample") or [], dtype=np.float64)
    if finite.size and sample.size:
        ks = ks_2samp(sample, finite)
        r.ks_statistic, r.ks_pvalue = ks.statistic, ks.pvalue
        if ks.pvalue < t.ks_pvalue and ks.statistic >= t.ks_statistic:
            r.alarms.append("ks")
    if finite.size and base.get("min") is not None:
        outside = (finite < float(base["min"])) | (finite > float(base["max"]))
        r.out_of_range = float(outside.mean())
        if r.out_of_range >= t.out_of_range:
            r.alarms.append("out_of_range")


def _categorical(
    r: FeatureResult, base: Mapping[str, Any], values: pl.Series, t: Thresholds
) -> None:
    known: dict[str, float] = dict(base["categories"])
    n = values.len()
    counts = dict(values.value_counts().iter_rows())
    cur = [counts.get(c, 0) / n for c in known]
    cur_other = 1.0 - sum(cur)
    ref = [*known.values(), float(base.get("other_share", 0.0))]
    cur.append(max(cur_other, 0.0))
    r.psi = psi(ref, cur)
    r.js = js_distance(ref, cur)
    r.new_category = max(cur_other - float(base.get("other_share", 0.0)), 0.0)
    shown = 20
    r.bins = [*list(known)[:shown], "(other)"]
    r.baseline_shares = [*ref[:shown], sum(ref[shown:])]
    r.current_shares = [*cur[:shown], sum(cur[shown:])]
    if r.psi >= t.psi:
        r.alarms.append("psi")
    if r.js >= t.js:
        r.alarms.append("js")
    if r.new_category >= t.new_category:
        r.alarms.append("new_category")


def _bin_labels(edges: list[float], dtype: str) -> list[str]:
    def fmt(v: float) -> str:
        if dtype == "datetime":
            from datetime import UTC, datetime

            return datetime.fromtimestamp(v, UTC).strftime("%Y-%m-%d %H:%M")
        return f"{v:.4g}"

    if not edges:
        return ["all", "NaN"]
    labels = [f"<= {fmt(edges[0])}"]
    labels += [f"({fmt(a)}, {fmt(b)}]" for a, b in itertools.pairwise(edges)]
    labels += [f"> {fmt(edges[-1])}", "NaN"]
    return labels


@dataclass
class ViewResult:
    view: str
    fingerprint: str | None
    baseline_fingerprint: str
    baseline_rows: int
    rows: int
    origin: str
    baseline_origin: str
    features: list[FeatureResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "fingerprint": self.fingerprint,
            "baseline_fingerprint": self.baseline_fingerprint,
            "baseline_rows": self.baseline_rows,
            "rows": self.rows,
            "origin": self.origin,
            "baseline_origin": self.baseline_origin,
            "notes": self.notes,
            "features": [f.as_dict() for f in self.features],
        }


@dataclass
class Report:
    views: list[ViewResult] = field(default_factory=list)

    @property
    def alarms(self) -> list[FeatureResult]:
        return [f for v in self.views for f in v.features if f.alarms]

    @property
    def ok(self) -> bool:
        return not self.alarms

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "alarms": [
                {"view": f.view, "feature": f.feature, "checks": f.alarms} for f in self.alarms
            ],
            "views": [v.as_dict() for v in self.views],
        }


def check_view(
    baseline: Mapping[str, Any],
    columns: Mapping[str, tuple[pl.Series, str | None]],
    thresholds: ThresholdSet,
    *,
    fingerprint: str | None,
    rows: int,
    origin: str,
) -> ViewResult:
    """Every feature of ``baseline`` found in ``columns`` (feature -> current values)."""
    view = str(baseline["view"])
    out = ViewResult(
        view,
        fingerprint,
        str(baseline["fingerprint"]),
        int(baseline["rows"]),
        rows,
        origin,
        str(baseline.get("origin", "")),
    )
    if fingerprint is not None and fingerprint != baseline["fingerprint"]:
        out.notes.append(
            f"the current data was produced by version {fingerprint}, the baseline by "
            f"{baseline['fingerprint']}: definitions differ"
        )
    missing = [n for n in baseline["features"] if n not in columns]
    if missing:
        out.notes.append(f"not in the current data: {', '.join(missing)}")
    for name, prof in baseline["features"].items():
        if name in columns:
            series, _ = columns[name]
            out.features.append(
                check_feature(view, name, prof, series, thresholds.for_feature(view, name))
            )
    return out
