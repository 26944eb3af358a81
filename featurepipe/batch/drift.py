"""Feature distributions now vs the baseline frozen by ``featurepipe fit``: makes a silently
null field or a new population visible."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NULL_RATE_JUMP = 0.05
MEAN_SHIFT = 0.25
TOP_SHARE_SHIFT = 0.2


@dataclass
class Drift:
    feature: str
    metric: str
    baseline: float
    current: float
    limit: float = 0.0  # the change that counts as drift for this metric, in its own unit

    @property
    def text(self) -> str:
        return f"{self.feature}: {self.metric} {self.baseline:.3g} -> {self.current:.3g}"

    @property
    def severity(self) -> float:
        """The change in multiples of its threshold (1.0: just at it), to rank drifts."""
        change = abs(self.current - self.baseline)
        return change / self.limit if self.limit > 0 else change


def ranked(drifts: list[Drift]) -> list[Drift]:
    """``drifts``, largest change (relative to its threshold) first; ties keep their order."""
    return sorted(drifts, key=lambda d: -d.severity)


def compare(baseline: dict[str, Any], current: dict[str, Any]) -> list[Drift]:
    """Features whose null rate, mean or most common value moved beyond fixed thresholds."""
    out: list[Drift] = []
    for name, base in baseline["features"].items():
        cur = current["features"].get(name)
        if cur is None:
            continue
        if abs(cur["null_rate"] - base["null_rate"]) >= NULL_RATE_JUMP:
            out.append(
                Drift(name, "null rate", base["null_rate"], cur["null_rate"], NULL_RATE_JUMP)
            )
        if base.get("mean") is not None and cur.get("mean") is not None:
            scale = max(abs(base["mean"]), base.get("std") or 0.0, 1e-9)
            if abs(cur["mean"] - base["mean"]) / scale >= MEAN_SHIFT:
                out.append(Drift(name, "mean", base["mean"], cur["mean"], MEAN_SHIFT * scale))
        if base.get("top") and cur.get("top"):
            top_value = max(cur["top"], key=lambda k: cur["top"][k])
            b_total, c_total = sum(base["top"].values()), sum(cur["top"].values())
            b_share = base["top"].get(top_value, 0) / max(b_total, 1)
            c_share = cur["top"][top_value] / max(c_total, 1)
            if abs(c_share - b_share) >= TOP_SHARE_SHIFT:
                out.append(
                    Drift(name, f"share of {top_value!r}", b_share, c_share, TOP_SHARE_SHIFT)
                )
    return out
