"""The server's OpenAPI description and a self-contained page rendering it (no external assets:
the page works where the server has no internet access)."""

from __future__ import annotations

import html
from typing import Any

from featurepipe.serve.config import DEFAULT_MAX_BODY, DEFAULT_MAX_ENTITIES

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    what = {
        400: "malformed JSON, unknown feature or view, wrong entity key type, missing entity "
        "column, bad request field",
        401: "missing or invalid API key (when the server requires one)",
        409: "a pinned version is not the one served",
        413: f"body too large (default {DEFAULT_MAX_BODY:,} bytes) or too many entity rows "
        f"(default {DEFAULT_MAX_ENTITIES:,})",
        422: "the store cannot answer for an entity (quarantined state, request time beyond "
        "the retention)",
        503: "the online store is unreachable, not initialized or being materialized",
    }
    return {str(c): _json(_ERROR, what[c]) for c in codes}


_VALUES = {"type": "array", "items": {}, "description": "one value per request row"}
_LOOKUP_ERRORS = _errors(400, 401, 409, 413, 422, 503)


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the endpoints."""
    from featurepipe import __version__

    native_request = {
        "type": "object",
        "required": ["features", "entities"],
        "additionalProperties": False,
        "properties": {
            "features": {
                "type": "array",
                "items": {"type": "string"},
                "description": "'view:feature' or 'view' (every feature of the view)",
            },
            "entities": {
                "type": "object",
                "additionalProperties": _VALUES,
                "description": "entity key -> values (a composite key: one column per part)",
            },
            "request": {
                "type": "object",
                "additionalProperties": _VALUES,
                "description": "request fields (fp.request) -> values; datetimes as ISO-8601",
            },
            "at": {
                "oneOf": [{"type": "string"}, {"type": "integer"}],
                "description": "request time: ISO-8601 (naive is UTC) or epoch microseconds; "
                "default now",
            },
            "pins": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "view -> fingerprint required",
            },
        },
    }
    native_response = {
        "type": "object",
        "properties": {
            "at": {"type": "string", "description": "the request time used (RFC 3339)"},
            "at_us": {"type": "integer"},
            "features": {"type": "array", "items": {"type": "string"}},
            "values": {"type": "object", "additionalProperties": _VALUES},
            "found": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "boolean"}},
            },
            "fingerprints": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    feast_request = {
        "type": "object",
        "required": ["entities"],
        "properties": {
            "features": {"type": "array", "items": {"type": "string"}},
            "feature_service": {"type": "string", "description": "a view name"},
            "entities": {"type": "object", "additionalProperties": _VALUES},
            "full_feature_names": {"type": "boolean", "default": False},
        },
    }
    vector = {
        "type": "object",
        "properties": {
            "values": _VALUES,
            "statuses": {
                "type": "array",
                "items": {"enum": ["PRESENT", "NULL_VALUE", "NOT_FOUND"]},
            },
            "event_timestamps": {"type": "array", "items": {"type": "string"}},
        },
    }
    feast_response = {
        "type": "object",
        "properties": {
            "metadata": {
                "type": "object",
                "properties": {"feature_names": {"type": "array", "items": {"type": "string"}}},
            },
            "results": {"type": "array", "items": vector},
        },
    }
    secured: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "featurepipe feature server", "version": __version__},
        "paths": {
            "/features": {
                "post": {
                    "summary": "Features of entities, windows finalized at the request time",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": native_request}},
                    },
                    "responses": {"200": _json(native_response, "the features"), **_LOOKUP_ERRORS},
                }
            },
            "/get-online-features": {
                "post": {
                    "summary": "Feast feature server compatible lookup",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": feast_request}},
                    },
                    "responses": {"200": _json(feast_response, "the features"), **_LOOKUP_ERRORS},
                }
            },
            "/health": {
                "get": {"summary": "Liveness", "responses": {"200": {"description": "up"}}}
            },
            "/ready": {
                "get": {
                    "summary": "Readiness: store reachable, initialized, serving these versions",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready; the body says why"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition"}},
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "status": {"type": "integer"},
                            },
                        }
                    },
                }
            },
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def docs_page() -> str:
    """An HTML page listing the endpoints, their requests and answers."""
    import json

    spec = openapi()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>featurepipe feature server"
        "</title><style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "pre{background:#f4f4f4;padding:1em;overflow:auto}</style></head><body>",
        "<h1>featurepipe feature server</h1><p>Machine-readable: "
        "<a href='/openapi.json'>/openapi.json</a>.</p>",
    ]
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            parts.append(f"<h2>{method.upper()} {html.escape(path)}</h2>")
            parts.append(f"<p>{html.escape(op['summary'])}</p>")
            body = op.get("requestBody")
            if body:
                schema = body["content"]["application/json"]["schema"]
                parts.append("<h3>Request</h3><pre>")
                parts.append(html.escape(json.dumps(schema, indent=2)))
                parts.append("</pre>")
            parts.append("<h3>Answers</h3><ul>")
            for status, answer in op["responses"].items():
                parts.append(f"<li>{status}: {html.escape(answer['description'])}</li>")
            parts.append("</ul>")
    parts.append("</body></html>")
    return "".join(parts)
