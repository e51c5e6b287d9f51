"""The error catalogue: every failure a user can see, and the one renderer of problem+json.

Hierarchy::

    KeelError                       code, status_code, title, retryable (class attributes)
     ├── ValidationFailed           422 validation_error
     ├── BadRequest                 400 bad_request
     ├── Unauthorized               401 unauthorized
     ├── NotFound                   404 not_found
     │    └── ModelNotFound         404 model_not_found
     ├── MethodNotAllowed           405 method_not_allowed
     ├── PayloadTooLarge            413 payload_too_large
 ├── RequestTimeout             408 request_timeout
 ├── OriginNotAllowed           403 origin_not_allowed
 ├── UnsupportedMediaType       415 unsupported_media_type
 ├── HostNotAllowed             421 host_not_allowed
     ├── VersionConflict            409 version_conflict       (+ current_version)
     ├── PreconditionFailed         412 precondition_failed    (+ current_version)
     ├── PreconditionRequired       428 precondition_required  (+ current_version)
     ├── IdempotencyKeyReused       422 idempotency_key_reused
     ├── IdempotencyInProgress      409 idempotency_in_progress
     ├── ModelNotReady              409 model_not_ready
     ├── CapabilityUnavailable      503 capability_unavailable
     ├── CircuitOpen                503 circuit_open
     ├── RetryBudgetExhausted       503 retry_budget_exhausted
     ├── Overloaded                 503 overloaded
     ├── DeadlineExceeded           504 deadline_exceeded
     ├── UpstreamError              502 upstream_error
     ├── UpstreamTimeout            504 upstream_timeout
     ├── UpstreamRejected           400 upstream_rejected      (the provider's 4xx, sanitized)
     ├── ChecksumMismatch           422 checksum_mismatch
     ├── InsufficientStorage        507 insufficient_storage
     ├── DownloadFailed             502 download_failed
     ├── MemoryBudgetExceeded       507 memory_budget_exceeded
     ├── DataCorrupted              500 data_corrupted
     └── InternalError              500 internal_error

``detail`` is written for the caller. It never carries exception text, paths, SQL, upstream
bodies or secrets: raise sites pass a sentence of their own, and the full error goes to the log.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("keel.errors")

PROBLEM_CONTENT_TYPE = "application/problem+json"
# Not dereferenceable on purpose: docs/errors.md is the documentation of every code.
TYPE_BASE = "urn:keel:problem:"


class KeelError(Exception):
    code: ClassVar[str] = "internal_error"
    status_code: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: float | None = None,
        current_version: int | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.retry_after = retry_after
        self.current_version = current_version
        self.extra = extra or {}
        self.headers = headers or {}

    def problem(self, request_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status_code,
            "detail": self.detail,
            "code": self.code,
            "retryable": self.retryable,
            "request_id": request_id,
        }
        if self.retry_after is not None:
            body["retry_after"] = retry_after_seconds(self.retry_after)
        if self.current_version is not None:
            body["current_version"] = self.current_version
        body.update(self.extra)
        return body

    def response_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(retry_after_seconds(self.retry_after))
        elif self.status_code in (429, 503):
            headers["Retry-After"] = "1"
        return headers


def retry_after_seconds(seconds: float) -> int:
    """Retry-After is whole seconds; round up so clients never come back too early."""
    return max(1, math.ceil(seconds))


class ValidationFailed(KeelError):
    code, status_code, title = "validation_error", 422, "Request validation failed"


class BadRequest(KeelError):
    code, status_code, title = "bad_request", 400, "Bad request"


class Unauthorized(KeelError):
    code, status_code, title = "unauthorized", 401, "Authentication required"

    def response_headers(self) -> dict[str, str]:
        return {**super().response_headers(), "WWW-Authenticate": "Bearer"}


class NotFound(KeelError):
    code, status_code, title = "not_found", 404, "Not found"


class ModelNotFound(NotFound):
    code, title = "model_not_found", "Model not found"


class MethodNotAllowed(KeelError):
    code, status_code, title = "method_not_allowed", 405, "Method not allowed"


class PayloadTooLarge(KeelError):
    code, status_code, title = "payload_too_large", 413, "Payload too large"


class RequestTimeout(KeelError):
    code, status_code, title, retryable = "request_timeout", 408, "Request timeout", True


class OriginNotAllowed(KeelError):
    code, status_code, title = "origin_not_allowed", 403, "Cross-origin request refused"


class UnsupportedMediaType(KeelError):
    code, status_code, title = "unsupported_media_type", 415, "Unsupported media type"


class HostNotAllowed(KeelError):
    code, status_code, title = "host_not_allowed", 421, "Host not allowed"


class VersionConflict(KeelError):
    code, status_code, title = "version_conflict", 409, "Version conflict"


class PreconditionFailed(KeelError):
    code, status_code, title = "precondition_failed", 412, "Precondition failed"


class PreconditionRequired(KeelError):
    code, status_code, title = "precondition_required", 428, "Precondition required"


class IdempotencyKeyReused(KeelError):
    code, status_code = "idempotency_key_reused", 422
    title = "Idempotency key reused with a different request"


class IdempotencyInProgress(KeelError):
    code, status_code, retryable = "idempotency_in_progress", 409, True
    title = "A request with this idempotency key is still running"


class ModelNotReady(KeelError):
    code, status_code, title, retryable = "model_not_ready", 409, "Model not ready", True


class CapabilityUnavailable(KeelError):
    code, status_code, retryable = "capability_unavailable", 503, True
    title = "Capability unavailable"


class CircuitOpen(KeelError):
    code, status_code, title, retryable = "circuit_open", 503, "Circuit open", True


class RetryBudgetExhausted(KeelError):
    code, status_code, retryable = "retry_budget_exhausted", 503, True
    title = "Retry budget exhausted"


class Overloaded(KeelError):
    code, status_code, title, retryable = "overloaded", 503, "Overloaded", True


class DeadlineExceeded(KeelError):
    code, status_code, title, retryable = "deadline_exceeded", 504, "Deadline exceeded", True


class UpstreamError(KeelError):
    code, status_code, title, retryable = "upstream_error", 502, "Upstream error", True


class UpstreamTimeout(KeelError):
    code, status_code, title, retryable = "upstream_timeout", 504, "Upstream timeout", True


class UpstreamRejected(KeelError):
    code, status_code = "upstream_rejected", 400
    title = "The provider rejected the request"


class ChecksumMismatch(KeelError):
    code, status_code, title = "checksum_mismatch", 422, "Checksum mismatch"


class InsufficientStorage(KeelError):
    code, status_code, title = "insufficient_storage", 507, "Insufficient storage"


class DownloadFailed(KeelError):
    code, status_code, title, retryable = "download_failed", 502, "Download failed", True


class MemoryBudgetExceeded(KeelError):
    code, status_code, title = "memory_budget_exceeded", 507, "Memory budget exceeded"


class DataCorrupted(KeelError):
    code, status_code, title = "data_corrupted", 500, "Stored data failed its integrity check"


class InternalError(KeelError):
    code, status_code, title = "internal_error", 500, "Internal error"


class BodyTooLarge(StarletteHTTPException):
    """Raised while the body streams in. An HTTPException because FastAPI turns any other
    exception raised during body parsing into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413)
        self.limit = limit


