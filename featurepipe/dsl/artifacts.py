"""Fitted artifacts (vocabularies, scaling statistics, quantile boundaries) seen at build time.

A view that uses ``fp.encode(x)`` without a vocabulary, ``fp.standardize(x)`` or
``fp.bucketize(x, quantiles=q)`` needs statistics fitted on batch data by ``featurepipe fit``.
The loader makes the frozen artifacts of the registry visible here while it imports the
definitions, and the view builder turns each fitted op into ordinary IR with literal
parameters: both compilers see plain ops, and the view fingerprint covers the fitted values.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from featurepipe.ir import nodes as ir
from featurepipe.ir.fingerprint import canonical


@dataclass(frozen=True)
class FitRequest:
    view: str
    artifact_id: str
    kind: str  # "vocabulary" | "standardize" | "quantiles"
    arg: ir.Node
    params: tuple[tuple[str, Any], ...]


@dataclass
class ArtifactContext:
    values: dict[str, dict[str, Any]] = field(default_factory=dict)  # view -> id -> value
    fitting: bool = False
    requests: list[FitRequest] = field(default_factory=list)


_CONTEXT: ContextVar[ArtifactContext | None] = ContextVar("featurepipe_artifacts", default=None)


@contextlib.contextmanager
def artifact_context(ctx: ArtifactContext) -> Iterator[ArtifactContext]:
    token = _CONTEXT.set(ctx)
    try:
        yield ctx
    finally:
        _CONTEXT.reset(token)


def artifact_id(kind: str, arg: ir.Node, params: dict[str, Any]) -> str:
    blob = json.dumps([kind, canonical(arg), sorted(params.items())], sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def lookup(view: str, kind: str, arg: ir.Node, params: dict[str, Any], placeholder: Any) -> Any:
    """The fitted value, a placeholder while fitting, or None when nothing is fitted."""
    ctx = _CONTEXT.get()
    aid = artifact_id(kind, arg, params)
    if ctx is None:
        return None
    if aid in ctx.values.get(view, {}):
        return ctx.values[view][aid]
    if ctx.fitting:
        ctx.requests.append(FitRequest(view, aid, kind, arg, tuple(sorted(params.items()))))
        return placeholder
    return None
