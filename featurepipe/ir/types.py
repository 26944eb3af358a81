"""Logical types of the IR. Both compilers map these to their physical types."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any


class DType(enum.StrEnum):
    INT = "int"  # 64-bit signed, two's-complement wrapping arithmetic
    FLOAT = "float"  # IEEE-754 binary64
    BOOL = "bool"
    STR = "str"  # unicode text
    DATETIME = "datetime"  # UTC instant, microsecond precision, stored as int64 epoch micros
    # Collections: results of the list and map aggregations only (last_k, count_by, ...). They
    # are served as they are; no row operation takes one (refused at definition time).
    LIST_INT = "list[int]"
    LIST_FLOAT = "list[float]"
    LIST_BOOL = "list[bool]"
    LIST_STR = "list[str]"
    LIST_DATETIME = "list[datetime]"
    # maps (count_by, by= buckets): a Python dict; in Polars a list of {key, value} entries
    MAP_INT_INT = "map[int,int]"
    MAP_STR_INT = "map[str,int]"
    MAP_BOOL_INT = "map[bool,int]"
    MAP_INT_FLOAT = "map[int,float]"
    MAP_STR_FLOAT = "map[str,float]"
    MAP_BOOL_FLOAT = "map[bool,float]"

    @property
    def is_numeric(self) -> bool:
        return self in (DType.INT, DType.FLOAT)

    @property
    def is_list(self) -> bool:
        return self.value.startswith("list[")

    @property
    def is_map(self) -> bool:
        return self.value.startswith("map[")

    @property
    def is_collection(self) -> bool:
        return self.is_list or self.is_map

    @property
    def element(self) -> DType:
        """A list's element type, a map's key type (a scalar's: itself)."""
        if self.is_list:
            return DType(self.value[5:-1])
        if self.is_map:
            return DType(self.value[4:].split(",")[0])
        return self

    @property
    def map_value(self) -> DType:
        """A map's value type."""
        assert self.is_map, self
        return DType(self.value[:-1].split(",")[1])


def list_of(element: DType) -> DType:
    return DType(f"list[{element.value}]")


def map_of(key: DType, value: DType = DType.INT) -> DType:
    """The map type with these key and value types (ValueError when not offered)."""
    return DType(f"map[{key.value},{value.value}]")


def dtype_of_annotation(annotation: Any) -> tuple[DType, bool] | None:
    """Map a pydantic field annotation to (dtype, nullable); None when unsupported."""
    import types
    import typing

    nullable = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) != len(typing.get_args(annotation))
        if len(args) != 1:
            return None
        annotation = args[0]
    table: dict[Any, DType] = {
        bool: DType.BOOL,
        int: DType.INT,
        float: DType.FLOAT,
        str: DType.STR,
        datetime: DType.DATETIME,
    }
    dt = table.get(annotation)
    return None if dt is None else (dt, nullable)


def python_type_ok(dtype: DType, value: Any) -> bool:
    """Whether a literal Python value fits a dtype (bool is not an int here)."""
    if value is None:
        return True
    if dtype is DType.BOOL:
        return isinstance(value, bool)
    if dtype is DType.INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if dtype is DType.FLOAT:
        return isinstance(value, float)
    if dtype is DType.STR:
        return isinstance(value, str)
    if dtype.is_collection:
        return False  # collections take no literal (no default=, no constant)
    return isinstance(value, int) and not isinstance(value, bool)
