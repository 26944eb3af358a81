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

The fast path (``parse``) decodes the message straight into a ``msgspec.Struct`` compiled once
from the contract (unknown keys refused, aliases renamed, ints bounded to int64, datetimes kept
as text) and converts the datetime text itself. It returns only what the checked path
(``_parse_checked``) would return for the same bytes, and hands every other message to the
checked path, which gives the refusal and its reason:

* a message the Struct refuses: a missing key, a null in a required field, a float for an int
  field (``1.0`` is the checked path's to convert), an int beyond int64, any wrong type;
* a key that may be given twice: the commas of the message must be those of its members and
  of the string values (as in the checked path's ``_no_duplicates``);
* datetime text of a shape not listed in ``_SHAPES`` (where ``datetime.fromisoformat`` and
  pydantic read the same instant: both truncate fractions beyond microseconds), or outside the
  range [1970, 2100): the checked path names the refusal;
* every message of a source whose pydantic model has validators, constraints (``Field(gt=0)``),
  a custom ``__init__`` or ``model_post_init``, defaults other than plain values, or a model
  config that may change parsing (``_wire_struct``): that source always takes the checked path.

The future-time check applies on both paths.

The checked path decodes with msgspec (which already refuses non-finite and out-of-range
numbers), proves the absence of duplicate keys by counting commas, and validates the decoded dict
with the source's pydantic model in strict mode (datetime fields read text as pydantic reads it in
JSON). Only a message that fails there is parsed again, by the standard library, to name the key
at fault.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta
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
from featurepipe.ir.timebase import EPOCH, MAX_US, MIN_US, ONE_US, to_epoch_us
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


# -- the fast path's contract ------------------------------------------------------------------
# Datetime text shapes (ASCII digits written as 0) that ``datetime.fromisoformat`` and pydantic
# (lax datetime from text) read as the same instant, each with the epoch to subtract (naive means
# UTC) and whether it ends in offset digits (pydantic refuses offset minutes past 59, which
# fromisoformat would carry into the hours). Both refuse an invalid date or time, hour 24 and
# leap second 60 (the fast path then falls back), and both truncate a fraction beyond 6 digits.
# Lowercase "z", "T" alone, "_" separators, HH:MM without seconds etc. take the checked path.
_NAIVE_EPOCH = datetime(1970, 1, 1)
_DIGITS = bytes.maketrans(b"123456789", b"000000000")


def _datetime_shapes() -> dict[bytes, tuple[datetime, bool]]:
    shapes = {b"0000-00-00": (_NAIVE_EPOCH, False)}  # a date alone: midnight
    fractions = [b""] + [sep + b"0" * n for sep in (b".", b",") for n in range(1, 10)]
    zones = {b"": (_NAIVE_EPOCH, False), b"Z": (EPOCH, False)}
    zones |= {
        sign + b"00" + colon + b"00": (EPOCH, True)
        for sign in (b"+", b"-")
        for colon in (b":", b"")
    }
    for sep in (b"T", b"t", b" "):
        for fraction in fractions:
            for zone, kind in zones.items():
                shapes[b"0000-00-00" + sep + b"00:00:00" + fraction + zone] = kind
    return shapes


_SHAPES = _datetime_shapes()
_fromisoformat = datetime.fromisoformat
_asdict = msgspec.structs.asdict
UNSET = msgspec.UNSET

# Model config that does not change how pydantic parses (``extra`` and ``strict`` are replaced by
# the validator's own model); any other key sends the source to the checked path.
_PLAIN_CONFIG = frozenset({"title", "json_schema_extra", "frozen", "extra", "strict"})
_INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # beyond: checked path's NOT_INT64
_WIRE_TYPES: dict[DType, Any] = {
    DType.INT: _INT64,
    DType.FLOAT: float,  # an int literal too, as pydantic strict takes a Python int for a float
    DType.BOOL: bool,
    DType.STR: str,
    DType.DATETIME: str,  # converted by the fast path (see _SHAPES)
}
_PLAIN_DEFAULTS: dict[DType, type] = {
    DType.INT: int,
    DType.FLOAT: float,
    DType.BOOL: bool,
    DType.STR: str,
}


def _wire_struct(source: Source, keys: dict[str, str]) -> tuple[type[Any], dict[str, Any]] | None:
    """The Struct that decodes ``source``'s messages as its pydantic model does, and the defaults
    of the fields that have one (absent: ``msgspec.UNSET``); None when equality is not proven."""
    schema = source.schema
    found = schema.__pydantic_decorators__
    if (
        found.validators
        or found.field_validators
        or found.root_validators
        or found.model_validators
    ):
        return None
    core_schema = getattr(schema.__get_pydantic_core_schema__, "__func__", None)
    if (
        getattr(schema, "__pydantic_custom_init__", True)  # validation calls a custom __init__
        or getattr(schema, "__pydantic_post_init__", True) is not None  # also: private attributes
        or getattr(schema, "__pydantic_root_model__", True)
        or core_schema is not getattr(BaseModel.__get_pydantic_core_schema__, "__func__", None)
        or not set(schema.model_config) <= _PLAIN_CONFIG
        or any("," in key for key in keys.values())  # the comma count assumes comma-free keys
    ):
        return None
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    defaults: dict[str, Any] = {}
    for name, info in schema.model_fields.items():
        dtype, nullable = source.fields[name]
        if info.metadata or info.validation_alias not in (None, keys[name]):
            return None  # constraints, strictness, AliasChoices...
        wire = _WIRE_TYPES[dtype] | None if nullable else _WIRE_TYPES[dtype]
        if info.is_required():
            fields.append((name, wire))
            continue
        default = info.default
        plain = default is None or type(default) is _PLAIN_DEFAULTS.get(dtype)
        if info.default_factory is not None or info.validate_default or not plain:
            return None
        if type(default) is int and not -(2**63) <= default < 2**63:
            return None
        fields.append((name, wire | msgspec.UnsetType, UNSET))
        defaults[name] = default
    renames = {name: key for name, key in keys.items() if key != name}
    try:
        wire_type = msgspec.defstruct(
            f"{schema.__name__}Wire",
            fields,
            kw_only=True,
            forbid_unknown_fields=True,
            rename=renames,
            gc=False,  # scalar fields: no cycles to track
        )
    except (TypeError, ValueError):  # a field name msgspec does not take
        return None
    return wire_type, defaults


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
        wire = _wire_struct(source, self.keys)
        self._wire: Callable[[bytes], Any] | None = None
        self._defaults: dict[str, Any] = {}
        if wire is not None:
            self._wire = msgspec.json.Decoder(wire[0], strict=True).decode
            self._defaults = wire[1]
        self._members = len(self.keys)
        self._datetimes = tuple(self.datetimes)
        self._timestamp = source.timestamp

    def parse(self, raw: bytes | None) -> dict[str, Any]:
        """The event as a dict with datetimes as epoch micros (UTC); raises ``Invalid``.

        The fast path: a message it cannot prove to read as ``_parse_checked`` reads it (see the
        module docstring) is handed to ``_parse_checked``, which gives the result or the reason.
        """
        wire = self._wire
        if wire is None or raw is None or len(raw) > self.max_bytes:
            return self._parse_checked(raw)
        try:
            event: dict[str, Any] = _asdict(wire(raw))
        except msgspec.DecodeError:  # ValidationError included
            return self._parse_checked(raw)
        absent = [n for n in self._defaults if event[n] is UNSET] if self._defaults else ()
        members = self._members - len(absent)
        commas = raw.count(b",")
        # A key given twice adds a comma that the decoded Struct does not account for (only
        # string values hold commas here: every field is a scalar and no key has one).
        if commas != members - 1 and (
            b"\\u002" in raw  # an escaped comma: no byte shows it
            or commas != members - 1 + sum(v.count(",") for v in event.values() if type(v) is str)
        ):
            return self._parse_checked(raw)
        for name in absent:
            event[name] = self._defaults[name]
        for name in self._datetimes:
            text = event[name]
            if text is None:
                continue
            kind = _SHAPES.get(text.encode().translate(_DIGITS))
            if kind is None or (kind[1] and text[-2] > "5"):  # offset minutes past 59
                return self._parse_checked(raw)
            try:
                us = (_fromisoformat(text) - kind[0]) // ONE_US
            except ValueError:  # no such date or time (Feb 30, 23:59:60, offset 24:00)
                return self._parse_checked(raw)
            if not MIN_US <= us < MAX_US:  # its reason (or error) is the checked path's
                return self._parse_checked(raw)
            event[name] = us
        ts = event[self._timestamp]
        if ts is not None and ts * 1000 > self.clock() + self._tolerance_ns:
            raise Invalid(self.future_reason)
        return event

    def _parse_checked(self, raw: bytes | None) -> dict[str, Any]:
        """``parse`` for every message: pydantic validation, which names what is wrong."""
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
            try:
                us = to_epoch_us(value)
            except OverflowError:  # year 1 or 9999 moved past datetime's range by its offset
                raise Invalid(reason(name, OUT_OF_RANGE)) from None
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
