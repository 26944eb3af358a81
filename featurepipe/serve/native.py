"""``POST /features``: featurepipe's own request and response.

Request::

    {"features": ["user_spend:txn_count_1h", "merchant_stats"],
     "entities": {"user_id": ["u1", "u2"], "merchant_id": ["m1", "m1"]},
     "request": {"amount": [12.5, 3.0]},           # optional: fp.request fields
     "at": "2026-01-15T08:30:00Z",                 # optional: ISO-8601 or epoch microseconds
     "pins": {"user_spend": "<fingerprint>"}}      # optional: versions the caller requires

Response (columns, one value per request row)::

    {"at": "2026-01-15T08:30:00Z", "at_us": 1768465800000000,
     "features": ["user_spend:txn_count_1h", ...],
     "values": {"user_spend:txn_count_1h": [3, 0], ...},
     "found": {"user_spend": [true, false], ...},
     "fingerprints": {"user_spend": "<fingerprint>", ...}}
"""

from __future__ import annotations

from typing import Any

from featurepipe.serve.errors import ServeError
from featurepipe.serve.service import Lookup, LookupService
from featurepipe.serve.values import column_encoder, instant_us, request_values, rfc3339

KEYS = {"features", "entities", "request", "at", "pins"}


def parse(service: LookupService, body: Any) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """(wanted, keyword arguments of ``LookupService.lookup``) of a request body."""
    if not isinstance(body, dict):
        raise ServeError(400, "bad_request", "the body must be a JSON object")
    unknown = sorted(set(body) - KEYS)
    if unknown:
        raise ServeError(
            400,
            "bad_request",
            f"unknown field {', '.join(map(repr, unknown))} (a request holds "
            f"{', '.join(sorted(KEYS))})",
        )
    for required in ("features", "entities"):
        if required not in body:
            raise ServeError(400, "bad_request", f"the request lacks '{required}'")
    features = body["features"]
    if not isinstance(features, list):
        raise ServeError(
            400, "bad_request", "'features' must be a list of 'view:feature' or 'view'"
        )
    wanted = service.resolve(features)
    request = body.get("request")
    if request is not None:
        if not isinstance(request, dict):
            raise ServeError(
                400, "bad_request", "'request' must map each request field to a list of values"
            )
        request = request_values(service.fields_of(wanted), _columns(request, "request"))
    pins = body.get("pins")
    if pins is not None and (
        not isinstance(pins, dict) or not all(isinstance(v, str) for v in pins.values())
    ):
        raise ServeError(400, "bad_request", "'pins' must map view names to fingerprint strings")
    at = body.get("at")
    kwargs = {
        "entities": body["entities"],
        "request": request,
        "at_us": None if at is None else instant_us(at),
        "pins": pins,
    }
    return wanted, kwargs


def _columns(value: dict[str, Any], what: str) -> dict[str, list[Any]]:
    for k, v in value.items():
        if not isinstance(v, list):
            raise ServeError(
                400,
                "bad_request",
                f"{what}[{k!r}] must be a list of values, one per request row; got "
                f"{type(v).__name__}",
            )
    return value


def response(service: LookupService, got: Lookup) -> dict[str, Any]:
    names: list[str] = []
    values: dict[str, list[Any]] = {}
    found: dict[str, list[bool]] = {}
    rows = got.rows
    for view, feats in got.wanted.items():
        dtypes = service.dtypes[view]
        for f in feats:
            column = [r[f] for r in rows]
            encode = column_encoder(dtypes[f])
            ref = f"{view}:{f}"
            names.append(ref)
            values[ref] = column if encode is None else encode(column)
        flag = f"{view}_found"
        found[view] = [r[flag] for r in rows]
    return {
        "at": rfc3339(got.at_us),
        "at_us": got.at_us,
        "features": names,
        "values": values,
        "found": found,
        "fingerprints": got.fingerprints,
    }
