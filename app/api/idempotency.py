"""HTTP glue for the idempotency layer (``app/store/idempotency.py``).

An endpoint takes two dependencies (``app/api/deps.py``) and uses them in a few lines::

    async def endpoint(key: IdempotencyKeyDep, idempotency: IdempotencyDep, ...) -> Response:
        stored = await idempotency.once(key, lambda lease: lease.write(effect))  # key: None
        return to_response(stored)                                              # w/o header

``IdempotencyKeyDep`` reads ``Idempotency-Key`` (1-255 visible ASCII characters, else 400
``bad_request``) and computes:

- scope: ``"<METHOD> <route template> <caller>"``, the caller being ``token:<sha256 of the
  bearer token, 32 hex>`` or ``anonymous``; the same key from another caller or on another
  route is another key;
- fingerprint: SHA-256 of the canonical request: method, path, query parameters sorted (minus
  ``dry_run``), ``If-Match``, and the body (canonical JSON when it parses, else its bytes).
"""

from __future__ import annotations

import hashlib
import json
import re
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.responses import Response

from app.errors import BadRequest
from app.store.checksums import canonical_json
from app.store.idempotency import IdempotencyRequest, StoredResponse, json_response

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]{1,255}")


def parse_key(raw: str) -> str:
    if not _VISIBLE_ASCII.fullmatch(raw):
        raise BadRequest(
            f"{KEY_HEADER} must be 1 to 255 visible ASCII characters (no spaces).",
            extra={"header": KEY_HEADER},
        )
    return raw


def caller_of(authorization: str | None) -> str:
    scheme, _, credential = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return "anonymous"
    return "token:" + hashlib.sha256(credential.strip().encode()).hexdigest()[:32]


def scope_of(method: str, route: str, caller: str) -> str:
    scope = f"{method.upper()} {route} {caller}"
    return scope if len(scope) <= 255 else "sha256:" + hashlib.sha256(scope.encode()).hexdigest()


def request_fingerprint(
    method: str, path: str, query: str, body: bytes, if_match: str | None = None
) -> str:
    params = sorted((k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "dry_run")
    try:
        canonical_body = canonical_json(json.loads(body)) if body else b""
    except ValueError:  # not JSON (or NaN): the bytes themselves
        canonical_body = body
    request = {
        "method": method.upper(),
        "path": path,
        "query": params,
        "if_match": if_match,
        "body_sha256": hashlib.sha256(canonical_body).hexdigest(),
    }
    return hashlib.sha256(canonical_json(request)).hexdigest()


async def idempotency_request(request: Request) -> IdempotencyRequest | None:
    """The request's key (``IdempotencyKeyDep`` in deps.py): None without the header."""
    raw = request.headers.get(KEY_HEADER)
    if raw is None:
        return None
    key = parse_key(raw)
    route = getattr(request.scope.get("route"), "path", request.url.path)
    body = await request.body()
    return IdempotencyRequest(
        key=key,
        scope=scope_of(request.method, route, caller_of(request.headers.get("authorization"))),
        fingerprint=request_fingerprint(
            request.method,
            request.url.path,
            request.url.query,
            body,
            request.headers.get("if-match"),
        ),
        route=route,
    )


json_stored = json_response  # the one builder lives with StoredResponse (store layer)


def to_response(stored: StoredResponse, headers: dict[str, str] | None = None) -> Response:
    """The HTTP response; replays carry ``Idempotent-Replayed: true``."""
    out = {**stored.headers, **(headers or {})}
    if stored.replayed:
        out[REPLAYED_HEADER] = "true"
    return Response(content=stored.body, status_code=stored.status_code, headers=out)
