"""Turning Kafka message bytes into events, or into a dead-letter reason.

The wire format is strict JSON (RFC 8259), one object per message:

* ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON, and a number beyond float64 (``1e400``)
  would silently become infinite: both are refused;
* a key given twice is refused (a parser would silently keep one of the two values);
* a datetime is ISO-8601 text: neither a JSON number nor text that reads as a number (which
  pydantic would take for epoch seconds);
* an int field takes a JSON number written with a fraction or an exponent when it is integral
  and within int64 (``1.0``, ``1e3``: JSON producers often write every number as a float), as
  the batch reader takes an integral float from Parquet; ``1.5`` is not a valid int;
* the event time may lie at most the configured tolerance past the wall clock (settings:
  ``FEATUREPIPE_FUTURE_TOLERANCE``, default one day), besides the fixed range [1970, 2100).

The reason texts come from ``featurepipe.ir.contract``: the batch reader quarantines the same
inputs with the same texts.

The fast path decodes with msgspec (which already refuses non-finite and out-of-range numbers),
proves the absence of duplicate keys by counting commas, and validates the decoded dict with the
source's pydantic model in strict mode (datetime fields read text as pydantic reads it in JSON).
Only a message that fails there is parsed again, by the standard library, to name the key at
fault.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

import msgspec
import pydantic
from pydantic import BaseModel, ConfigDict, Strict

from featurepipe.dsl.definitions import Source
from featurepipe.ir.contract import (
    DATETIME_NUMBER,
    DUPLICATE_KEY,
    EVENT,
    NON_FINITE,
    NOT_DATETIME,
    NOT_INT64,
    NULL_REQUIRED,
    OUT_OF_RANGE,
    future_limit_us,
    in_future,
    integral_float,
    is_number_text,
    not_valid,
    reason,
)
from featurepipe.ir.timebase import MAX_US, MIN_US, to_epoch_us
from featurepipe.ir.types import DType
from featurepipe.settings import future_tolerance as configured_tolerance

MAX_EVENT_BYTES = 256 * 1024

_decode = msgspec.json.Decoder().decode

# pydantic error types that mean "not a value of the field's type"
_TYPE_ERRORS = frozenset(
    {
        "int_type",
        "int_parsing",
        "int_from_float",
        "float_type",
        "float_parsing",
        "bool_type",
        "bool_parsing",
        "string_type",
        "datetime_type",
        "datetime_parsing",
        "datetime_from_date_parsing",
        "datetime_object_invalid",
    }
)


class Invalid(Exception):
    """An event that breaks the contract; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def int_of_float(name: str, value: float) -> int:
    """A JSON float for the int field ``name``: the integer it equals, or ``Invalid``."""
    verdict = integral_float(value)
    if isinstance(verdict, str):
        raise Invalid(reason(name, verdict))
    return verdict


