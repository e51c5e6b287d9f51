"""The error catalogue: every failure a user can see, as a table of classes.

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
     ├── CircuitOpen                503 circuit_open           (x-should-retry if the wait is short)
     ├── RetryBudgetExhausted       503 retry_budget_exhausted
     ├── Overloaded                 503 overloaded             (x-should-retry: true)
     ├── RateLimited                429 rate_limited           (the provider's 429, after retries)
     ├── DeadlineExceeded           504 deadline_exceeded
     ├── UpstreamError              502 upstream_error
     ├── UpstreamTimeout            504 upstream_timeout
     ├── UpstreamRejected           400 upstream_rejected      (the provider's 4xx, sanitized)
     │    ├── UpstreamNotFound      404 upstream_not_found
     │    └── UpstreamUnprocessable 422 upstream_unprocessable
     ├── UpstreamAuthFailed         502 upstream_auth_failed   (the provider's 401/403)
     ├── ChecksumMismatch           422 checksum_mismatch
     ├── InsufficientStorage        507 insufficient_storage
     ├── DownloadFailed             502 download_failed
     ├── ModelLoadFailed            503 model_load_failed
     ├── MemoryBudgetExceeded       507 memory_budget_exceeded
     ├── DataCorrupted              500 data_corrupted
     ├── StorageUnavailable         503 storage_unavailable    (a storage root, not the database)
     ├── SchemaNotReady             503 schema_not_ready       (database not migrated to head)
     ├── DatabaseUnavailable        503 database_unavailable   (unreachable, connection lost)
     └── InternalError              500 internal_error

Every problem body also carries the OpenAI error envelope ``error: {message, type, code,
param}`` and every error response ``x-should-retry``, so the official SDKs show the message and
do not stack their retries on Keel's (docs/errors.md).

``detail`` is written for the caller. It never carries exception text, paths, SQL, upstream
bodies or secrets: raise sites pass a sentence of their own, and the full error goes to the log.

No framework imports here: ``app/api/problems.py`` renders these as problem+json responses
and installs the handlers, so services and the CLI can raise without loading FastAPI.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

PROBLEM_CONTENT_TYPE = "application/problem+json"
# Not dereferenceable on purpose: docs/errors.md is the documentation of every code.
TYPE_BASE = "urn:keel:problem:"


# A client-side retry after this short a wait can succeed without multiplying provider calls
# (Keel refused before calling anyone); longer waits are for the application, not the SDK.
SHORT_WAIT_S = 2.0

# The OpenAI error ``type`` for a status, so SDK users see the family they know.
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


class KeelError(Exception):
    code: ClassVar[str] = "internal_error"
    status_code: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    retryable: ClassVar[bool] = False
    # ``x-should-retry`` for the official SDKs: may the client retry at once (after
    # Retry-After)? False unless a subclass knows that Keel refused without calling anyone.
    client_retry: ClassVar[bool] = False

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: float | None = None,
        current_version: int | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.retry_after = retry_after
        self.current_version = current_version
        self.param = param
        self.extra = extra or {}
        self.headers = headers or {}

    @property
    def should_retry(self) -> bool:
        return self.client_retry

    def envelope(self) -> dict[str, Any]:
        """The OpenAI error object: what the official SDKs read into ``e.message``/``e.code``."""
        status = self.status_code
        kind = _OPENAI_TYPES.get(status) or (
            "invalid_request_error" if status < 500 else "server_error"
        )
        return {"message": self.detail, "type": kind, "code": self.code, "param": self.param}

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
        body["error"] = self.envelope()
        return body

    def response_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(retry_after_seconds(self.retry_after))
        elif self.status_code in (429, 503):
            headers["Retry-After"] = "1"
        headers["x-should-retry"] = "true" if self.should_retry else "false"
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
    code, status_code, retryable, client_retry = "idempotency_in_progress", 409, True, True
    title = "A request with this idempotency key is still running"


class ModelNotReady(KeelError):
    code, status_code, title, retryable = "model_not_ready", 409, "Model not ready", True
    client_retry = True


class RequestCancelled(KeelError):
    """Stopped by ``POST /v1/requests/{id}/cancel``. 409: the request's own state (cancelled)
    conflicts with finishing it; nginx's 499 is not HTTP. Never retried by the SDKs."""

    code, status_code, title = "request_cancelled", 409, "Request cancelled"


