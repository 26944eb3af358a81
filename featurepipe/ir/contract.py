"""The event contract's refusals, worded once for both paths.

The stream validator (``featurepipe.stream.validate``) dead-letters and the batch reader
(``featurepipe.batch.sources``) quarantines the same inputs with the same reason text,
``"<field>: <what is wrong>"``: a dead letter and a quarantined row that broke one rule say the
same thing and count under the same category. No reason holds the offending value (the dead
letter keeps the original bytes, the quarantine file the row), so the texts form a small set.

docs/semantics.md ("Bad input, on both paths") states the rules.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

from featurepipe.ir.timebase import duration_us
from featurepipe.ir.types import DType

EVENT = "event"  # the field named by reasons about the whole message

NULL_REQUIRED = "null in a required field"
NON_FINITE = "not a finite number (NaN, Infinity and numbers beyond float64 are refused)"
NOT_INT64 = "does not fit in int64"
DUPLICATE_KEY = "duplicate key"
DATETIME_NUMBER = "a number is not a datetime (ISO-8601 text required)"
NOT_DATETIME = "not a valid datetime"
OUT_OF_RANGE = "outside the accepted range [1970, 2100)"

# Text that reads as a number, which neither path takes for a datetime (pydantic would read
# "1700000000" or "2024" as epoch seconds). The same pattern for Python's ``re`` (fullmatch)
# and for Polars' Rust regex (anchored): ASCII digits only.
NUMBER_TEXT = r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*"
_NUMBER_TEXT = re.compile(NUMBER_TEXT)


def reason(field: str, text: str) -> str:
    """The reason text for ``field``: ``"<field>: <text>"``."""
    return f"{field}: {text}"


def not_valid(dtype: DType) -> str:
    """A value that is not of the field's type (``"not a valid float"``)."""
    return f"not a valid {dtype}"


def in_future(tolerance: timedelta) -> str:
    """An event time later than the wall clock plus ``tolerance``."""
    return f"more than {format_tolerance(tolerance)} in the future"


def format_tolerance(tolerance: timedelta) -> str:
    """``1d``, ``6h``, ``90m``, ``45s``: the largest unit that divides it (as configured)."""
    us = duration_us(tolerance)
    for unit, size in (("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if us % (size * 1_000_000) == 0:
            return f"{us // (size * 1_000_000)}{unit}"
    return f"{us}us"


def integral_float(value: float) -> int | str:
    """The rule for a float where an int is expected, the same on both paths: the integer it
    equals when it is integral and within int64 (``1.0`` is 1, ``-0.0`` is 0), else the reason
    it is refused (``1.5`` is not a valid int; ``2.0**63`` does not fit in int64). The stream
    validator applies it to JSON floats; the batch reader applies the same rule, vectorized, to
    Parquet float columns and number text (``featurepipe.batch.sources``)."""
    if not math.isfinite(value):
        return NON_FINITE
    if not value.is_integer():
        return not_valid(DType.INT)
    if not -(2.0**63) <= value < 2.0**63:
        return NOT_INT64
    return int(value)


def is_number_text(text: str) -> bool:
    """True when ``text`` reads as a number (see ``NUMBER_TEXT``)."""
    return _NUMBER_TEXT.fullmatch(text) is not None


def future_limit_us(now_us: int, tolerance: timedelta) -> int:
    """The latest accepted event time, in epoch micros, for the wall clock ``now_us``."""
    return now_us + duration_us(tolerance)
