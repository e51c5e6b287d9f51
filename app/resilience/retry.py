"""The retry executor: a few bounded attempts at one upstream call, inside one deadline.

Why a hand-written loop and not tenacity's ``AsyncRetrying``: the decision to retry here is one
ordered question with a side effect at the end, and tenacity splits it across callables that
run in a fixed order (``retry`` -> ``wait`` -> ``stop``) and only return booleans or floats:

1. is the error retryable and are attempts left?        (tenacity: ``retry`` + ``stop``)
2. does the wait, at least the upstream's Retry-After, plus a minimal attempt fit in what the
   deadline leaves?                                     (``wait`` would have to return a
   sentinel "cannot fit" for ``stop`` to read back)
3. only then withdraw a retry from the shared budget    (a side effect hidden in ``stop``,
                                                         which must run last and exactly once)
4. report *why* we stopped (budget refused vs. deadline) (``stop`` returns only a bool)

Tenacity also times itself with ``time.monotonic`` rather than our clock, and checks nothing
before the first attempt (we must refuse to start one the deadline cannot fit). Expressed in
tenacity this becomes stateful callables talking through side channels; as a loop it is thirty
lines that read in the order the rules are written. Sleeping still goes through one injected
function (the clock), as tenacity's ``sleep=`` would.

Semantics (DESIGN §5): at most ``max_attempts``; only ``classify(exc).retryable`` errors are
retried (never cancellation, never a committed stream); every attempt runs under the deadline;
an attempt is not started with less than ``min_attempt_s`` left (the last error is raised, or
``DeadlinePassed`` if there was none); the wait is ``max(full jitter, Retry-After)``, and a
Retry-After the deadline cannot honour ends the retries; each retry spends from the budget, and
a refusal raises the last error.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from app.resilience.backoff import compute_delay
from app.resilience.budget import RetryBudget
from app.resilience.clock import Clock
from app.resilience.config import RetryConfig
from app.resilience.deadline import DEADLINE_DETAIL, Deadline
from app.resilience.errors import DeadlinePassed
from app.resilience.failures import Classification, UpstreamFailure, classify

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0
    min_attempt_s: float = 0.05  # less time than this left: an attempt is not worth starting

    @classmethod
    def from_config(cls, config: RetryConfig, *, min_attempt_s: float = 0.05) -> RetryPolicy:
        return cls(
            max_attempts=config.max_attempts,
            base_delay_s=config.base_delay_s,
            max_delay_s=config.max_delay_s,
            min_attempt_s=min_attempt_s,
        )


class RetryObserver(Protocol):
    def on_attempt(self, number: int, outcome: str) -> None:
        """Attempt ``number`` (from 1) ended: "success" or the failure's reason."""

    def on_retry(self, reason: str, delay: float) -> None:
        """A retry was decided (budget spent) and will start after ``delay`` seconds."""

    def on_give_up(self, reason: str, why: str) -> None:
        """A retryable failure was not retried: ``why`` is "attempts", "deadline" or "budget"."""


class NullObserver:
    def on_attempt(self, number: int, outcome: str) -> None:
        pass

    def on_retry(self, reason: str, delay: float) -> None:
        pass

    def on_give_up(self, reason: str, why: str) -> None:
        pass


class Retrier:
    def __init__(
        self,
        policy: RetryPolicy,
        clock: Clock,
        *,
        budget: RetryBudget | None = None,
        rng: random.Random | None = None,
        observer: RetryObserver | None = None,
        classifier: Callable[[BaseException], Classification] = classify,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._budget = budget
        self._rng = rng or random.Random()
        self._observer: RetryObserver = observer or NullObserver()
        self._classify = classifier

    async def run(
        self,
        op: Callable[[Deadline], Awaitable[T]],
        deadline: Deadline,
        *,
        classifier: Callable[[BaseException], Classification] | None = None,
        bounded: bool = True,
    ) -> tuple[T, int]:
        """``(result, attempts made)``; raises the last error when retries end.

        ``classifier`` replaces the retrier's own for this run (a caller with a fallback
        target may decline retries the fallback serves better). ``bounded=False``: ``op``
        bounds itself by ``deadline`` (the guard's attempt does, with the one timer it arms)."""
        p = self.policy
        classify_ = classifier or self._classify
        if deadline.remaining() < p.min_attempt_s:
            raise DeadlinePassed(DEADLINE_DETAIL)
        if self._budget is not None:
            self._budget.record_request()
        attempt = 0
        while True:
            attempt += 1
            try:
                if bounded:
                    async with deadline.bound():
                        result = await op(deadline)
                else:
                    result = await op(deadline)
            except asyncio.CancelledError:
                self._observer.on_attempt(attempt, "cancelled")
                raise
            except Exception as exc:
                if isinstance(exc, UpstreamFailure):
                    exc.attempts = attempt
                c = classify_(exc)
                self._observer.on_attempt(attempt, c.reason)
                if not c.retryable:
                    raise
                delay = self._next_delay(attempt, c, deadline)
                if delay is None:
                    raise
                last_error, reason = exc, c.reason
            else:
                self._observer.on_attempt(attempt, "success")
                return result, attempt
            self._observer.on_retry(reason, delay)
            await self._clock.sleep(delay)
            if deadline.remaining() < p.min_attempt_s:  # a real sleep can overshoot a little
                self._observer.on_give_up(reason, "deadline")
                raise last_error

    def _next_delay(self, attempt: int, c: Classification, deadline: Deadline) -> float | None:
        """The wait before the next attempt, or ``None`` to stop (after telling the observer)."""
        p = self.policy
        if attempt >= p.max_attempts:
            self._observer.on_give_up(c.reason, "attempts")
            return None
        delay = compute_delay(
            attempt - 1,
            p.base_delay_s,
            p.max_delay_s,
            self._rng,
            retry_after=c.retry_after,
            remaining=deadline.remaining(),
            min_attempt_s=p.min_attempt_s,
        )
        if delay is None:
            self._observer.on_give_up(c.reason, "deadline")
            return None
        if self._budget is not None and not self._budget.try_spend_retry():
            self._observer.on_give_up(c.reason, "budget")
            return None
        return delay
