"""Keel's OpenAPI document, made truthful after FastAPI generates it.

FastAPI documents what it can see in the route signatures; Keel's routes do more than that
(the hot paths read raw requests and answer ``Response`` objects) and every error is a
problem object from ``KeelMiddleware`` or the handlers, not FastAPI's ``HTTPValidationError``.
This module fixes the generated document in one pass, for every route present and future:

- every error status an operation can answer, as ``application/problem+json`` with the
  ``Problem`` schema (codes from the catalogue);
- the bearer scheme, on ``/v1/*`` (optional: Keel runs without a token on loopback);
- schemas embedded by hand (``model_json_schema()``) have their ``$defs`` moved to
  ``components/schemas`` so every ``$ref`` resolves;
- the success statuses a route answers besides its declared one (dry runs, 202 jobs, 304).

The schemathesis test (tests/integration/test_openapi_fuzz.py) runs over this document and
fails when a route answers something the document does not say.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from app.errors import catalogue
from app.settings import StoreSettings
from app.store.conversation_models import ROLES

PROBLEM = "application/problem+json"
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_BODY_METHODS = frozenset({"post", "put", "patch", "delete"})
_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})

# Statuses by area (path prefix): what the services behind those routes raise, for every
# method and for writes only. The edge (KeelMiddleware) adds its own to every operation.
_INFERENCE = frozenset({400, 404, 409, 422, 429, 502, 503, 504})
_AREA_ERRORS: list[tuple[str, frozenset[int], frozenset[int]]] = [
    ("/v1/chat/", _INFERENCE, frozenset()),
    ("/v1/completions", _INFERENCE, frozenset()),
    ("/v1/embeddings", _INFERENCE, frozenset()),
    ("/v1/models", frozenset({503}), frozenset()),
    ("/v1/conversations", frozenset({400, 409, 422, 503}), frozenset({412, 428})),
    ("/v1/lifecycle/", frozenset({422, 503}), frozenset({400, 404, 409, 502, 504, 507})),
    ("/v1/", frozenset({503}), frozenset()),
    ("/readyz", frozenset({503}), frozenset()),
]
# Success statuses a route answers besides the one FastAPI saw in its decorator.
_EXTRA_SUCCESS: list[tuple[str, str, dict[str, str]]] = [
    ("post", r"/v1/conversations(/.*)?", {"200": "Dry run or idempotent replay"}),
    ("get", r"/v1/conversations/\{[^}]+\}", {"304": "Not modified (If-None-Match)"}),
    ("post", r"/v1/lifecycle/.*", {"202": "Accepted: a job started or was joined"}),
    ("delete", r"/v1/lifecycle/.*", {"202": "Accepted"}),
]

# Routes that answer other media types than the JSON FastAPI assumes for a ``Response``.
_MEDIA: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("get", "/metrics"): {"text/plain": {"schema": {"type": "string"}}},
    ("get", "/ui"): {"text/html": {"schema": {"type": "string"}}},
    ("get", "/v1/readiness"): {
        "application/json": {"schema": {"type": "object"}},
        "text/plain": {"schema": {"type": "string"}},
    },
    ("get", "/v1/lifecycle/models/{model_id}/events"): {
        "text/event-stream": {"schema": {"type": "string"}}
    },
}


def install_openapi(app: FastAPI, store: StoreSettings | None = None) -> None:
    generate: Callable[[], dict[str, Any]] = app.openapi
    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        raw = generate()  # FastAPI's own, cached until routes change
        if cache.get("raw") is not raw:
            cache["raw"] = raw
            cache["doc"] = truthful(copy.deepcopy(raw), store)
        doc: dict[str, Any] = cache["doc"]
        return doc

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def truthful(doc: dict[str, Any], store: StoreSettings | None = None) -> dict[str, Any]:
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _hoist_defs(doc, schemas)
    if store is not None:
        _store_rules(doc, schemas, store)
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Problem"] = problem_schema()
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "KEEL_API_TOKEN; required on /v1/* when Keel is configured with one",
    }
    for path, operations in doc.get("paths", {}).items():
        for method, op in operations.items():
            if method in _HTTP_METHODS:
                _operation(path, method, op)
    return doc


def _operation(path: str, method: str, op: dict[str, Any]) -> None:
    responses: dict[str, Any] = op.setdefault("responses", {})
    for error in _error_statuses(path, method, op):
        responses[str(error)] = _problem_response(error)
    media = _MEDIA.get((method, path))
    if media is not None:
        for status, response in responses.items():
            if status.startswith("2"):
                response["content"] = media
    for verb, pattern, extra in _EXTRA_SUCCESS:
        if verb == method and re.fullmatch(pattern, path):
            for status, description in extra.items():
                responses.setdefault(status, {"description": description})
    if path.startswith("/v1/"):
        # An empty requirement too: without KEEL_API_TOKEN (loopback) no token is needed.
        op["security"] = [{"bearer": []}, {}]


def _error_statuses(path: str, method: str, op: dict[str, Any]) -> set[int]:
    statuses = {400, 403, 421, 500}  # bad headers, foreign origin, foreign Host, unknown
    has_body = "requestBody" in op or method in _BODY_METHODS
    if has_body:
        statuses |= {413, 415, 422}
    if op.get("parameters"):
        statuses.add(422)
    if path.startswith("/v1/"):
        statuses.add(401)
    if "{" in path:
        statuses.add(404)
    for prefix, every, writes in _AREA_ERRORS:
        if path.startswith(prefix):
            statuses |= every | (writes if method in _BODY_METHODS else frozenset())
            break
    return statuses


def _problem_response(status: int) -> dict[str, Any]:
    codes = sorted(c for c, cls in catalogue().items() if cls.status_code == status)
    description = ", ".join(codes) if codes else "error"
    return {"description": description, "content": {PROBLEM: {"schema": _PROBLEM_REF}}}


def problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "RFC 9457 problem details with Keel's stable code (docs/errors.md)",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 100, "maximum": 599},
            "detail": {"type": "string"},
            "code": {"type": "string", "enum": sorted(catalogue())},
            "retryable": {"type": "boolean"},
            "request_id": {"type": ["string", "null"]},
            "retry_after": {"type": "integer", "minimum": 1},
            "current_version": {"type": "integer", "minimum": 0},
            "limit": {"type": "integer"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
            },
            "error": {
                "type": "object",
                "description": "the OpenAI error envelope, so the official SDKs show the message",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "code": {"type": ["string", "null"]},
                    "param": {"type": ["string", "null"]},
                },
            },
        },
    }


def _hoist_defs(node: Any, schemas: dict[str, Any]) -> None:
    """Move nested ``$defs`` into components/schemas and point their refs there."""
    if isinstance(node, dict):
        defs = node.pop("$defs", None)
        if isinstance(defs, dict):
            for name, schema in defs.items():
                schemas.setdefault(name, schema)
                _hoist_defs(schema, schemas)
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            node["$ref"] = "#/components/schemas/" + ref.removeprefix("#/$defs/")
        for value in list(node.values()):  # hoisting adds to components/schemas
            _hoist_defs(value, schemas)
    elif isinstance(node, list):
        for value in node:
            _hoist_defs(value, schemas)


def _store_rules(doc: dict[str, Any], schemas: dict[str, Any], store: StoreSettings) -> None:
    """The conversation store's rules (settings, enforced by the service) into its schemas.

    Written against the body models' property names; a renamed one is skipped, not invented.
    """

    def strings(schema: dict[str, Any]) -> list[dict[str, Any]]:
        return [s for s in [schema, *schema.get("anyOf", [])] if s.get("type") == "string"]

    def arrays(schema: dict[str, Any]) -> list[dict[str, Any]]:
        return [s for s in [schema, *schema.get("anyOf", [])] if s.get("type") == "array"]

    for name, props in schemas.items():
        if not name.endswith(
            ("ConversationBody", "ItemIn", "MessageIn", "ItemsBody", "MessagesBody")
        ):
            continue
        properties = props.get("properties", {})
        for s in strings(properties.get("title", {})):
            s["maxLength"] = store.max_title_chars
        for s in strings(properties.get("content", {})):
            s["maxLength"] = store.max_message_chars
        for s in strings(properties.get("role", {})):
            s["enum"] = sorted(ROLES)
        for field in ("items", "messages"):
            for s in arrays(properties.get(field, {})):
                s["maxItems"] = store.max_messages_per_append
    for path, operations in doc.get("paths", {}).items():
        if not path.startswith("/v1/conversations"):
            continue
        for op in operations.values():
            for param in op.get("parameters", []):
                if param.get("name") == "limit" and param.get("in") == "query":
                    param["schema"] = {
                        **param.get("schema", {}),
                        "minimum": 1,
                        "maximum": store.page_limit_max,
                    }
