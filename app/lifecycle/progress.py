"""Progress fan-out: every subscriber of a model's events gets its own small, bounded queue.

A download publishes without ever waiting on a subscriber. Consecutive progress events of the
same phase and file coalesce into the newest (a slow reader sees fewer, fresher events, never
an outdated backlog), and past ``maxlen`` the oldest non-final event is dropped. Final events
(``ready``, ``failed``) are never dropped, so every reader learns how a download ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from app.errors import Overloaded

PHASES = ("queued", "downloading", "verifying", "promoting", "ready", "failed")
TERMINAL = frozenset({"ready", "failed"})


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    model: str
    job_id: str | None
    phase: str
    file: str | None
    bytes: int
    total: int
    attempt: int = 0
    resumed_from: int = 0
    bytes_per_s: float = 0.0
    error: dict[str, Any] | None = field(default=None)

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    @property
    def percent(self) -> float:
        if self.phase == "ready":
            return 100.0
        return round(100.0 * self.bytes / self.total, 1) if self.total > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "job_id": self.job_id,
            "phase": self.phase,
            "file": self.file,
            "bytes": self.bytes,
            "total": self.total,
            "percent": self.percent,
            "attempt": self.attempt,
            "resumed_from": self.resumed_from,
            "bytes_per_s": round(self.bytes_per_s, 1),
        }
        if self.error is not None:
            out["error"] = self.error
        return out


class Subscription:
    def __init__(self, hub: ProgressHub, model: str, maxlen: int) -> None:
        self._hub = hub
        self.model = model
        self._maxlen = maxlen
        self._items: deque[ProgressEvent] = deque()
        self._wake = asyncio.Event()
        self.dropped = 0

    def push(self, event: ProgressEvent) -> None:
        items = self._items
        if items and _coalesces(items[-1], event):
            items[-1] = event
            self.dropped += 1
        else:
            if len(items) >= self._maxlen:
                for i, old in enumerate(items):
                    if not old.terminal:
                        del items[i]
                        self.dropped += 1
                        break
            items.append(event)
        self._wake.set()

    async def get(self, wait_s: float | None = None) -> ProgressEvent | None:
        """The next event, or ``None`` when ``wait_s`` passes first (time for a heartbeat)."""
        if not self._items:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
        return self._items.popleft() if self._items else None

    def close(self) -> None:
        self._hub._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _coalesces(old: ProgressEvent, new: ProgressEvent) -> bool:
    return (
        not old.terminal
        and old.phase == new.phase
        and old.file == new.file
        and old.job_id == new.job_id
    )


class ProgressHub:
    def __init__(self, *, queue_size: int = 16, max_subscribers: int = 64) -> None:
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self._subs: dict[str, set[Subscription]] = {}

    def subscribe(self, model: str) -> Subscription:
        subs = self._subs.setdefault(model, set())
        if len(subs) >= self.max_subscribers:
            raise Overloaded("Too many progress subscribers for this model.")
        sub = Subscription(self, model, self.queue_size)
        subs.add(sub)
        return sub

    def publish(self, event: ProgressEvent) -> None:
        for sub in tuple(self._subs.get(event.model, ())):
            sub.push(event)

    def subscribers(self, model: str) -> int:
        return len(self._subs.get(model, ()))

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.model)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.model]
