"""Composite entity keys: one text value for an entity keyed by several fields.

An entity keyed by several fields (``fp.Entity("pair", key=("user_id", "merchant_id"))``) is
keyed everywhere by one string, the **composite key**: each part rendered as text (an int in
decimal, a str with ``\\`` and ``|`` escaped by a backslash) and the parts joined by ``|``, in
the declared order: ``("u|1", 42)`` is ``u\\|1|42``. The rendering is injective for parts of
fixed types, so equal keys are equal entities. A null part makes the key null (the event
belongs to no entity, as a null key does). It is the Kafka message key of the entity's events,
the entity inside its Redis key, and the value of the synthetic column named
``composite_name(parts)`` (``user_id+merchant_id``) in batch frames.

Both renderings are here: ``compose`` per event (the stream worker) and ``compose_expr`` for
Polars frames (batch, training sets, materialize), tested equal on generated values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import polars as pl

SEPARATOR = "|"


def composite_name(parts: Sequence[str]) -> str:
    """The synthetic column (and entity key name) of a composite key."""
    return "+".join(parts)


def _part(value: Any) -> str:
    if isinstance(value, str):
        return value.replace("\\", "\\\\").replace(SEPARATOR, "\\" + SEPARATOR)
    return str(value)  # an int (bools and other types are refused before)


def compose(parts: Sequence[str], event: Mapping[str, Any]) -> str | None:
    """The composite key of ``event`` (None when a part is null)."""
    values = [event[p] for p in parts]
    if any(v is None for v in values):
        return None
    return SEPARATOR.join(_part(v) for v in values)


def compose_values(values: Sequence[Any]) -> str | None:
    """The composite key of the part values, in the declared order."""
    if any(v is None for v in values):
        return None
    return SEPARATOR.join(_part(v) for v in values)


def compose_expr(parts: Sequence[str], dtypes: Sequence[pl.DataType]) -> pl.Expr:
    """``compose`` as a Polars expression over the part columns (``dtypes``: theirs)."""
    rendered = []
    for name, dtype in zip(parts, dtypes, strict=True):
        col = pl.col(name)
        if dtype == pl.String:
            col = col.str.replace_all("\\", "\\\\", literal=True).str.replace_all(
                SEPARATOR, "\\" + SEPARATOR, literal=True
            )
        else:
            col = col.cast(pl.String)
        rendered.append(col)
    # a null part gives a null key (concat_str does not skip nulls)
    return pl.concat_str(rendered, separator=SEPARATOR).alias(composite_name(parts))


FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)


def with_composite_key(frame: FrameT, parts: Sequence[str] | None) -> FrameT:
    """``frame`` (a Polars DataFrame or LazyFrame) with its composite key column added, when
    ``parts`` is set and the column is not there yet; else ``frame`` itself."""
    if not parts:
        return frame
    schema = frame.collect_schema() if isinstance(frame, pl.LazyFrame) else frame.schema
    if composite_name(parts) in schema.names():
        return frame
    return frame.with_columns(compose_expr(parts, [schema[p] for p in parts]))
