"""The event contracts shared by the tests: each is written once, as a pydantic model, and its
Polars schema is derived from it."""

from __future__ import annotations

import types
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
from pydantic import BaseModel

import featurepipe as fp

_POLARS: dict[type, pl.DataType] = {
    str: pl.String(),
    float: pl.Float64(),
    int: pl.Int64(),
    bool: pl.Boolean(),
    datetime: pl.Datetime("us", "UTC"),
}


def polars_schema(model: type[BaseModel]) -> dict[str, pl.DataType]:
    """Column types of a contract's Parquet/Polars frame (``T | None`` is a nullable ``T``)."""
    out = {}
    for name, info in model.model_fields.items():
        t = info.annotation
        if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
            (t,) = [a for a in typing.get_args(t) if a is not type(None)]
        assert isinstance(t, type) and t in _POLARS, (model.__name__, name, t)
        out[name] = _POLARS[t]
    return out


class Ev(BaseModel):
    """The contract of the generic test views."""

    k: str
    x: float | None
    n: int | None
    s: str | None
    b: bool | None
    ts: datetime


class Pay(BaseModel):
    """Payments with an arrival column (point-in-time training sets)."""

    user_id: str
    amount: float | None
    ts: datetime
    arrived: datetime


class Tx(BaseModel):
    """Transactions keyed by two entities."""

    user_id: str
    merchant_id: str
    amount: float
    ts: datetime


entity = fp.Entity("thing", key="k")
source = fp.Source("evs", schema=Ev, timestamp="ts")
BASE = datetime(2026, 3, 1, tzinfo=UTC)
SCHEMA = polars_schema(Ev)
PAY_SCHEMA = polars_schema(Pay)
TX_SCHEMA = polars_schema(Tx)


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA)


def row(**fields: Any) -> dict[str, Any]:
    """An ``Ev`` event of entity "a" at BASE, every optional field null unless given."""
    return {name: None for name in Ev.model_fields} | {"k": "a", "ts": BASE} | fields


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
