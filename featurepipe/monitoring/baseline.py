"""Baselines: the distribution of every feature of a view version over the data it was trained
on, kept in the registry beside the view's fitted artifacts.

One file per view version, ``<registry>/<view>/monitor-<fingerprint>.json`` (recording again
for the same fingerprint replaces it)::

    {"format": 1, "view", "fingerprint", "created_at", "rows", "origin",
     "lineage": {... the training set's lineage, or null ...},
     "features": {name: profile}}

A profile holds ``type`` (the declared type), ``kind`` (``numeric``, ``categorical`` or
``skipped``), ``rows``, ``nulls`` and ``null_rate``, and then

* numeric (int, float; datetime as epoch seconds): ``edges`` (interior bin edges at the
  deciles), ``shares`` (share of the non-null values in each bin, then the NaN share),
  ``count`` (non-null values), ``min``/``max`` (the finite range), ``mean``, ``std``,
  ``quantiles`` and ``sample`` (a seeded random sample of up to 2,000 finite values, sorted,
  for the KS test);
* categorical (str, bool as "true"/"false"): ``categories`` (value -> share of the non-null
  values, the ``MAX_CATEGORIES`` most frequent), ``distinct`` and ``other_share`` (the share of
  values outside the recorded categories: the baseline's own out-of-vocabulary rate, 0 when
  every value was recorded);
* skipped (lists and maps): ``reason``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from featurepipe.batch.registry import Registry
from featurepipe.errors import FeaturepipeError
from featurepipe.monitoring.stats import bin_counts, quantile_edges

if TYPE_CHECKING:
    from featurepipe.batch.lineage import Lineage
    from featurepipe.store import FeatureStore

FORMAT = 1
BINS = 10
SAMPLE = 2_000
MAX_CATEGORIES = 1_000
NUMERIC = ("int", "float", "datetime")
CATEGORICAL = ("str", "bool")
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


class BaselineError(FeaturepipeError):
    """A baseline cannot be found, read or computed."""


def kind_of(dtype: str) -> str:
    """``numeric``, ``categorical`` or ``skipped`` for a declared type."""
    if dtype in NUMERIC:
        return "numeric"
    if dtype in CATEGORICAL:
        return "categorical"
    return "skipped"


def dtype_of(series: pl.Series) -> str:
    """The declared type a column of this Polars type carries (for frames without one)."""
    t = series.dtype
    if t == pl.Boolean:
        return "bool"
    if t.is_integer():
        return "int"
    if t.is_float():
        return "float"
    if t in (pl.String, pl.Categorical, pl.Enum):
        return "str"
    if isinstance(t, pl.Datetime):
        return "datetime"
    if isinstance(t, pl.List):
        return f"list[{dtype_of(pl.Series([], dtype=t.inner))}]"
    return str(t).lower()


def numeric_values(series: pl.Series, dtype: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    """The non-null values of a numeric feature as float64 (datetimes: epoch seconds)."""
    s = series.drop_nulls()
    if isinstance(s.dtype, pl.Datetime):
        s = s.dt.epoch("us")
    if dtype == "datetime":
        return s.cast(pl.Float64).to_numpy() / 1e6
    return s.cast(pl.Float64).to_numpy()


def category_values(series: pl.Series) -> pl.Series:
    """The non-null values of a categorical feature as text (bools as "true"/"false")."""
    s = series.drop_nulls()
    if s.dtype == pl.Boolean:
        return s.cast(pl.String).str.to_lowercase()
    return s.cast(pl.String)


def profile(series: pl.Series, dtype: str) -> dict[str, Any]:
    """The baseline profile of one feature column (see the module docstring)."""
    rows = series.len()
    nulls = series.null_count()
    out: dict[str, Any] = {
        "type": dtype,
        "kind": kind_of(dtype),
        "rows": rows,
        "nulls": nulls,
        "null_rate": nulls / rows if rows else 0.0,
    }
    if out["kind"] == "skipped":
        out["reason"] = f"{dtype} features are not monitored (lists and maps: not yet)"
        return out
    if out["kind"] == "numeric":
        x = numeric_values(series, dtype)
        finite = x[np.isfinite(x)]
        edges = quantile_edges(finite, BINS)
        counts = bin_counts(x, edges)
        rng = np.random.default_rng(0)
        sample = finite if finite.size <= SAMPLE else rng.choice(finite, SAMPLE, replace=False)
        out.update(
            count=int(x.size),
            edges=edges,
            shares=(counts / max(x.size, 1)).tolist(),
            min=float(finite.min()) if finite.size else None,
            max=float(finite.max()) if finite.size else None,
            mean=float(finite.mean()) if finite.size else None,
            std=float(finite.std()) if finite.size else None,
            quantiles={str(q): float(np.quantile(finite, q)) for q in QUANTILES}
            if finite.size
            else {},
            sample=np.sort(sample).tolist(),
        )
        return out
    values = category_values(series)
    table = values.value_counts(sort=True, name="n")
    n = values.len()
    kept = table.head(MAX_CATEGORIES)
    out.update(
        count=n,
        categories={str(v): c / n for v, c in kept.iter_rows()},
        distinct=table.height,
        other_share=(n - int(kept["n"].sum())) / n if n else 0.0,
    )
    return out


def compute_baseline(
    frame: pl.DataFrame,
    view: str,
    fingerprint: str,
    features: Mapping[str, str | None],
    *,
    origin: str = "",
    lineage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The baseline of ``view`` (version ``fingerprint``) over ``frame``'s feature columns.

    ``features``: feature name -> declared type (None: taken from the column's Polars type).
    A column is the feature's name or ``<view>__<name>`` (``full_feature_names``)."""
    profiles: dict[str, Any] = {}
    for name, dtype in features.items():
        column = feature_column(frame, view, name)
        if column is None:
            raise BaselineError(
                f"view '{view}': no column '{name}' (or '{view}__{name}') among "
                f"{', '.join(frame.columns)}"
            )
        series = frame[column]
        profiles[name] = profile(series, dtype or dtype_of(series))
    return {
        "format": FORMAT,
        "view": view,
        "fingerprint": fingerprint,
        "created_at": datetime.now(UTC).isoformat(),
        "rows": frame.height,
        "origin": origin,
        "lineage": lineage,
        "features": profiles,
    }