class CapabilityUnavailable(KeelError):
    code, status_code, retryable = "capability_unavailable", 503, True
    title = "Capability unavailable"


class CircuitOpen(KeelError):
    code, status_code, title, retryable = "circuit_open", 503, "Circuit open", True

    @property
    def should_retry(self) -> bool:
        # A breaker about to half-open is worth one SDK retry; a long open period is not.
        return self.retry_after is not None and self.retry_after <= SHORT_WAIT_S


class RetryBudgetExhausted(KeelError):
    code, status_code, retryable = "retry_budget_exhausted", 503, True
    title = "Retry budget exhausted"


class Overloaded(KeelError):
    code, status_code, title, retryable = "overloaded", 503, "Overloaded", True
    client_retry = True  # shed before any provider call: a retry costs the provider nothing


class RateLimited(KeelError):
    code, status_code, title, retryable = "rate_limited", 429, "Rate limited", True


class DeadlineExceeded(KeelError):
    code, status_code, title, retryable = "deadline_exceeded", 504, "Deadline exceeded", True


class UpstreamError(KeelError):
    code, status_code, title, retryable = "upstream_error", 502, "Upstream error", True


class UpstreamTimeout(KeelError):
    code, status_code, title, retryable = "upstream_timeout", 504, "Upstream timeout", True


class UpstreamRejected(KeelError):
    code, status_code = "upstream_rejected", 400
    title = "The provider rejected the request"


class UpstreamNotFound(UpstreamRejected):
    code, status_code = "upstream_not_found", 404
    title = "The provider does not know this model or resource"


class UpstreamUnprocessable(UpstreamRejected):
    code, status_code = "upstream_unprocessable", 422
    title = "The provider could not process the request"


class UpstreamAuthFailed(KeelError):
    """The provider refused Keel's own credentials: an operator's fix, not the caller's."""

    code, status_code = "upstream_auth_failed", 502
    title = "The provider refused Keel's credentials"


class ChecksumMismatch(KeelError):
    code, status_code, title = "checksum_mismatch", 422, "Checksum mismatch"


class InsufficientStorage(KeelError):
    code, status_code, title = "insufficient_storage", 507, "Insufficient storage"


class DownloadFailed(KeelError):
    code, status_code, title, retryable = "download_failed", 502, "Download failed", True


class ModelLoadFailed(KeelError):
    code, status_code, title, retryable = "model_load_failed", 503, "Model failed to load", True


class MemoryBudgetExceeded(KeelError):
    code, status_code, title = "memory_budget_exceeded", 507, "Memory budget exceeded"


class DataCorrupted(KeelError):
    code, status_code, title = "data_corrupted", 500, "Stored data failed its integrity check"


class StorageUnavailable(KeelError):
    code, status_code, title, retryable = "storage_unavailable", 503, "Storage unavailable", True


class SchemaNotReady(KeelError):
    code, status_code, retryable = "schema_not_ready", 503, True
    title = "The database schema is not migrated"


class DatabaseUnavailable(KeelError):
    code, status_code, title, retryable = "database_unavailable", 503, "Database unavailable", True


class InternalError(KeelError):
    code, status_code, title = "internal_error", 500, "Internal error"


def catalogue() -> dict[str, type[KeelError]]:
    """Every code, for docs and tests; built from the class tree so it cannot drift."""
    out: dict[str, type[KeelError]] = {}
    stack: list[type[KeelError]] = list(KeelError.__subclasses__())
    while stack:
        cls = stack.pop()
        out[cls.code] = cls
        stack.extend(cls.__subclasses__())
    return out
