"""The one seam through which resilience code reads time, sleeps and bounds an await.

Breakers, budgets, deadlines, limiters and retries never call ``time`` or ``asyncio.sleep``
directly; they take a ``Clock``. Production passes ``MonotonicClock``; tests pass ``FakeClock``,
whose virtual time moves only when a test advances it or a task sleeps on it, so a test of a
five-minute open circuit runs in microseconds and never flakes.

``timeout_at`` is part of the seam because a deadline must fire in the clock's own time: with a
real clock it is plain ``asyncio.timeout``; with the fake clock it is an ``asyncio.timeout`` that
the clock expires when virtual time reaches the instant. Either way cancellation, nesting and
``Timeout.expired()`` behave exactly as asyncio's.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, runtime_checkable

# How many event-loop turns a sleeping FakeClock task lets other tasks run before it concludes
# that everybody is waiting on virtual time and jumps the clock to the next timer.
_SETTLE_ROUNDS = 10


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds; only differences are meaningful."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def timeout_at(self, when: float) -> AbstractAsyncContextManager[asyncio.Timeout]:
        """Cancel the enclosed block when ``now()`` reaches ``when`` (asyncio.Timeout rules)."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and the running event loop."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def timeout_at(self, when: float) -> AbstractAsyncContextManager[asyncio.Timeout]:
        # Relative delay: the loop's own time base need not equal time.monotonic().
        return asyncio.timeout(when - self.now())


class _Timer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Virtual time for tests; safe to share between concurrent tasks on one event loop.

    - ``advance(s)`` moves time forward, firing due sleepers and timeouts in time order.
    - ``sleep(s)`` waits for virtual time ``now + s``. With ``auto_advance`` (the default) a
      sleeping task first lets the other tasks run for a few loop turns and then, if it is still
      waiting, jumps the clock to the earliest pending timer, so concurrent sleepers wake in the
      right order without a test driving the clock and without any real sleeping.
    - ``timeout_at(when)`` is an ``asyncio.Timeout`` that expires at virtual ``when``.

    A task that waits on anything other than this clock (a lock, an event) does not advance
    time; a test drives such waits with ``advance`` or by sleeping on the clock itself.
    """

    def __init__(self, start: float = 0.0, *, auto_advance: bool = True) -> None:
        self._now = start
        self.auto_advance = auto_advance
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._activity = 0  # bumped whenever a timer is added or fired

    def now(self) -> float:
        return self._now

    @property
    def pending(self) -> int:
        """Timers (sleepers and timeouts) not yet fired or cancelled."""
        return sum(1 for _, _, t in self._timers if not t.cancelled)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            self._fire_next()
        self._now = target

    async def settle(self) -> None:
        """Let other tasks run for a few loop turns without moving time."""
        for _ in range(_SETTLE_ROUNDS):
            await asyncio.sleep(0)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        timer = self.call_at(self._now + seconds, wake)
        try:
            if not self.auto_advance:
                await fut
                return
            while not fut.done():
                seen = self._activity
                for _ in range(_SETTLE_ROUNDS):
                    await asyncio.sleep(0)
                    if fut.done():
                        return
                # Jump only if nothing happened meanwhile: a timer another task just fired may
                # have woken tasks that still have to run and register their own timers.
                if self._activity == seen:
                    self._fire_next()
        finally:
            timer.cancel()

    @asynccontextmanager
    async def _timeout_at(self, when: float) -> AsyncIterator[asyncio.Timeout]:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(None) as cm:

            def expire() -> None:
                if not cm.expired():
                    cm.reschedule(loop.time())  # fires on the next loop turn

            timer = self.call_at(when, expire)
            try:
                yield cm
            finally:
                timer.cancel()

    def timeout_at(self, when: float) -> AbstractAsyncContextManager[asyncio.Timeout]:
        return self._timeout_at(when)

    def call_at(self, when: float, callback: Callable[[], None]) -> _Timer:
        """Run ``callback`` when virtual time reaches ``when`` (at once if it already has)."""
        timer = _Timer(when, callback)
        self._activity += 1
        if when <= self._now:
            callback()
            timer.cancelled = True
            return timer
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def _fire_next(self) -> None:
        while self._timers:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            timer.cancelled = True
            self._activity += 1
            timer.callback()
            return
