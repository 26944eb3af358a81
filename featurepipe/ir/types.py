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

    @property
    def is_numeric(self) -> bool:
        return self in (DType.INT, DType.FLOAT)


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
    return isinstance(value, int) and not isinstance(value, bool)