class EventValidator:
    """Strict contract check of one source's events: unknown fields are refused too.

    ``future_tolerance``: how far past the wall clock an event time may be (None: the setting,
    ``featurepipe.settings.future_tolerance``; ``timedelta.max``: no limit). ``clock``: the wall
    clock in epoch nanoseconds (``time.time_ns``; tests pass another).
    """

    def __init__(
        self,
        source: Source,
        max_bytes: int = MAX_EVENT_BYTES,
        *,
        future_tolerance: timedelta | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.source = source
        self.max_bytes = max_bytes
        self.tolerance = (
            future_tolerance if future_tolerance is not None else configured_tolerance()
        )
        self.future_reason = reason(source.timestamp, in_future(self.tolerance))
        self.clock = clock
        # the check compares nanoseconds: ts_us * 1000 > now_ns + tolerance_ns
        self._tolerance_ns = future_limit_us(0, self.tolerance) * 1000
        schema = source.schema
        namespace: dict[str, Any] = {
            # strict: no "12" for an int, no 1 for a bool, no epoch numbers for a datetime
            "model_config": ConfigDict(extra="forbid", strict=True),
            "__annotations__": {},
        }
        self.keys: dict[str, str] = {}  # field name -> JSON key
        for name, info in schema.model_fields.items():
            alias = info.validation_alias if isinstance(info.validation_alias, str) else None
            self.keys[name] = alias or info.alias or name
            if source.fields.get(name, (None, False))[0] is DType.DATETIME:
                # Validated from the decoded dict: a datetime arrives as text, which pydantic
                # reads (as in JSON) only outside strict mode. Numbers are refused before.
                namespace["__annotations__"][name] = Annotated[info.annotation, Strict(False)]
                namespace[name] = info
        self.model: type[BaseModel] = type(f"{schema.__name__}Strict", (schema,), namespace)
        self._validate = self.model.__pydantic_validator__.validate_python  # = model_validate
        self.dtypes = {self.keys[n]: t for n, (t, _) in source.fields.items()}
        self.datetimes = [n for n, (t, _) in source.fields.items() if t is DType.DATETIME]
        self.datetime_keys = [(n, self.keys[n]) for n in self.datetimes]
        self.ints = [n for n, (t, _) in source.fields.items() if t is DType.INT]
        self.int_keys = [(n, self.keys[n]) for n in self.ints]

    def parse(self, raw: bytes | None) -> dict[str, Any]:
        """The event as a dict with datetimes as epoch micros (UTC); raises ``Invalid``."""
        if raw is None:
            raise Invalid("empty message (no value)")
        if len(raw) > self.max_bytes:
            raise Invalid(f"payload too large: {len(raw):,} bytes > {self.max_bytes:,}")
        try:
            doc = _decode(raw)
        except msgspec.DecodeError as e:
            raise Invalid(_diagnose(raw) or reason(EVENT, f"invalid JSON: {e}")) from None
        if type(doc) is not dict:
            raise Invalid(reason(EVENT, "not a JSON object"))
        if raw.count(b",") != len(doc) - 1 and not _no_duplicates(raw, doc):
            found = _diagnose(raw)
            if found is not None:
                raise Invalid(found)
        for name, key in self.datetime_keys:
            value = doc.get(key)
            if value is None:
                continue
            if type(value) is str:
                # "YYYY-" cannot read as a number: the common case skips the pattern
                if not (value[4:5] == "-" and value[:4].isdigit()) and is_number_text(value):
                    raise Invalid(reason(name, DATETIME_NUMBER))
            elif type(value) in (int, float):
                raise Invalid(reason(name, DATETIME_NUMBER))
            else:
                raise Invalid(reason(name, NOT_DATETIME))
        for name, key in self.int_keys:
            value = doc.get(key)
            if type(value) is float:  # 1.0 is the int 1, as in Parquet (featurepipe.ir.contract)
                doc[key] = int_of_float(name, value)
        try:
            obj = self._validate(doc)
        except pydantic.ValidationError as e:
            errors = e.errors()
            parts = [self._reason(err) for err in errors[:3]]
            more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
            raise Invalid("; ".join(parts) + more) from None
        event: dict[str, Any] = obj.__dict__.copy()
        for name in self.ints:  # the contract's int is int64 on both paths
            value = event[name]
            if value is not None and not -(2**63) <= value < 2**63:
                raise Invalid(reason(name, NOT_INT64))
        for name in self.datetimes:
            value = event[name]
            if value is None:
                continue
            us = to_epoch_us(value)
            # the accepted range is the batch path's too (featurepipe.ir.timebase)
            if not MIN_US <= us < MAX_US:
                raise Invalid(reason(name, OUT_OF_RANGE))
            event[name] = us
        ts = event[self.source.timestamp]
        if ts is not None and ts * 1000 > self.clock() + self._tolerance_ns:
            raise Invalid(self.future_reason)
        return event

    def _reason(self, err: Any) -> str:
        """One pydantic error in the words of ``featurepipe.ir.contract`` where it has them."""
        loc = err["loc"]
        where = ".".join(str(p) for p in loc) or EVENT
        dtype = self.dtypes.get(loc[0]) if len(loc) == 1 else None
        kind, given = err["type"], err.get("input")
        if dtype is not None:
            if given is None and kind in _TYPE_ERRORS:
                return reason(where, NULL_REQUIRED)
            if dtype is DType.FLOAT and type(given) is int and kind == "float_type":
                return reason(where, NON_FINITE)  # an integer literal beyond float64
            if kind in _TYPE_ERRORS:
                return reason(where, NOT_DATETIME if dtype is DType.DATETIME else not_valid(dtype))
        if kind == "finite_number":
            return reason(where, NON_FINITE)
        return reason(where, err["msg"])


def _no_duplicates(raw: bytes, doc: dict[str, Any]) -> bool:
    """True when the top-level object of ``raw`` provably has no key twice.

    ``raw`` has (members - 1) structural commas plus the comma bytes inside strings and nested
    values. Unless a ``\\u002c`` escape spells a comma without a comma byte, the commas of the
    decoded keys and string values are at most those bytes, so equality with (keys - 1) plus
    their commas leaves no room for a member that the decoded dict lost.
    """
    if b"\\u002" in raw:  # \u002c or \u002C (or a neighbour): leave it to the exact parse
        return False
    inside = 0
    for k, v in doc.items():
        inside += k.count(",")
        if type(v) is str:
            inside += v.count(",")
    return raw.count(b",") == len(doc) - 1 + inside


class _NonFinite:
    """Marks a ``NaN``/``Infinity`` token or a number beyond float64 in the slow parse."""


_NON_FINITE = _NonFinite()


def _holds_non_finite(value: Any) -> bool:
    if value is _NON_FINITE:
        return True
    if isinstance(value, list):
        return any(_holds_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_non_finite(v) for v in value.values())
    return False


def _diagnose(raw: bytes) -> str | None:
    """The first duplicate key or non-finite number of ``raw``, or None (the standard
    library's parser, which can report both, names the key)."""
    found: list[str] = []

    def members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, value in pairs:
            if key in seen:
                found.append(reason(key, DUPLICATE_KEY))
            seen.add(key)
            if _holds_non_finite(value):
                found.append(reason(key, NON_FINITE))
        return dict(pairs)

    def number(text: str) -> float | _NonFinite:
        value = float(text)
        return _NON_FINITE if value in (float("inf"), float("-inf")) else value

    try:
        doc = json.loads(
            raw,
            object_pairs_hook=members,
            parse_constant=lambda _: _NON_FINITE,
            parse_float=number,
        )
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if found:
        return found[0]
    if _holds_non_finite(doc):
        return reason(EVENT, NON_FINITE)
    return None
