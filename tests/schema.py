"""A small event contract shared by the tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
from pydantic import BaseModel

import featurepipe as fp


class Ev(BaseModel):
    k: str
    x: float | None
    n: int | None
    s: str | None
    b: bool | None
    ts: datetime


entity = fp.Entity("thing", key="k")
source = fp.Source("evs", schema=Ev, timestamp="ts")
BASE = datetime(2026, 3, 1, tzinfo=UTC)
SCHEMA = {
    "k": pl.String,
    "x": pl.Float64,
    "n": pl.Int64,
    "s": pl.String,
    "b": pl.Boolean,
    "ts": pl.Datetime("us", "UTC"),
}


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA)


def at(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


def view(outputs: dict[str, Any], lateness: str = "1h", name: str = "v") -> fp.FeatureView:
    return fp.feature_view(entity=entity, source=source, name=name, lateness=lateness)(
        lambda t: {k: (f(t) if callable(f) else f) for k, f in outputs.items()}
    )


def scaled(n: int) -> int:
    """Hypothesis examples for a test; FEATUREPIPE_HYPOTHESIS_SCALE=10 hunts ten times longer."""
    import os

    return n * int(os.environ.get("FEATUREPIPE_HYPOTHESIS_SCALE", "1"))
