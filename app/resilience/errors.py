"""The kit's own refusals: what a guard raises when it will not (or can no longer) call.

These say nothing about what the caller sees over HTTP: the chat layer maps them to catalogue
errors (``circuit_open``, ``overloaded``, ``deadline_exceeded``, ...). Keeping them here keeps
``app.resilience`` free of the rest of ``app/`` (DESIGN §1)::

    ResilienceError
     ├── CallNotPermitted   the breaker is open / probing / switched off (retry_after)
     ├── QueueFull          no concurrency slot in time, or the queue is full (retry_after)
     ├── Throttled          the provider asked to wait (429 Retry-After) longer than we can
     └── DeadlinePassed     the request's deadline passed before an answer was available
"""

from __future__ import annotations


class ResilienceError(Exception):
    """Base of the kit's refusals; ``retry_after`` is a hint in seconds, or ``None``.

    ``reason`` is the bounded label metrics and logs use for the refusal.
    """

    reason = "refused"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class CallNotPermitted(ResilienceError):
    """The breaker refused a call; ``state`` is the breaker state that refused it."""

    reason = "circuit_open"

    def __init__(
        self, message: str, *, retry_after: float | None = None, state: str = "open"
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.state = state


class QueueFull(ResilienceError):
    """No concurrency slot within the queue wait (or the queue was full)."""

    reason = "overloaded"


class Throttled(ResilienceError):
    """The provider asked for a pause (``Retry-After``) that this request cannot wait out."""

    reason = "throttled"


class DeadlinePassed(ResilienceError):
    """The request's deadline passed before an answer was available."""

    reason = "deadline"

    def __init__(self, message: str = "The request deadline passed.") -> None:
        super().__init__(message)
