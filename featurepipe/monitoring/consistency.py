"""Live consistency, exactly: the values a server logged, recomputed by the batch engine.

Each served-feature log row (docs/serving-http.md) says which view version answered, for which
entity, request fields and request time, and what it answered. The batch engine computes the
same features for the same (entity, request time, request) as a training set would, from the
sources' data (``FeatureStore.get_historical_features``), and every logged value is compared
with the recomputed one bit for bit (floats by their IEEE bits, lists and maps element by
element). A difference is skew or loss: an online store that missed events (an entity served
its defaults though it had events), a state restored from an old snapshot, or a definition
served that is not the one checked in. Rows served by a version the definitions do not hold
(another fingerprint) cannot be recomputed: they are counted as such, never as agreeing.

Events that arrived after a lookup was served but carry an earlier timestamp are seen by the
recomputation (unless the source declares an arrival column): such late data shows as a
mismatch too, and the examples give the times to tell.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl

from featurepipe.compile.polars_rows import edge_type
from featurepipe.errors import DataError
from featurepipe.ir.timebase import to_epoch_us
from featurepipe.ir.types import DType
from featurepipe.parity.harness import identical

if TYPE_CHECKING:
    from featurepipe.dsl.definitions import FeatureView
    from featurepipe.store import FeatureStore

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_TS = "__fp_request_time"
_LOOKUP = "__fp_lookup"


@dataclass
class FeatureConsistency:
    view: str
    feature: str
    compared: int = 0
    mismatched: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ConsistencyReport:
    features: list[FeatureConsistency] = field(default_factory=list)
    # served rows that could not be recomputed, by reason (e.g. an unknown view version)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def compared(self) -> int:
        return sum(f.compared for f in self.features)

    @property
    def mismatched(self) -> int:
        return sum(f.mismatched for f in self.features)

    @property
    def ok(self) -> bool:
        return self.mismatched == 0 and not self.skipped

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "compared": self.compared,
            "mismatched": self.mismatched,
            "skipped": self.skipped,
            "features": [
                {
                    "view": f.view,
                    "feature": f.feature,
                    "compared": f.compared,
                    "mismatched": f.mismatched,
                    "examples": f.examples,
                }
                for f in self.features
            ],
        }


def check_consistency(
    store: FeatureStore, log: pl.DataFrame, *, examples: int = 5
) -> ConsistencyReport:
    """Recompute every served value of ``log`` (served-feature log rows) with the batch engine
    and compare, bit for bit."""
    missing = {"view", "fingerprint", "feature", "dtype", "value", "entity", "request_time"} - set(
        log.columns
    )
    if missing:
        raise DataError(
            f"consistency needs served-feature logs (featurepipe serve --log-dir): the data has "
            f"no column {', '.join(sorted(missing))}"
        )
    report = ConsistencyReport()
    views = store.definitions.views
    for (name, fingerprint), rows in log.group_by("view", "fingerprint", maintain_order=True):
        view = views.get(str(name))
        if view is None:
            reason = f"view '{name}' is not in the definitions"
        elif view.fingerprint != fingerprint:
            reason = (
                f"view '{name}' version {fingerprint} (the definitions hold {view.fingerprint})"
            )
        else:
            _check_view(store, view, rows, report, examples)
            continue
        report.skipped[reason] = report.skipped.get(reason, 0) + rows.height
    return report


def _check_view(
    store: FeatureStore,
    view: FeatureView,
    rows: pl.DataFrame,
    report: ConsistencyReport,
    examples: int,
) -> None:
    """Recompute the lookups of one view version in ``rows`` and compare."""
    ident = ["entity", "request_time", "request"] if "request" in rows.columns else None
    keys = ident or ["entity", "request_time"]
    lookups = rows.select(keys).unique(maintain_order=True).with_row_index(_LOOKUP)
    labels = _labels(view, lookups)
    names = sorted(set(rows["feature"].to_list()))
    got = store.get_historical_features(
        labels, [f"{view.name}:{n}" for n in names], timestamp=_TS, full_feature_names=True
    )
    recomputed = {n: got[f"{view.name}__{n}"].to_list() for n in names}
    dtypes = {f.name: f.expr.dtype for f in view.ir.features}
    indexed = rows.join(lookups, on=keys, how="left", nulls_equal=True)
    by_feature: dict[str, FeatureConsistency] = {}
    for r in indexed.iter_rows(named=True):
        feat = r["feature"]
        result = by_feature.get(feat)
        if result is None:
            result = by_feature[feat] = FeatureConsistency(view.name, feat)
        dtype = dtypes.get(feat)
        result.compared += 1
        if dtype is None:
            result.mismatched += 1
            _example(result, r, "not a feature of the view", None, examples)
            continue
        served = _served_value(dtype, r["value"])
        again = _comparable(dtype, recomputed[feat][r[_LOOKUP]])
        if not identical(served, again):
            result.mismatched += 1
            _example(result, r, served, again, examples)
    report.features.extend(by_feature.values())


def _example(
    result: FeatureConsistency, r: dict[str, Any], served: Any, again: Any, limit: int
) -> None:
    if len(result.examples) < limit:
        result.examples.append(
            {
                "entity": r["entity"],
                "request_time": _iso(r["request_time"]),
                "found": r.get("found"),
                "served": _show(served),
                "recomputed": _show(again),
            }
        )


def _labels(view: FeatureView, lookups: pl.DataFrame) -> pl.DataFrame:
    """The lookups as label rows: entity key columns of their declared types, the request
    time, the request fields of the view's declared types."""
    cols: dict[str, pl.Series] = {_LOOKUP: lookups[_LOOKUP]}
    entities = [json.loads(e) for e in lookups["entity"].to_list()]
    for part in view.entity.parts:
        dtype = view.source.fields[part][0]
        cols[part] = pl.Series(part, [e.get(part) for e in entities], dtype=edge_type(dtype))
    cols[_TS] = lookups["request_time"].cast(pl.Datetime("us", "UTC")).alias(_TS)
    if view.ir.request_fields:
        given = [
            json.loads(q) if q else {}
            for q in (
                lookups["request"].to_list()
                if "request" in lookups.columns
                else [None] * len(lookups)
            )
        ]
        for field_name, dtype in view.ir.request_fields:
            values = [g.get(field_name) for g in given]
            if dtype is DType.DATETIME:
                values = [None if v is None else _parse_time(v) for v in values]
            elif dtype is DType.FLOAT:  # NaN and infinities are logged as text
                values = [_NON_FINITE[v] if isinstance(v, str) else v for v in values]
            cols[field_name] = pl.Series(field_name, values, dtype=edge_type(dtype))
    return pl.DataFrame(cols)


