"""Per-provider concurrency limit with a short, bounded queue: load shedding.

An upstream (or a local model) serves only so many calls at once. Beyond ``max_concurrency``
callers queue, first come first served, but only for ``max_queue_wait_s`` (never past their
deadline) and only ``max_queue`` of them: a caller who would wait longer, or find the queue full,
gets ``QueueFull`` with a ``Retry-After`` hint at once instead of piling up memory and latency.

Slots are handed directly from a leaving holder to the first waiter (as ``asyncio.Semaphore``
does), so a newcomer cannot overtake the queue. A waiter that times out or is cancelled at the
moment a slot is handed to it passes the slot on, so the counts stay exact.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from app.resilience.clock import Clock, MonotonicClock
from app.resilience.deadline import Deadline
from app.resilience.errors import QueueFull

# (in_use, queued) after every change, for a caller that wants each one. Keel's gauges do not:
# they read ``in_use`` and ``queued`` when scraped (GuardObserver.watch_occupancy).
OccupancyListener = Callable[[int, int], None]


class ConcurrencyLimiter:
    def __init__(
        self,
        max_concurrency: int,
        max_queue_wait_s: float,
        clock: Clock | None = None,
        *,
        max_queue: int | None = None,
        retry_after_s: float | None = None,
        name: str = "upstream",
        on_change: OccupancyListener | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.name = name
        self.max_concurrency = max_concurrency
        self.max_queue_wait_s = max(0.0, max_queue_wait_s)
        self.max_queue = 4 * max_concurrency if max_queue is None else max(0, max_queue)
        self.retry_after_s = (
            retry_after_s if retry_after_s is not None else max(1.0, self.max_queue_wait_s)
        )
        self._clock = clock or MonotonicClock()
        self._on_change = on_change
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def snapshot(self) -> dict[str, Any]:
        return {
            "in_use": self.in_use,
            "queued": self.queued,
            "max_concurrency": self.max_concurrency,
            "max_queue": self.max_queue,
            "max_queue_wait_s": self.max_queue_wait_s,
        }

    @asynccontextmanager
    async def slot(self, deadline: Deadline | None = None) -> AsyncIterator[None]:
        await self._acquire(deadline)
        try:
            yield
        finally:
            self._release()

    async def acquire(self, deadline: Deadline | None = None) -> None:
        """Take a slot without a context manager; pair with exactly one ``release``."""
        await self._acquire(deadline)

    def release(self) -> None:
        self._release()

    def _overloaded(self, why: str) -> QueueFull:
        return QueueFull(
            f"Provider '{self.name}' is at capacity ({why}); try again shortly.",
            retry_after=self.retry_after_s,
        )

    async def _acquire(self, deadline: Deadline | None) -> None:
        if self._in_use < self.max_concurrency and not self._waiters:
            self._in_use += 1
            self._changed()
            return
        wait = self.max_queue_wait_s
        if deadline is not None:
            wait = min(wait, deadline.remaining())
        if wait <= 0:
            raise self._overloaded("no queueing time left")
        if len(self._waiters) >= self.max_queue:
            raise self._overloaded("queue full")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._changed()
        try:
            async with self._clock.timeout_at(self._clock.now() + wait) as timeout:
                await fut
        except BaseException as exc:
            self._abandon(fut)
            if isinstance(exc, TimeoutError) and timeout.expired():
                raise self._overloaded("queue wait exceeded") from None
            raise

    def _abandon(self, fut: asyncio.Future[None]) -> None:
        """A waiter gives up; if a slot was already handed to it, pass the slot on."""
        if fut.done() and not fut.cancelled():
            self._release()
            return
        fut.cancel()
        with contextlib.suppress(ValueError):  # already popped by a release
            self._waiters.remove(fut)
        self._changed()

    def _release(self) -> None:
        # Hand the slot to the first live waiter (in_use unchanged), else free it.
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                self._changed()
                return
        self._in_use -= 1
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self._in_use, len(self._waiters))
