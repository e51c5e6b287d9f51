"""One provider's protection, composed: limiter -> retry (with budget) -> breaker per attempt.

The chat router should not have to know in which order the pieces nest or who counts what; it
hands ``ProviderGuard.call`` an operation and a deadline and gets a result (with the number of
attempts) or one catalogue error. Order, and why:

1. a concurrency slot, taken once per call and held across retries (bounded by the deadline),
   so a retrying request does not requeue behind newcomers and load stays bounded;
2. the retry loop (policy + the provider's shared budget), inside the deadline;
3. a breaker permit per attempt: an open breaker rejects at once (``CircuitOpen``, not
   retried, so the router falls back), and each attempt's outcome and duration is recorded.

What the breaker records for an attempt:

- success: the operation returned (for a stream: its first byte is available); it may be slow;
- ignored: cancellation (client gone), caller errors (4xx other than 408/429, whether an
  ``UpstreamFailure`` or a 4xx ``KeelError``), and Keel's own refusals raised inside the
  operation (``circuit_open``, ``overloaded``, ``retry_budget_exhausted``);
- the request deadline expiring mid-attempt: a failure only if the attempt had already run
  ``slow_call_s``; a caller's short ``X-Request-Timeout`` must not open the breaker for everyone,
  while an upstream that hangs past the slow-call threshold must;
- everything else (``UpstreamFailure``, connection errors, unexpected exceptions): a failure.

Transitions go to the metrics (state gauge, transitions counter), the timeline (subject
``breaker:<provider>``) and the log.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from app.errors import CircuitOpen, DeadlineExceeded, KeelError, Overloaded
from app.observability.metrics import Metrics
from app.observability.timeline import Timeline
from app.resilience.breaker import CircuitBreaker, Permit
from app.resilience.budget import RetryBudget
from app.resilience.clock import Clock, MonotonicClock
from app.resilience.deadline import Deadline
from app.resilience.failures import classify, is_caller_error
from app.resilience.limiter import ConcurrencyLimiter
from app.resilience.retry import Retrier, RetryPolicy
from app.settings import (
    BreakerSettings,
    ProviderSettings,
    ResilienceSettings,
    RetrySettings,
    effective_breaker,
    effective_retry,
)

T = TypeVar("T")

BUDGET_WINDOW_S = 10.0  # DESIGN §5: "over a sliding 10 s"


_REFUSALS = frozenset({"circuit_open", "overloaded", "retry_budget_exhausted"})


def _is_keel_refusal(exc: Exception) -> bool:
    """A catalogue error that says nothing about the upstream's health."""
    return isinstance(exc, KeelError) and (exc.status_code < 500 or exc.code in _REFUSALS)


class _RetryMetrics:
    """Feeds the retry loop's decisions to the provider's counters."""

    def __init__(self, provider: str, metrics: Metrics | None) -> None:
        self._provider = provider
        self._metrics = metrics

    def on_attempt(self, number: int, outcome: str) -> None:
        pass  # counted by the guard, which knows whether the upstream was reached

    def on_retry(self, reason: str, delay: float) -> None:
        if self._metrics is not None:
            self._metrics.upstream_retries.labels(provider=self._provider, reason=reason).inc()

    def on_give_up(self, reason: str, why: str) -> None:
        if why == "budget" and self._metrics is not None:
            self._metrics.retry_budget_exhausted.labels(provider=self._provider).inc()


class ProviderGuard:
    def __init__(
        self,
        provider: str,
        *,
        retry: RetrySettings,
        breaker: BreakerSettings,
        max_concurrency: int,
        max_queue_wait_s: float,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        timeline: Timeline | None = None,
        rng: random.Random | None = None,
        min_attempt_s: float = 0.05,
    ) -> None:
        self.provider = provider
        self.clock = clock or MonotonicClock()
        self._metrics = metrics
        self._timeline = timeline
        self.breaker = CircuitBreaker(provider, breaker, self.clock)
        self.breaker.add_listener(self._on_transition)
        self.budget = RetryBudget(
            retry.budget_ratio, retry.budget_min_per_s, BUDGET_WINDOW_S, self.clock
        )
        self.limiter = ConcurrencyLimiter(
            max_concurrency,
            max_queue_wait_s,
            self.clock,
            name=provider,
            on_change=self._on_occupancy,
        )
        self.retrier = Retrier(
            RetryPolicy.from_settings(retry, min_attempt_s=min_attempt_s),
            self.clock,
            budget=self.budget,
            rng=rng,
            observer=_RetryMetrics(provider, metrics),
        )
        if metrics is not None:
            metrics.set_breaker_state(provider, self.breaker.state.value)
            self._on_occupancy(0, 0)

    @classmethod
    def from_settings(
        cls,
        provider: str,
        settings: ProviderSettings,
        resilience: ResilienceSettings,
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        timeline: Timeline | None = None,
        rng: random.Random | None = None,
    ) -> ProviderGuard:
        """Effective settings: defaults merged with the provider's overrides (``ConfigError``)."""
        return cls(
            provider,
            retry=effective_retry(resilience.retry, settings.retry, provider=provider),
            breaker=effective_breaker(resilience.breaker, settings.breaker, provider=provider),
            max_concurrency=settings.max_concurrency,
            max_queue_wait_s=settings.max_queue_wait_s,
            clock=clock,
            metrics=metrics,
            timeline=timeline,
            rng=rng,
        )

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
        except Overloaded:
            self._reject("overloaded")
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
        except CircuitOpen:
            self._reject("circuit_open")
            raise
        started = self.clock.now()
        try:
            result = await op(deadline)
        except asyncio.CancelledError:
            self._settle(permit, started, "cancelled", deadline_hit=deadline.expired)
            raise
        except DeadlineExceeded:
            self._settle(permit, started, "deadline", deadline_hit=True)
            raise
        except Exception as exc:
            ignored = is_caller_error(exc) or _is_keel_refusal(exc)
            self._settle(permit, started, classify(exc).reason, failed=not ignored)
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
        if self._metrics is not None:
            p = self.provider
            self._metrics.upstream_attempts.labels(provider=p, outcome=outcome).inc()
            self._metrics.upstream_latency.labels(provider=p).observe(duration)

    def _reject(self, code: str) -> None:
        if self._metrics is not None:
            self._metrics.rejections.labels(provider=self.provider, code=code).inc()

    def _on_transition(self, name: str, from_state: str, to_state: str, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.set_breaker_state(name, to_state)
            self._metrics.breaker_transitions.labels(
                provider=name, from_state=from_state, to_state=to_state
            ).inc()
        if self._timeline is not None:
            self._timeline.record(f"breaker:{name}", from_state, to_state, reason)

    def _on_occupancy(self, in_use: int, queued: int) -> None:
        if self._metrics is not None:
            self._metrics.limiter_in_use.labels(provider=self.provider).set(in_use)
            self._metrics.limiter_queued.labels(provider=self.provider).set(queued)

    def diagnostics(self) -> dict[str, Any]:
        """JSON-able state for ``/v1/diagnostics``."""
        return {
            "provider": self.provider,
            "breaker": self.breaker.snapshot().as_json(),
            "retry_budget": self.budget.snapshot(),
            "limiter": self.limiter.snapshot(),
        }
