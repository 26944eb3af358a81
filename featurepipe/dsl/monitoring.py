"""Monitoring thresholds declared with the definitions: ``fp.monitor(psi=0.3)`` per feature.

They say when `featurepipe monitor` should alarm about a feature (docs/monitoring.md); they are
not part of what a feature computes, so they leave the view's fingerprint alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from featurepipe.errors import DefinitionError, FeaturepipeError


class ThresholdsError(FeaturepipeError):
    """A thresholds table holds an unknown key or a value of the wrong type."""


@dataclass(frozen=True)
class Thresholds:
    psi: float = 0.2
    ks_pvalue: float = 0.001
    ks_statistic: float = 0.1
    js: float = 0.1
    null_rate_delta: float = 0.01
    null_pvalue: float = 0.001
    out_of_range: float = 0.02
    new_category: float = 0.02
    min_rows: int = 200
    skip: bool = False  # not monitored at all


KEYS = {f.name: f.type for f in fields(Thresholds)}
ALIASES = {"null_rate": "null_rate_delta"}  # fp.monitor(null_rate=0.02): the change that alarms


def threshold_values(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in KEYS:
            raise ThresholdsError(
                f"{where}: unknown threshold '{key}' (known: {', '.join(sorted(KEYS))})"
            )
        want = KEYS[key]
        if want == "bool":
            ok = isinstance(value, bool)
        elif want == "int":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
        if not ok:
            what = {"bool": "true or false", "int": "a whole number >= 1"}.get(
                str(want), "a number >= 0"
            )
            raise ThresholdsError(f"{where}: '{key}' must be {what}, got {value!r}")
        out[key] = float(value) if want == "float" else value
    return out


def monitor(**thresholds: Any) -> dict[str, Any]:
    """Alarm thresholds of one feature for `featurepipe monitor`, given to the view as
    ``@fp.feature_view(..., monitor={"amount_sum_24h": fp.monitor(psi=0.3)})``. Keys: those of
    ``Thresholds`` (``psi``, ``ks_pvalue``, ``ks_statistic``, ``js``, ``null_rate_delta`` (or
    ``null_rate``), ``null_pvalue``, ``out_of_range``, ``new_category``, ``min_rows``,
    ``skip``)."""
    given = {ALIASES.get(k, k): v for k, v in thresholds.items()}
    try:
        return threshold_values(given, "fp.monitor")
    except ThresholdsError as e:
        raise DefinitionError(str(e)) from None


def view_thresholds(
    view: str, features: list[str], given: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """``feature_view(monitor=...)`` checked: feature name -> thresholds (``fp.monitor``)."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise DefinitionError(
            'monitor= takes a dict of feature name -> fp.monitor(...), e.g. monitor={"amount_'
            'sum_24h": fp.monitor(psi=0.3)}',
            view=view,
        )
    out: dict[str, dict[str, Any]] = {}
    for name, thresholds in given.items():
        if name not in features:
            raise DefinitionError(
                f"monitor=: no feature named {name!r} (features: {', '.join(features)})", view=view
            )
        if not isinstance(thresholds, Mapping):
            raise DefinitionError(f"monitor=: {name!r} needs fp.monitor(...)", view=view)
        try:
            out[name] = threshold_values(thresholds, f"monitor= of {name!r}")
        except ThresholdsError as e:
            raise DefinitionError(str(e), view=view) from None
    return out
