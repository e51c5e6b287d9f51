"""Resilience building blocks: pure, clock-injected, no web framework (DESIGN §5).

This package imports nothing from the rest of ``app/`` (an import-linter contract checks it),
so the chat layer and the model runtime can both build on it.

- ``clock``     the time seam (``MonotonicClock``, ``FakeClock`` for tests)
- ``deadline``  one monotonic deadline per request, bounding every await
- ``backoff``   full-jitter delays, ``Retry-After`` parsing
- ``errors``    the kit's refusals: ``CallNotPermitted``, ``QueueFull``, ``Throttled``,
                ``DeadlinePassed``
- ``config``    frozen configuration, built by callers from their settings
- ``observer``  ``GuardObserver``: how a guard reports to metrics and the timeline
- ``failures``  ``UpstreamFailure`` (raised by providers) and ``classify``
- ``budget``    Finagle-style retry budget
- ``breaker``   resilience4j-style circuit breaker
- ``limiter``   concurrency limit with a bounded queue wait
- ``retry``     the retry executor
- ``guard``     all of the above composed for one provider
"""

from app.resilience.breaker import BreakerState, CircuitBreaker, Permit
from app.resilience.budget import RetryBudget
from app.resilience.clock import Clock, FakeClock, MonotonicClock
from app.resilience.config import BreakerConfig, GuardConfig, RetryConfig
from app.resilience.deadline import Deadline
from app.resilience.errors import (
    CallNotPermitted,
    DeadlinePassed,
    QueueFull,
    ResilienceError,
    Throttled,
)
from app.resilience.failures import Classification, UpstreamFailure, classify
from app.resilience.guard import ProviderGuard
from app.resilience.limiter import ConcurrencyLimiter
from app.resilience.observer import GuardObserver, NullObserver
from app.resilience.retry import Retrier, RetryPolicy

__all__ = [
    "BreakerConfig",
    "BreakerState",
    "CallNotPermitted",
    "CircuitBreaker",
    "Classification",
    "Clock",
    "ConcurrencyLimiter",
    "Deadline",
    "DeadlinePassed",
    "FakeClock",
    "GuardConfig",
    "GuardObserver",
    "MonotonicClock",
    "NullObserver",
    "Permit",
    "ProviderGuard",
    "QueueFull",
    "ResilienceError",
    "Retrier",
    "RetryBudget",
    "RetryConfig",
    "RetryPolicy",
    "Throttled",
    "UpstreamFailure",
    "classify",
]
