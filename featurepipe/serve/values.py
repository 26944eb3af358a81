"""Feature values to JSON and JSON to lookup arguments.

JSON has no NaN or infinity, and a JSON encoder would turn them into null silently: such floats
are sent as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (as protobuf's JSON
mapping does). Datetime features (epoch microseconds inside featurepipe) are sent as RFC 3339
text in UTC. Anything else (numbers, strings, booleans, null, lists, maps) is sent as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from featurepipe.ir.types import DType
from featurepipe.online.lookup import parse_request_value
from featurepipe.online.served_log import column_encoder as column_encoder  # the one encoding
from featurepipe.online.served_log import rfc3339 as rfc3339
from featurepipe.serve.errors import ServeError


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
