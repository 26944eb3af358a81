"""A one-line, readable rendering of IR expressions (``featurepipe plan``, parity failures)."""

from __future__ import annotations

from featurepipe.ir import nodes as ir
from featurepipe.ir.timebase import format_duration


def describe(node: object) -> str:
    """``node`` the way a definition would spell it: ``sum(t.amount, window=3600s)``."""
    if isinstance(node, ir.Field):
        return f"t.{node.name}"
    if isinstance(node, ir.Literal):
        return repr(node.value)
    if isinstance(node, ir.FeatureRef):
        return f"feature({node.name})"
    if isinstance(node, ir.QueryTime):
        return "query_time()"
    if isinstance(node, ir.Request):
        return f"request({node.name!r}, {node.dtype})"
    if isinstance(node, ir.Agg):
        parts = [describe(node.arg)] if node.arg is not None else []
        if node.window_us is not None:
            parts.append(f"window={format_duration(node.window_us)}")
        if node.hop_us is not None:
            parts.append(f"hop={format_duration(node.hop_us)}")
        parts += [f"{k}={v!r}" for k, v in node.params or ()]
        if node.by is not None:
            parts.append(f"by={describe(node.by)}")
        if node.where is not None:
            parts.append(f"where={describe(node.where)}")
        if node.default is not None:
            parts.append(f"default={node.default!r}")
        return f"{node.kind}({', '.join(parts)})"
    if isinstance(node, ir.Call):
        args = [describe(a) for a in node.args]
        args += [f"{k}={v!r}" for k, v in node.params if k != "vocabulary"]
        return f"{node.op}({', '.join(args)})"
    return repr(node)
