"""Resilience building blocks: pure, clock-injected, no web framework (DESIGN §5).

- ``clock``     the time seam (``MonotonicClock``, ``FakeClock`` for tests)
- ``deadline``  one monotonic deadline per request, bounding every await
- ``backoff``   full-jitter delays, ``Retry-After`` parsing
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
from app.resilience.deadline import Deadline
from app.resilience.failures import Classification, UpstreamFailure, classify
from app.resilience.guard import ProviderGuard
from app.resilience.limiter import ConcurrencyLimiter
from app.resilience.retry import Retrier, RetryPolicy
from app.settings import effective_breaker, effective_retry

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "Classification",
    "Clock",
    "ConcurrencyLimiter",
    "Deadline",
    "FakeClock",
    "MonotonicClock",
    "Permit",
    "ProviderGuard",
    "Retrier",
    "RetryBudget",
    "RetryPolicy",
    "UpstreamFailure",
    "classify",
    "effective_breaker",
    "effective_retry",
]
