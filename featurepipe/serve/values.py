"""Feature values to JSON and JSON to lookup arguments.

JSON has no NaN or infinity, and a JSON encoder would turn them into null silently: such floats
are sent as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (as protobuf's JSON
mapping does). Datetime features (epoch microseconds inside featurepipe) are sent as RFC 3339
text in UTC. Anything else (numbers, strings, booleans, null, lists, maps) is sent as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from featurepipe.ir.types import DType
from featurepipe.online.lookup import parse_request_value
from featurepipe.serve.errors import ServeError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def rfc3339(us: int) -> str:
    """Epoch microseconds as RFC 3339 UTC text, fractional digits only when needed."""
    t = _EPOCH + timedelta(microseconds=us)
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    frac = us % 1_000_000
    if frac == 0:
        return base + "Z"
    if frac % 1000 == 0:
        return f"{base}.{frac // 1000:03d}Z"
    return f"{base}.{frac:06d}Z"


def _float(v: Any) -> Any:
    if v is None or math.isfinite(v):
        return v
    return "NaN" if v != v else _NON_FINITE[v]


def _datetime(v: Any) -> Any:
    return None if v is None else rfc3339(v)


def _generic(v: Any) -> Any:
    """Lists and maps (and what they hold) with their non-finite floats spelled out."""
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, list | tuple):
        return [_generic(x) for x in v]
    if isinstance(v, dict):  # a map: keys as JSON object keys (text), in the map's order
        return {_key(k): _generic(x) for k, x in v.items()}
    return v


def _key(k: Any) -> str:
    """A map key as the JSON text of the key (``true``, ``42``, or the string itself)."""
    if isinstance(k, bool):
        return "true" if k else "false"
    return k if isinstance(k, str) else str(k)


def column_encoder(dtype: DType | None) -> Callable[[list[Any]], list[Any]] | None:
    """A function making a column of ``dtype`` JSON-safe; None when it already is."""
    if dtype is DType.FLOAT:
        return lambda column: [v if v is None or math.isfinite(v) else _float(v) for v in column]
    if dtype is DType.DATETIME:
        return lambda column: [_datetime(v) for v in column]
    if dtype in (DType.INT, DType.BOOL, DType.STR):
        return None
    return lambda column: [_generic(v) for v in column]


def request_values(fields: dict[str, DType], given: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Request fields from JSON: text of a datetime field parsed as RFC 3339 / ISO-8601 with
    a timezone; every other value as JSON gave it (the lookup checks the types)."""
    out: dict[str, list[Any]] = {}
    for name, column in given.items():
        if fields.get(name) is DType.DATETIME:
            column = [
                parse_request_value(name, DType.DATETIME, v) if isinstance(v, str) else v
                for v in column
            ]
        out[name] = column
    return out


def instant_us(value: Any, what: str = "at") -> int:
    """A request time from JSON: ISO-8601 text (naive is UTC) or integer epoch microseconds."""
    from featurepipe.ir.timebase import parse_instant, to_epoch_us

    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ServeError(
            400,
            "bad_request",
            f"'{what}' must be ISO-8601 text (2026-01-15T08:30:00Z) or integer epoch "
            f"microseconds; got {type(value).__name__} {value!r:.80}",
        )
    if isinstance(value, int):
        return value
    return to_epoch_us(parse_instant(value, f"'{what}'"))


def as_list(value: Any, what: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise ServeError(400, "bad_request", f"'{what}' must be a list; got {type(value).__name__}")
    return value
