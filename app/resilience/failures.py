"""What went wrong with an upstream call, in the terms retry and breaker decisions need.

Providers translate their transport's exceptions (httpx, a subprocess pipe) into
``UpstreamFailure`` so the resilience kit never imports a client library: retry asks "may I try
again?", the breaker asks "was that the upstream's fault?", the throttle asks "did it ask us to
slow down?", and all read the answer from one ``Classification``.

    retryable (DESIGN §5): connect errors, timeouts, resets, HTTP 408/429/500/502/503/504
    never retried:         anything committed (a stream that sent bytes), cancellation,
                           the kit's own refusals, every other status and exception
    breaker ignores:       cancellation, caller errors (4xx but 408/429), the kit's refusals,
                           and 429: a rate limit is backpressure, neither failure nor success

Callers with their own exception types (the chat layer's catalogue errors, a local runtime)
pass a classifier that handles them and delegates the rest to ``classify``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from app.resilience.errors import ResilienceError

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

    @property
    def rate_limited(self) -> bool:
        return self.status_code == 429


@dataclass(frozen=True, slots=True)
class Classification:
    retryable: bool
    reason: str
    retry_after: float | None = None
    # Whether the breaker records the attempt as a failure; otherwise it ignores it (the
    # permit goes back). Successes are recorded separately, by the attempt returning.
    counts_as_failure: bool = True
    # The upstream asked Keel to slow down (429): the provider's throttle takes note.
    throttle: bool = False


def classify(exc: BaseException) -> Classification:
    """Retryability, breaker verdict and a bounded reason label for an attempt's exception."""
    if isinstance(exc, UpstreamFailure):
        return Classification(
            exc.retryable,
            exc.reason,
            exc.retry_after,
            counts_as_failure=not (exc.caller_error or exc.rate_limited),
            throttle=exc.rate_limited,
        )
    if isinstance(exc, asyncio.CancelledError):
        return Classification(False, "cancelled", counts_as_failure=False)
    if isinstance(exc, ResilienceError):
        # The kit's own refusal (or the whole request's time is gone): nothing to retry in,
        # and nothing it says about the upstream's health.
        return Classification(False, exc.reason, exc.retry_after, counts_as_failure=False)
    if isinstance(exc, TimeoutError):
        return Classification(True, "timeout")
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return Classification(True, "reset")
    if isinstance(exc, ConnectionError):
        return Classification(True, "connect")
    return Classification(False, "error")


def is_caller_error(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamFailure) and exc.caller_error
