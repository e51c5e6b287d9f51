"""One provider's protection, composed: limiter -> retry (with budget) -> throttle, breaker and
attempt timeout per attempt; an active prober while the breaker is open.

The chat service should not have to know in which order the pieces nest or who counts what; it
hands ``ProviderGuard.call`` an operation and a deadline and gets a result (with the number of
attempts) or one error. Order, and why:

1. a concurrency slot, taken once per call and held across retries (bounded by the deadline),
   so a retrying request does not requeue behind newcomers and load stays bounded;
2. the retry loop (policy + the provider's shared budget), inside the deadline;
3. per attempt: the provider's throttle (after a 429 new attempts wait out its ``Retry-After``,
   or, with a fallback, go there at once: ``Throttled``); a breaker permit (an open breaker
   rejects at once with ``CallNotPermitted``, so the service falls back); and the attempt's own
   time-to-first-byte limit ``attempt_timeout_s``, so a hung attempt is a retryable ``timeout``
   failure while the request deadline still has room.

What the breaker records for an attempt:

- success: the operation returned (for a stream: its first byte is available); it may be slow;
- ignored: whatever the classifier says does not count (``Classification.counts_as_failure``):
  cancellation (client gone), caller errors (4xx other than 408/429), 429 (backpressure), and
  refusals raised inside the operation (the kit's own, or the caller's through its classifier);
- the request deadline expiring mid-attempt: a failure only if the attempt had already run
  ``slow_call_s``; a caller's short ``X-Request-Timeout`` must not open the breaker for everyone,
  while an upstream that hangs past the slow-call threshold must;
- everything else (``UpstreamFailure``, timeouts, connection errors, unexpected exceptions): a
  failure, but at most one per call: the retries of one request are not independent samples
  (the same prompt, the same upstream moment), and counting each would let a few unlucky
  requests fill the window (docs/resilience.md). A retry's success still counts.

With ``fallback=True`` (the caller has another target) a timed-out or throttled attempt is not
retried on this provider: the next target is the faster way to an answer.

Everything worth counting goes to a ``GuardObserver`` (the chat layer turns it into metrics
and timeline entries); transitions are also logged by the breaker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from app.resilience.breaker import CircuitBreaker, Permit
from app.resilience.budget import RetryBudget
from app.resilience.clock import Clock, MonotonicClock
from app.resilience.config import GuardConfig
from app.resilience.deadline import Deadline
from app.resilience.errors import CallNotPermitted, DeadlinePassed, QueueFull, Throttled
from app.resilience.failures import Classification, UpstreamFailure, classify
from app.resilience.limiter import ConcurrencyLimiter
from app.resilience.observer import GuardObserver, NullObserver
from app.resilience.probe import ActiveProber, Probe
from app.resilience.retry import Retrier, RetryPolicy
from app.resilience.throttle import Throttle

T = TypeVar("T")

Classifier = Callable[[BaseException], Classification]

_LATENCY_SAMPLES = 256  # recent time-to-first-byte of successes, for a hedge delay


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


class _Call:
    """One ``run``: whether it already put a failure in the breaker's window."""

    __slots__ = ("failed", "fallback")

    def __init__(self, fallback: bool) -> None:
        self.failed = False
        self.fallback = fallback


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
        prober: Probe | None = None,
    ) -> None:
        self.provider = provider
        self.config = config = config or GuardConfig()
        self.clock = clock or MonotonicClock()
        self._rng = rng or random.Random()
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
        )
        self.throttle = Throttle(
            self.clock, max_pause_s=config.max_throttle_s, spread_cap_s=retry.max_delay_s, rng=rng
        )
        self.retrier = Retrier(
            RetryPolicy.from_config(retry, min_attempt_s=config.min_attempt_s),
            self.clock,
            budget=self.budget,
            rng=self._rng,
            observer=_RetryReport(provider, self._observer),
            classifier=classifier,
        )
        self.prober: ActiveProber | None = None
        if prober is not None and config.probe_interval_s > 0:
            self.prober = ActiveProber(
                self.breaker,
                prober,
                self.clock,
                interval_s=config.probe_interval_s,
                on_probe=lambda outcome: self._observer.probe(provider, outcome),
            )
            self.breaker.add_listener(self.prober.on_transition)
        self._latencies: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        limiter = self.limiter
        self._observer.watch_occupancy(provider, lambda: (limiter.in_use, limiter.queued))

    async def aclose(self) -> None:
        """Stop the prober (the lifespan calls this at shutdown)."""
        if self.prober is not None:
            await self.prober.aclose()

    async def call(
        self, op: Callable[[Deadline], Awaitable[T]], deadline: Deadline, *, fallback: bool = False
    ) -> tuple[T, int]:
        """Run ``op`` under this provider's protection: ``(result, attempts)``.

        ``op`` gets the attempt's deadline (the request's, or earlier under
        ``attempt_timeout_s``) and should bound its own I/O by it. Raises ``QueueFull`` (no slot
        in time), ``CallNotPermitted`` (breaker rejects an attempt), ``Throttled`` (the
        provider's pause does not fit, or a fallback exists), ``DeadlinePassed`` (no time for an
        attempt), or the last attempt's error.
        """
        async with self.slot(deadline):
            return await self.run(op, deadline, fallback=fallback)

    def slot(self, deadline: Deadline) -> Slot:
        """A concurrency slot on its own, for callers that hold it beyond ``run`` (a stream
        keeps its slot until the last event is relayed)."""
        return Slot(self, deadline)

    def run(
        self, op: Callable[[Deadline], Awaitable[T]], deadline: Deadline, *, fallback: bool = False
    ) -> Coroutine[Any, Any, tuple[T, int]]:
        """The attempts alone (throttle + breaker + retry + budget); the caller holds a slot."""
        state = _Call(fallback)
        classifier = self._classify
        if fallback:

            def classifier(exc: BaseException) -> Classification:
                c = self._classify(exc)
                if c.retryable and (c.throttle or c.reason == "timeout"):
                    return dataclasses.replace(c, retryable=False)
                return c

        return self.retrier.run(
            lambda d: self._attempt(op, d, state), deadline, classifier=classifier, bounded=False
        )

    def latency_quantile(self, q: float) -> float | None:
        """The ``q`` quantile of recent successful attempts' durations (``None`` if < 20)."""
        if len(self._latencies) < 20:
            return None
        ordered = sorted(self._latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    async def _wait_for_throttle(self, deadline: Deadline, state: _Call) -> None:
        left = self.throttle.remaining()
        if left <= 0:
            return
        wait = (
            None
            if state.fallback
            else self.throttle.wait(deadline.remaining() - self.config.min_attempt_s)
        )
        if wait is None:
            self._observer.rejected(self.provider, "throttled")
            raise Throttled(
                f"Provider '{self.provider}' asked Keel to slow down for {left:.1f} s.",
                retry_after=left,
            )
        await self.clock.sleep(wait)

    async def _attempt(
        self, op: Callable[[Deadline], Awaitable[T]], deadline: Deadline, state: _Call
    ) -> T:
        await self._wait_for_throttle(deadline, state)
        try:
            permit = self.breaker.acquire()
        except CallNotPermitted:
            self._observer.rejected(self.provider, "circuit_open")
            raise
        started = self.clock.now()
        attempt = deadline.derive(self.config.attempt_timeout_s)
        try:
            # One timer per attempt: the attempt's own limit when it comes first (the request's
            # deadline cannot pass before it), else the request's deadline.
            if attempt.at < deadline.at:
                async with self.clock.timeout_at(attempt.at):
                    try:
                        result = await op(attempt)
                    except DeadlinePassed:  # the op bounded itself by the attempt's deadline
                        raise UpstreamFailure("timeout", message="attempt timed out") from None
            else:
                async with deadline.bound():
                    result = await op(deadline)
        except TimeoutError as exc:
            c = self._classify(exc)
            self._settle(permit, started, c.reason, state, failed=c.counts_as_failure)
            raise UpstreamFailure("timeout", message="attempt timed out") from None
        except asyncio.CancelledError:
            self._settle(permit, started, "cancelled", state, deadline_hit=deadline.expired)
            raise
        except DeadlinePassed:
            self._settle(permit, started, "deadline", state, deadline_hit=True)
            raise
        except Exception as exc:
            c = self._classify(exc)
            if c.throttle:
                pause = self.throttle.note(c.retry_after)
                self._observer.throttled(self.provider, pause)
            self._settle(permit, started, c.reason, state, failed=c.counts_as_failure)
            raise
        duration = self.clock.now() - started
        self.breaker.record_success(permit, duration)
        self._latencies.append(duration)
        self._count_attempt("success", duration)
        return result

    def _settle(
        self,
        permit: Permit,
        started: float,
        outcome: str,
        state: _Call,
        *,
        failed: bool = False,
        deadline_hit: bool = False,
    ) -> None:
        duration = self.clock.now() - started
        if deadline_hit:
            outcome = "deadline"
            failed = duration >= self.breaker.config.slow_call_s
        if failed and not state.failed:
            state.failed = True
            self.breaker.record_failure(permit, duration)
        else:
            self.breaker.record_ignored(permit)
        self._count_attempt(outcome, duration)

    def _count_attempt(self, outcome: str, duration: float) -> None:
        self._observer.attempt(self.provider, outcome, duration)

    def diagnostics(self) -> dict[str, Any]:
        """JSON-able state for ``/v1/diagnostics``."""
        return {
            "provider": self.provider,
            "breaker": self.breaker.snapshot().as_json(),
            "retry_budget": self.budget.snapshot(),
            "limiter": self.limiter.snapshot(),
            "throttle": self.throttle.snapshot(),
            "probes": self.prober.probes if self.prober is not None else None,
        }


class Slot:
    """``ProviderGuard.slot()``: a class, not a generator context manager, because every
    request enters one. ``hand_off()`` lets the slot outlive the ``async with`` (a stream
    keeps it until its last event)."""

    __slots__ = ("_deadline", "_guard", "handed_off")

    def __init__(self, guard: ProviderGuard, deadline: Deadline) -> None:
        self._guard = guard
        self._deadline = deadline
        self.handed_off = False

    async def __aenter__(self) -> Slot:
        guard = self._guard
        try:
            await guard.limiter.acquire(self._deadline)
        except QueueFull:
            guard._observer.rejected(guard.provider, "overloaded")
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.handed_off:
            self._guard.limiter.release()

    def hand_off(self) -> Callable[[], Awaitable[None]]:
        """The slot is no longer released on exit; the returned call releases it."""
        self.handed_off = True
        limiter = self._guard.limiter

        async def release() -> None:
            limiter.release()

        return release
