"""What went wrong with an upstream call, in the terms retry and breaker decisions need.

Providers translate their transport's exceptions (httpx, a subprocess pipe) into
``UpstreamFailure`` so the resilience kit never imports a client library: retry asks "may I try
again?", the breaker asks "was that the upstream's fault?", and both read the answer from the
same few attributes.

    retryable (DESIGN §5): connect errors, timeouts, resets, HTTP 408/429/500/502/503/504
    never retried:         anything committed (a stream that sent bytes), cancellation,
                           every other status and every other exception
    not the upstream's fault (breaker ignores it): cancellation, caller errors (4xx but 408/429)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from app.errors import DeadlineExceeded, KeelError

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
RETRYABLE_REASONS = frozenset({"connect", "timeout", "reset"})


class UpstreamFailure(Exception):
    """An upstream call failed; raised by providers, classified by ``classify``.

    ``reason`` is a short, bounded label ("connect", "timeout", "reset", "status_503",
    "bad_response", ...) used in metrics; ``retry_after`` is the upstream's ``Retry-After`` in
    seconds; ``committed`` marks a failure after bytes reached the caller (never retried).
    """

    def __init__(
        self,
        reason: str | None = None,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        committed: bool = False,
        message: str | None = None,
        param: str | None = None,
    ) -> None:
        if reason is None:
            reason = f"status_{status_code}" if status_code is not None else "error"
        super().__init__(message or reason)
        self.reason = reason
        self.status_code = status_code
        self.retry_after = retry_after
        self.committed = committed
        self.param = param  # the request field the upstream blamed (a short identifier)
        self.attempts = 1  # set by the retrier to the attempts made before giving up

    @property
    def retryable(self) -> bool:
        if self.committed:
            return False
        if self.status_code is not None:
            return self.status_code in RETRYABLE_STATUS
        return self.reason in RETRYABLE_REASONS

    @property
    def caller_error(self) -> bool:
        """A 4xx other than 408/429: the request was wrong, the upstream is fine."""
        code = self.status_code
        return code is not None and 400 <= code < 500 and code not in (408, 429)


@dataclass(frozen=True, slots=True)
class Classification:
    retryable: bool
    reason: str
    retry_after: float | None = None


def classify(exc: BaseException) -> Classification:
    """Retryability and a bounded reason label for any exception an attempt raised."""
    if isinstance(exc, UpstreamFailure):
        return Classification(exc.retryable, exc.reason, exc.retry_after)
    if isinstance(exc, asyncio.CancelledError):
        return Classification(False, "cancelled")
    if isinstance(exc, DeadlineExceeded):
        # The whole request's time is gone: nothing is left to retry in.
        return Classification(False, "deadline")
    if isinstance(exc, KeelError):
        return Classification(False, exc.code)
    if isinstance(exc, TimeoutError):
        return Classification(True, "timeout")
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return Classification(True, "reset")
    if isinstance(exc, ConnectionError):
        return Classification(True, "connect")
    return Classification(False, "error")


def is_caller_error(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamFailure) and exc.caller_error
