"""The one renderer of problem+json, and the handlers that route every error through it.

The catalogue (``app/errors.py``) says what each failure means; this module says how it looks
on the wire: the problem object with its OpenAI ``error`` envelope, ``Retry-After``,
``x-should-retry`` and ``X-Request-Id``, as a response or as an SSE ``error`` event.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core import request_id
from app.errors import (
    PROBLEM_CONTENT_TYPE,
    BadRequest,
    InternalError,
    KeelError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    ValidationFailed,
)

log = logging.getLogger("keel.errors")


class BodyTooLarge(StarletteHTTPException):
    """Raised while the body streams in. An HTTPException because FastAPI turns any other
    exception raised during body parsing into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413)
        self.limit = limit


def request_id_of(request: Request) -> str | None:
    return request_id(request.scope)


def problem_response(exc: KeelError, request_id: str | None) -> JSONResponse:
    headers = exc.response_headers()
    if request_id:
        headers["X-Request-Id"] = request_id
    return JSONResponse(
        exc.problem(request_id),
        status_code=exc.status_code,
        headers=headers,
        media_type=PROBLEM_CONTENT_TYPE,
    )


def error_event(exc: KeelError, request_id: str | None) -> bytes:
    """An SSE ``error`` event. The official SDKs raise ``APIError`` on any event whose data
    has an ``error`` key (openai/_streaming.py); the problem members ride along for curl."""
    data = json.dumps(exc.problem(request_id), separators=(",", ":"))
    return b"event: error\ndata: " + data.encode() + b"\n\n"


def field_errors(errors: Sequence[Any]) -> list[dict[str, str]]:
    """Field paths and messages only: pydantic's ``input`` and ``ctx`` would echo values."""
    out = []
    for err in errors[:50]:
        loc = [str(p) for p in err.get("loc", ())]
        out.append({"field": ".".join(loc), "message": str(err.get("msg", "invalid"))[:200]})
    return out


def handled_error_response(request: Request, exc: KeelError | RequestValidationError) -> Response:
    """What the handlers below answer, for callers outside FastAPI's exception middleware
    (``app/api/direct.py``)."""
    if isinstance(exc, KeelError):
        return _keel_error_response(request, exc)
    return _validation_response(request, exc)


async def _keel_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KeelError)
    return _keel_error_response(request, exc)


async def _validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return _validation_response(request, exc)


def _keel_error_response(request: Request, exc: KeelError) -> Response:
    if exc.status_code >= 500:
        log.warning(
            "request failed: %s",
            exc.code,
            extra={"request_id": request_id_of(request), "code": exc.code},
            exc_info=exc.__cause__ is not None,
        )
    return problem_response(exc, request_id_of(request))


def _validation_response(request: Request, exc: RequestValidationError) -> Response:
    errors = field_errors(exc.errors())
    detail = "Invalid request: " + ", ".join(e["field"] for e in errors[:5])
    # The OpenAI envelope's ``param``: the first offending body field, as a short path.
    fields = [e["field"] for e in errors]
    body_fields = [f.removeprefix("body.") for f in fields if f.startswith("body.")]
    err = ValidationFailed(
        detail, param=body_fields[0][:64] if body_fields else None, extra={"errors": errors}
    )
    return problem_response(err, request_id_of(request))


async def _http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    mapped: KeelError
    if isinstance(exc, BodyTooLarge):
        mapped = PayloadTooLarge(
            f"The request body exceeds {exc.limit} bytes.", extra={"limit": exc.limit}
        )
    elif exc.status_code == 404:
        mapped = NotFound("No such resource.")
    elif exc.status_code == 405:
        mapped = MethodNotAllowed(
            "This method is not allowed on this resource.",
            headers={"Allow": ", ".join(_allowed_methods(request))},
        )
    elif exc.status_code == 413:
        mapped = PayloadTooLarge("The request body is too large.")
    elif exc.status_code == 401:
        mapped = Unauthorized("A valid bearer token is required.")
    elif exc.status_code < 500:
        mapped = BadRequest("The request could not be processed.")
    else:
        mapped = InternalError("An internal error occurred.")
    return problem_response(mapped, request_id_of(request))


def _allowed_methods(request: Request) -> list[str]:
    """Every method the API document lists for this path (Starlette's own ``Allow`` names only
    the first route that matched), plus HEAD wherever GET is (KeelMiddleware answers it)."""
    methods: set[str] = set()
    path = request.scope["path"]
    for template, operations in request.app.openapi().get("paths", {}).items():
        if _template(template).fullmatch(path):
            methods |= {m.upper() for m in operations if m.upper() in _METHODS}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@functools.lru_cache(maxsize=512)
def _template(path: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)))


def install_error_handlers(app: FastAPI) -> None:
    """Catalogue errors, validation and routing errors. Unknown exceptions are rendered by
    ``KeelMiddleware``, which knows whether a response has already started."""
    app.add_exception_handler(KeelError, _keel_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
