"""``POST /get-online-features``: Feast's feature server request and response.

Request (Feast's ``GetOnlineFeaturesRequest``)::

    {"features": ["user_spend:txn_count_1h"] | "feature_service": "<view>",
     "entities": {"user_id": ["u1", "u2"], "amount": [12.5, 3.0]},
     "full_feature_names": false}

As in Feast, ``entities`` also carries the request data of on-demand features: a column named
like a request field of a requested view is taken as that field. featurepipe has no feature
services: ``feature_service`` names a view, served whole.

Response (Feast's ``GetOnlineFeaturesResponse`` as JSON), one result per column, entity keys
first::

    {"metadata": {"feature_names": ["user_id", "txn_count_1h"]},
     "results": [{"values": ["u1", "u2"], "statuses": ["PRESENT", "PRESENT"],
                  "event_timestamps": ["1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z"]},
                 {"values": [3, 0], "statuses": ["PRESENT", "NOT_FOUND"],
                  "event_timestamps": ["2026-01-15T08:30:00Z", "2026-01-15T08:30:00Z"]}]}
"""

from __future__ import annotations

from typing import Any

from featurepipe.serve.errors import ServeError
from featurepipe.serve.service import Lookup, LookupService
from featurepipe.serve.values import column_encoder, request_values, rfc3339

EPOCH_TEXT = "1970-01-01T00:00:00Z"  # what Feast gives entity key columns
PRESENT, NULL_VALUE, NOT_FOUND = "PRESENT", "NULL_VALUE", "NOT_FOUND"


def parse(service: LookupService, body: Any) -> tuple[dict[str, list[str]], dict[str, Any], bool]:
    """(wanted, keyword arguments of ``LookupService.lookup``, full feature names)."""
    if not isinstance(body, dict):
        raise ServeError(400, "bad_request", "the body must be a JSON object")
    if "entities" not in body:
        raise ServeError(400, "bad_request", "the request lacks 'entities'")
    entities = body["entities"]
    if not isinstance(entities, dict) or not all(isinstance(v, list) for v in entities.values()):
        raise ServeError(
            400, "bad_request", "'entities' must map each entity key to a list of values"
        )
    service_name = body.get("feature_service")
    features = body.get("features") or []
    if service_name is not None:
        if not isinstance(service_name, str):
            raise ServeError(400, "bad_request", "'feature_service' must be a view name")
        features = [service_name, *features]
    if not isinstance(features, list) or not features:
        raise ServeError(
            400, "bad_request", "the request names no 'features' nor 'feature_service'"
        )
    full = body.get("full_feature_names", False)
    if not isinstance(full, bool):
        raise ServeError(400, "bad_request", "'full_feature_names' must be true or false")
    wanted = service.resolve(features)
    fields = service.fields_of(wanted)
    keys = {k: v for k, v in entities.items() if k not in fields}
    given = {k: v for k, v in entities.items() if k in fields}
    request = request_values(fields, given) if fields else None
    return wanted, {"entities": keys, "request": request}, full


def response(service: LookupService, got: Lookup, full_feature_names: bool) -> dict[str, Any]:
    n = len(got.rows)
    names: list[str] = []
    results: list[dict[str, Any]] = []
    zero = [EPOCH_TEXT] * n
    for key, column in got.keys.items():
        names.append(key)
        results.append({"values": column, "statuses": [PRESENT] * n, "event_timestamps": zero})
    at = [rfc3339(got.at_us)] * n
    rows = got.rows
    for view, feats in got.wanted.items():
        found = [r[f"{view}_found"] for r in rows]
        dtypes = service.dtypes[view]
        for f in feats:
            column = [r[f] for r in rows]
            statuses = [
                (PRESENT if v is not None else NULL_VALUE) if ok else NOT_FOUND
                for v, ok in zip(column, found, strict=True)
            ]
            encode = column_encoder(dtypes[f])
            names.append(f"{view}__{f}" if full_feature_names else f)
            results.append(
                {
                    "values": column if encode is None else encode(column),
                    "statuses": statuses,
                    "event_timestamps": at,
                }
            )
    return {"metadata": {"feature_names": names}, "results": results}