def feature_column(frame: pl.DataFrame, view: str, name: str) -> str | None:
    for column in (f"{view}__{name}", name):
        if column in frame.columns:
            return column
    return None


def baseline_path(registry: Registry, view: str, fingerprint: str) -> Path:
    return registry.view_dir(view) / f"monitor-{fingerprint}.json"


def save_baseline(registry: Registry, baseline: dict[str, Any]) -> Path:
    """Write ``baseline`` to the registry (replacing one of the same view version)."""
    target = baseline_path(registry, baseline["view"], baseline["fingerprint"])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(baseline, indent=1, sort_keys=True, default=str, allow_nan=True))
    os.replace(tmp, target)
    return target


def load_baseline(registry: Registry, view: str, fingerprint: str) -> dict[str, Any] | None:
    """The baseline of a view version, None when none was recorded."""
    target = baseline_path(registry, view, fingerprint)
    return read_baseline(target) if target.exists() else None


def read_baseline(path: str | Path) -> dict[str, Any]:
    """A baseline file; ``BaselineError`` when it is missing or not one."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BaselineError(f"baseline {p} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BaselineError(f"baseline {p} cannot be read: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "features" not in data:
        raise BaselineError(
            f"baseline {p} is not a featurepipe monitoring baseline (format {FORMAT})"
        )
    return data


def recorded(registry: Registry, view: str) -> list[str]:
    """The fingerprints of ``view`` with a recorded baseline, newest first."""
    vdir = registry.view_dir(view)
    if not vdir.is_dir():
        return []
    files = sorted(vdir.glob("monitor-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [p.stem.removeprefix("monitor-") for p in files]


def record_baseline(
    store_or_registry: FeatureStore | Registry | str | Path,
    frame: pl.DataFrame,
    views: Lineage | Mapping[str, Mapping[str, Any]],
    *,
    origin: str = "training set",
    lineage: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Record the baseline of every view of a training set: ``frame`` is the training set,
    ``views`` its lineage (``store.last_lineage``) or the lineage's ``views`` entry
    (``{view: {"fingerprint": ..., "features": [...]}}``). Declared types come from the
    store's definitions when given a ``FeatureStore``, else from the columns' Polars types.
    ``lineage``: the training set's lineage to keep with the baseline when ``views`` is only
    its views entry (e.g. ``read_lineage(path)`` of a written training set). Returns the files
    written."""
    from featurepipe.batch.lineage import Lineage

    defs = getattr(store_or_registry, "definitions", None)
    if isinstance(store_or_registry, Registry):
        registry = store_or_registry
    elif isinstance(store_or_registry, str | Path):
        registry = Registry(Path(store_or_registry))
    else:
        registry = store_or_registry.registry
    kept: dict[str, Any] | None = None if lineage is None else dict(lineage)
    if isinstance(views, Lineage):
        kept = json.loads(views.to_json())
        entries: Mapping[str, Mapping[str, Any]] = views.views
    else:
        entries = views
    written: list[Path] = []
    for view, info in entries.items():
        declared: dict[str, str] = {}
        if defs is not None and view in defs.views:
            v = defs.views[view]
            if v.fingerprint == info["fingerprint"]:
                declared = {f.name: str(f.expr.dtype) for f in v.ir.features}
        features = {name: declared.get(name) for name in info["features"]}
        base = compute_baseline(
            frame, view, info["fingerprint"], features, origin=origin, lineage=kept
        )
        written.append(save_baseline(registry, base))
    return written
