"""A request's deadline: one monotonic instant that bounds every wait made on its behalf.

DESIGN §5: every request has a deadline, and it bounds connecting, each attempt, the queue wait
and the stream's idle gaps. Passing one ``Deadline`` object down (rather than a timeout in
seconds to each layer) keeps the whole request inside one budget: time spent queueing or backing
off is time an attempt no longer has.

``bound()`` / ``run()`` cancel the awaited work when the instant passes and raise
``DeadlinePassed``; an ``asyncio.TimeoutError`` raised by the work itself is not translated
(it is the work's own timeout, a retryable upstream timeout). Outside cancellation passes through
unchanged.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TypeVar

from app.resilience.clock import Clock, MonotonicClock
from app.resilience.errors import DeadlinePassed

T = TypeVar("T")

DEADLINE_DETAIL = "The request deadline passed before an answer was available."


class Deadline:
    """An absolute instant on ``clock``; immutable, cheap to derive and to pass around."""

    __slots__ = ("_at", "_clock")

    def __init__(self, at: float, clock: Clock) -> None:
        self._at = at
        self._clock = clock

    @classmethod
    def after(cls, seconds: float, clock: Clock | None = None) -> Deadline:
        clock = clock or MonotonicClock()
        return cls(clock.now() + max(0.0, seconds), clock)

    @property
    def at(self) -> float:
        return self._at

    @property
    def clock(self) -> Clock:
        return self._clock

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._at - self._clock.now())

    @property
    def expired(self) -> bool:
        return self._clock.now() >= self._at

    def derive(self, cap_s: float | None) -> Deadline:
        """The earlier of this deadline and ``now + cap_s`` (e.g. a per-attempt or idle cap)."""
        if cap_s is None:
            return self
        return Deadline(min(self._at, self._clock.now() + max(0.0, cap_s)), self._clock)

    def bound(self) -> _Bound:
        """Run the block until it finishes or the deadline passes (then ``DeadlinePassed``)."""
        return _Bound(self)

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` within the deadline; an unstarted coroutine is closed if late."""
        if self.expired:
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never awaited: close it so no warning leaks
            raise DeadlinePassed(DEADLINE_DETAIL)
        async with self.bound():
            return await awaitable

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining():.3f}s)"


class _Bound:
    """``Deadline.bound()``: a class rather than a generator-based context manager, because
    every attempt enters one (the generator's machinery cost more than the timer)."""

    __slots__ = ("_cm", "_deadline", "_timeout")
    _cm: AbstractAsyncContextManager[asyncio.Timeout]
    _timeout: asyncio.Timeout

    def __init__(self, deadline: Deadline) -> None:
        self._deadline = deadline

    async def __aenter__(self) -> Deadline:
        d = self._deadline
        if d.expired:
            raise DeadlinePassed(DEADLINE_DETAIL)
        self._cm = d.clock.timeout_at(d.at)
        self._timeout = await self._cm.__aenter__()
        return d

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._cm.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            if self._timeout.expired():
                raise DeadlinePassed(DEADLINE_DETAIL) from None
            raise
        # The block's own TimeoutError passes through, unless the deadline had passed too.
        if isinstance(exc, TimeoutError) and self._timeout.expired():
            raise DeadlinePassed(DEADLINE_DETAIL) from None
