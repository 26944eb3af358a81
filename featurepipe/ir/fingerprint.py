"""Stable fingerprints of normalized view definitions."""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import fields, is_dataclass
from typing import Any

from featurepipe.ir import nodes as ir

FORMAT_VERSION = 1  # bump when the meaning of the IR changes
# node fields added after version 1 that leave the fingerprint alone while unset
_ADDED_OPTIONAL = frozenset({"hop_us", "params", "by"})


def canonical(obj: Any) -> Any:
    """The normalized, JSON-ready form of an IR object (what fingerprints and artifact ids hash)."""
    if isinstance(obj, ir.ViewIR):
        used = {n.name for f in obj.features for n in f.expr.walk() if isinstance(n, ir.Field)}
        used.add(obj.entity_key)
        used.update(obj.entity_parts or ())
        view: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "name": obj.name,
            "entity_key": obj.entity_key,
            "source": obj.source,
            "timestamp": obj.timestamp,
            # only the fields the view reads: adding an unrelated field to the contract is no change
            "fields": [[k, str(t)] for k, t in obj.fields if k in used],
            # declaration order: it fixes the layout of the per-entity state (one slot per
            # aggregation), so reordering features is a new version
            "features": [[f.name, canonical(f.expr)] for f in obj.features],
            "lateness_us": obj.lateness_us,
            "artifacts": canonical(obj.artifacts),
        }
        if obj.entity_parts is not None:  # only then: plain keys keep their fingerprints
            view["entity_parts"] = list(obj.entity_parts)
        return view
    if is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {"node": type(obj).__name__}
        for f in fields(obj):
            value = getattr(obj, f.name)
            if value is None and f.name in _ADDED_OPTIONAL:
                continue  # unset: the view's fingerprint is the one it had before the field
            out[f.name] = canonical(value)
        return out
    if isinstance(obj, enum.Enum):
        return str(obj.value)
    if isinstance(obj, tuple | list):
        return [canonical(x) for x in obj]
    if isinstance(obj, float):
        return {"f": obj.hex()}  # exact and NaN/inf safe
    if isinstance(obj, bool | int | str) or obj is None:
        return obj
    raise TypeError(f"cannot fingerprint {type(obj).__name__}")


def fingerprint(view: ir.ViewIR) -> str:
    """sha256 of the canonical JSON of the view (16 hex digits)."""
    blob = json.dumps(canonical(view), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
