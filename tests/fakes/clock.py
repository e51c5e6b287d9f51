"""A clock a test can move forward while a real server (in another thread) reads it."""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager

from app.resilience.clock import MonotonicClock


class SteppedClock(MonotonicClock):
    """``time.monotonic`` plus an offset the test raises with ``step``; sleeps are real.

    For servers running in their own thread: reading a float the other thread writes is
    atomic in CPython, so no lock is needed."""

    def __init__(self) -> None:
        self._offset = 0.0

    def now(self) -> float:
        return time.monotonic() + self._offset

    def timeout_at(self, when: float) -> AbstractAsyncContextManager[asyncio.Timeout]:
        return asyncio.timeout(when - self.now())

    def step(self, seconds: float) -> None:
        self._offset += seconds