def catalogue() -> dict[str, type[KeelError]]:
    """Every code, for docs and tests; built from the class tree so it cannot drift."""
    out: dict[str, type[KeelError]] = {}
    stack: list[type[KeelError]] = list(KeelError.__subclasses__())
    while stack:
        cls = stack.pop()
        out[cls.code] = cls
        stack.extend(cls.__subclasses__())
    return out


def request_id_of(request: Request) -> str | None:
    rid = getattr(request.state, "request_id", None)
    return rid if isinstance(rid, str) else None


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


def field_errors(errors: Sequence[Any]) -> list[dict[str, str]]:
    """Field paths and messages only: pydantic's ``input`` and ``ctx`` would echo values."""
    out = []
    for err in errors[:50]:
        loc = [str(p) for p in err.get("loc", ())]
        out.append({"field": ".".join(loc), "message": str(err.get("msg", "invalid"))[:200]})
    return out


async def _keel_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KeelError)
    if exc.status_code >= 500:
        log.warning(
            "request failed: %s",
            exc.code,
            extra={"request_id": request_id_of(request), "code": exc.code},
            exc_info=exc.__cause__ is not None,
        )
    return problem_response(exc, request_id_of(request))


async def _validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = field_errors(exc.errors())
    detail = "Invalid request: " + ", ".join(e["field"] for e in errors[:5])
    err = ValidationFailed(detail, extra={"errors": errors})
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
        mapped = MethodNotAllowed("This method is not allowed on this resource.")
    elif exc.status_code == 413:
        mapped = PayloadTooLarge("The request body is too large.")
    elif exc.status_code == 401:
        mapped = Unauthorized("A valid bearer token is required.")
    elif exc.status_code < 500:
        mapped = BadRequest("The request could not be processed.")
    else:
        mapped = InternalError("An internal error occurred.")
    return problem_response(mapped, request_id_of(request))


def install_error_handlers(app: FastAPI) -> None:
    """Catalogue errors, validation and routing errors. Unknown exceptions are rendered by
    ``KeelMiddleware``, which knows whether a response has already started."""
    app.add_exception_handler(KeelError, _keel_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