def _served_value(dtype: DType, text: str | None) -> Any:
    """A logged value (JSON text as the server sent it) as the value it stands for."""
    if text is None:
        return None
    return _decode(dtype, json.loads(text))


def _decode(dtype: DType, v: Any) -> Any:
    if v is None:
        return None
    if dtype is DType.FLOAT:
        return _NON_FINITE[v] if isinstance(v, str) else float(v)
    if dtype is DType.DATETIME:
        return to_epoch_us(_parse_time(v)) if isinstance(v, str) else v
    if dtype.is_list:
        return [_decode(dtype.element, x) for x in v]
    if dtype.is_map:
        return {k: _decode(dtype.map_value, x) for k, x in v.items()}
    return v


def _comparable(dtype: DType, v: Any) -> Any:
    """A recomputed (training-set frame) value in the served value's form: datetimes as epoch
    micros, maps as dicts keyed by their JSON text."""
    if v is None:
        return None
    if dtype is DType.DATETIME:
        return to_epoch_us(v)
    if dtype.is_list:
        return [_comparable(dtype.element, x) for x in v]
    if dtype.is_map:
        return {_json_key(e["key"]): _comparable(dtype.map_value, e["value"]) for e in v}
    return v


def _json_key(k: Any) -> str:
    return json.dumps(k) if isinstance(k, bool) else str(k)


def _parse_time(text: str) -> datetime:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _iso(t: Any) -> str:
    return t.isoformat().replace("+00:00", "Z") if isinstance(t, datetime) else str(t)


def _show(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    return v
