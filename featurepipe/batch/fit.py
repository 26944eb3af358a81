"""``featurepipe fit``: fit frozen artifacts and baseline distributions from batch data."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from featurepipe.batch.registry import Registry, load_definitions
from featurepipe.batch.sources import read_events
from featurepipe.compile.polars_aggs import TS, BatchProgram
from featurepipe.compile.polars_rows import PL_TYPES, translate
from featurepipe.dsl.artifacts import FitRequest
from featurepipe.dsl.loader import Definitions
from featurepipe.errors import DataError
from featurepipe.ir import nodes as ir
from featurepipe.ir.entity_keys import with_composite_key
from featurepipe.ir.types import DType


@dataclass
class FitReport:
    views: dict[str, dict[str, Any]] = field(default_factory=dict)


def _leaf(n: ir.Node) -> pl.Expr | None:
    return pl.col(n.name) if isinstance(n, ir.Field) else None


def fit_artifact(req: FitRequest, events: pl.LazyFrame) -> Any:
    params = dict(req.params)
    x = translate(req.arg, _leaf).alias("x")
    if req.kind == "encode":
        counts = (
            events.select(x)
            .drop_nulls()
            .group_by("x")
            .agg(pl.len().alias("n"))
            .filter(pl.col("n") >= int(params.get("min_frequency") or 1))
            .sort(["n", "x"], descending=[True, False])
            .collect()
        )
        top_k = params.get("top_k")
        values = counts["x"].to_list()
        return values[: int(top_k)] if top_k else values
    xs = events.select(x.cast(pl.Float64)).filter(pl.col("x").is_finite()).collect()["x"]
    if xs.len() == 0:
        raise DataError(f"view '{req.view}': no finite values to fit {req.kind} on")
    if req.kind == "standardize":
        mean = float(xs.mean())  # type: ignore[arg-type]
        std = float(xs.std() or 0.0)  # type: ignore[arg-type]
        return [mean, std if std > 0 and math.isfinite(std) else 1.0]
    q = int(params["quantiles"])
    bounds = [xs.quantile(i / q, interpolation="nearest") for i in range(1, q)]
    return sorted({float(b) for b in bounds if b is not None})


def baseline(
    defs: Definitions,
    view_name: str,
    events: pl.LazyFrame,
    max_points: int = 100_000,
    points_from_us: int | None = None,
) -> dict[str, Any]:
    """Distribution of every feature over query points at sampled event times (optionally only
    times from ``points_from_us`` on; the features still see the whole history)."""
    view = defs.view(view_name)
    key = view.entity.key
    events = with_composite_key(events, view.ir.entity_parts)
    # request fields (fp.request): each point scores its own event (the field of that name and
    # type), as the parity harness does; null where the event has none
    fields = dict(view.ir.fields)
    asked = [
        (pl.col(n) if fields.get(n) is t else pl.lit(None, PL_TYPES[t])).alias(n)
        for n, t in view.ir.request_fields
    ]
    points = events.select(pl.col(key), pl.col(TS), *asked).collect()
    if points_from_us is not None:
        points = points.filter(pl.col(TS) >= points_from_us)
    if points.height > max_points:
        points = points.sample(max_points, seed=0)
    values = BatchProgram(view.ir).features(events, points)
    out: dict[str, Any] = {"points": points.height, "fingerprint": view.fingerprint, "features": {}}
    for f in view.ir.features:
        s = values[f.name]
        info: dict[str, Any] = {
            "type": str(f.expr.dtype),
            "null_rate": s.null_count() / max(s.len(), 1),
        }
        if f.expr.dtype in (DType.INT, DType.FLOAT):
            num = s.cast(pl.Float64).drop_nulls()
            num = num.filter(num.is_finite())
            if num.len():
                info.update(
                    mean=num.mean(),
                    std=num.std(),
                    min=num.min(),
                    max=num.max(),
                    quantiles={
                        str(p): num.quantile(p, interpolation="nearest")
                        for p in (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
                    },
                )
        elif f.expr.dtype in (DType.STR, DType.BOOL):
            top = s.drop_nulls().value_counts(sort=True).head(20)
            info["top"] = {str(r[0]): r[1] for r in top.iter_rows()}
        out["features"][f.name] = info
    return out


def fit(
    root: str | Path,
    definitions: str | Path,
    start: datetime | None,
    end: datetime | None,
    *,
    registry: str | Path | None = None,
) -> FitReport:
    """Fit every fitted op and every feature's baseline over events in [start, end)."""
    root = Path(root)
    defs_path = Path(definitions)
    if not defs_path.is_absolute():
        defs_path = root / defs_path
    reg_path = Path(registry) if registry else root / ".featurepipe" / "registry"
    reg = Registry(reg_path)
    defs = load_definitions(defs_path, registry=reg_path, fitting=True)
    report = FitReport()
    cache: dict[str, pl.LazyFrame] = {}

    def events_of(source_name: str) -> pl.LazyFrame:
        if source_name not in cache:
            src = defs.sources[source_name]
            lf, rep = read_events(src, root=root, start=start, end=end)
            cache[source_name] = lf.collect().lazy()
            if rep.rows == 0:
                raise DataError(f"source '{source_name}' has no events in [{start}, {end})")
        return cache[source_name]

    by_view: dict[str, dict[str, Any]] = {}
    for req in defs.fit_requests:
        view = defs.view(req.view)
        by_view.setdefault(req.view, {})[req.artifact_id] = fit_artifact(
            req, events_of(view.source.name)
        )
    fitted = {"start": start, "end": end, "at": datetime.now(UTC).isoformat()}
    for view_name, arts in by_view.items():
        path = reg.save_artifacts(view_name, arts, {k: str(v) for k, v in fitted.items()})
        report.views.setdefault(view_name, {})["artifacts"] = str(path)
        report.views[view_name]["fitted"] = {k: _short(v) for k, v in arts.items()}
    # rebuild with the frozen artifacts, then baselines of the views as they will be served
    final = load_definitions(defs_path, registry=reg_path)
    for view_name, view in final.views.items():
        base = baseline(final, view_name, events_of(view.source.name))
        path = reg.save_baseline(view_name, view.fingerprint, base)
        report.views.setdefault(view_name, {}).update(
            fingerprint=view.fingerprint, baseline=str(path), points=base["points"]
        )
    return report


def _short(v: Any) -> str:
    text = str(v)
    return text if len(text) < 80 else text[:77] + "..."
