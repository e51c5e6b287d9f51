"""One provider's protection, composed: limiter -> retry (with budget) -> breaker per attempt.

The chat router should not have to know in which order the pieces nest or who counts what; it
hands ``ProviderGuard.call`` an operation and a deadline and gets a result (with the number of
attempts) or one catalogue error. Order, and why:

1. a concurrency slot, taken once per call and held across retries (bounded by the deadline),
   so a retrying request does not requeue behind newcomers and load stays bounded;
2. the retry loop (policy + the provider's shared budget), inside the deadline;
3. a breaker permit per attempt: an open breaker rejects at once (``CallNotPermitted``, not
   retried, so the router falls back), and each attempt's outcome and duration is recorded.

What the breaker records for an attempt:

- success: the operation returned (for a stream: its first byte is available); it may be slow;
- ignored: whatever the classifier says does not count (``Classification.counts_as_failure``):
  cancellation (client gone), caller errors (4xx other than 408/429), 429 (backpressure), and
  refusals raised inside the operation (the kit's own, or the caller's through its classifier);
- the request deadline expiring mid-attempt: a failure only if the attempt had already run
  ``slow_call_s``; a caller's short ``X-Request-Timeout`` must not open the breaker for everyone,
  while an upstream that hangs past the slow-call threshold must;
- everything else (``UpstreamFailure``, connection errors, unexpected exceptions): a failure.

Everything worth counting goes to a ``GuardObserver`` (the chat layer turns it into metrics
and timeline entries); transitions are also logged by the breaker.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from app.resilience.breaker import CircuitBreaker, Permit
from app.resilience.budget import RetryBudget
from app.resilience.clock import Clock, MonotonicClock
from app.resilience.config import GuardConfig
from app.resilience.deadline import Deadline
from app.resilience.errors import CallNotPermitted, DeadlinePassed, QueueFull
from app.resilience.failures import Classification, classify
from app.resilience.limiter import ConcurrencyLimiter
from app.resilience.observer import GuardObserver, NullObserver
from app.resilience.retry import Retrier, RetryPolicy

T = TypeVar("T")

Classifier = Callable[[BaseException], Classification]


class _RetryReport:
    """Feeds the retry loop's decisions to the guard's observer."""

    def __init__(self, provider: str, observer: GuardObserver) -> None:
        self._provider = provider
        self._observer = observer

    def on_attempt(self, number: int, outcome: str) -> None:
        pass  # reported by the guard, which knows whether the upstream was reached

    def on_retry(self, reason: str, delay: float) -> None:
        self._observer.retry(self._provider, reason, delay)

    def on_give_up(self, reason: str, why: str) -> None:
        if why == "budget":
            self._observer.budget_exhausted(self._provider)


class ProviderGuard:
    def __init__(
        self,
        provider: str,
        config: GuardConfig | None = None,
        *,
        clock: Clock | None = None,
        observer: GuardObserver | None = None,
        rng: random.Random | None = None,
        classifier: Classifier = classify,
    ) -> None:
        self.provider = provider
        self.config = config = config or GuardConfig()
        self.clock = clock or MonotonicClock()
        self._observer: GuardObserver = observer or NullObserver()
        self._classify = classifier
        self.breaker = CircuitBreaker(provider, config.breaker, self.clock)
        self.breaker.add_listener(self._observer.breaker_transition)
        retry = config.retry
        self.budget = RetryBudget(
            retry.budget_ratio, retry.budget_min_per_s, config.budget_window_s, self.clock
        )
        self.limiter = ConcurrencyLimiter(
            config.max_concurrency,
            config.max_queue_wait_s,
            self.clock,
            name=provider,
            on_change=self._on_occupancy,
        )
        self.retrier = Retrier(
            RetryPolicy.from_config(retry, min_attempt_s=config.min_attempt_s),
            self.clock,
            budget=self.budget,
            rng=rng,
            observer=_RetryReport(provider, self._observer),
            classifier=classifier,
        )
        self._on_occupancy(0, 0)

    async def call(
        self, op: Callable[[Deadline], Awaitable[T]], deadline: Deadline
    ) -> tuple[T, int]:
        """Run ``op`` under this provider's protection: ``(result, attempts)``.

        ``op`` gets the request deadline and should bound its own I/O by it. Raises
        ``Overloaded`` (no slot in time), ``CircuitOpen`` (breaker rejects an attempt),
        ``DeadlineExceeded`` (no time for an attempt), or the last attempt's error.
        """
        async with self.slot(deadline):
            return await self.run(op, deadline)

    @asynccontextmanager
    async def slot(self, deadline: Deadline) -> AsyncIterator[None]:
        """A concurrency slot on its own, for callers that hold it beyond ``run`` (a stream
        keeps its slot until the last event is relayed)."""
        try:
            await self.limiter.acquire(deadline)
        except QueueFull:
            self._observer.rejected(self.provider, "overloaded")
            raise
        try:
            yield
        finally:
            self.limiter.release()

    async def run(
        self, op: Callable[[Deadline], Awaitable[T]], deadline: Deadline
    ) -> tuple[T, int]:
        """The attempts alone (breaker + retry + budget); the caller holds a ``slot``."""
        return await self.retrier.run(lambda d: self._attempt(op, d), deadline)

    async def _attempt(self, op: Callable[[Deadline], Awaitable[T]], deadline: Deadline) -> T:
        try:
            permit = self.breaker.acquire()
        except CallNotPermitted:
            self._observer.rejected(self.provider, "circuit_open")
            raise
        started = self.clock.now()
        try:
            result = await op(deadline)
        except asyncio.CancelledError:
            self._settle(permit, started, "cancelled", deadline_hit=deadline.expired)
            raise
        except DeadlinePassed:
            self._settle(permit, started, "deadline", deadline_hit=True)
            raise
        except Exception as exc:
            c = self._classify(exc)
            self._settle(permit, started, c.reason, failed=c.counts_as_failure)
            raise
        duration = self.clock.now() - started
        self.breaker.record_success(permit, duration)
        self._count_attempt("success", duration)
        return result

    def _settle(
        self,
        permit: Permit,
        started: float,
        outcome: str,
        *,
        failed: bool = False,
        deadline_hit: bool = False,
    ) -> None:
        duration = self.clock.now() - started
        if deadline_hit:
            outcome = "deadline"
            failed = duration >= self.breaker.config.slow_call_s
        if failed:
            self.breaker.record_failure(permit, duration)
        else:
            self.breaker.record_ignored(permit)
        self._count_attempt(outcome, duration)

    def _count_attempt(self, outcome: str, duration: float) -> None:
        self._observer.attempt(self.provider, outcome, duration)

    def _on_occupancy(self, in_use: int, queued: int) -> None:
        self._observer.occupancy(self.provider, in_use, queued)

    def diagnostics(self) -> dict[str, Any]:
        """JSON-able state for ``/v1/diagnostics``."""
        return {
            "provider": self.provider,
            "breaker": self.breaker.snapshot().as_json(),
            "retry_budget": self.budget.snapshot(),
            "limiter": self.limiter.snapshot(),
        }
