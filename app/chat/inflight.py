"""The requests Keel is answering right now, by ``X-Request-Id``, so
``POST /v1/requests/{id}/cancel`` can stop one whose client cannot abort its own connection.

A request registers when its turn starts and is removed when its answer is done (for a stream:
when the relay closes). Its ``InFlight`` handle is bound in turn to whatever runs the request:
first the request's own task (while the upstream call is made: a cancel cancels that task, so
the upstream sees the hang-up), then the event-stream response relaying the answer (a cancel
ends the stream with an SSE ``error`` event). A cancel that arrives between the two is kept and
acted on as soon as the next one binds.

Bounded: at most ``MAX_IN_FLIGHT`` handles; a request beyond that still runs, it just cannot
be cancelled by id. Two requests sent with the same ``X-Request-Id`` are both stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from app.errors import RequestCancelled
from app.observability.metrics import Metrics

MAX_IN_FLIGHT = 10_000


class InFlight:
    """One in-flight request that something other than its own client may stop."""

    __slots__ = ("_done", "_stop", "reason", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.reason: str | None = None
        self._stop: Callable[[], None] | None = None
        self._done = False

    def cancel(self, reason: str) -> bool:
        """Stop the request; False when it was already stopped or its answer is settled."""
        if self.reason is not None or self._done:
            return False
        self.reason = reason
        if self._stop is not None:
            self._stop()
        return True

    def stopped(self) -> bool:
        return self.reason is not None

    def bind(self, stop: Callable[[], None]) -> None:
        """From now on a cancel calls ``stop`` (at once, if one already came)."""
        self._stop = stop
        if self.reason is not None:
            stop()

    def unbind(self) -> None:
        self._stop = None

    def settle(self) -> None:
        """The answer is decided (being recorded or sent whole): too late to cancel."""
        self._done = True
        self._stop = None

    def error(self) -> RequestCancelled:
        return RequestCancelled(
            "The request was cancelled by POST /v1/requests/{request_id}/cancel."
        )

    def cancels_task(self) -> _CancelsTask:
        """Within this block a cancel cancels the current task and leaves as
        ``RequestCancelled``; other cancellations (a client disconnect, shutdown) pass. A block
        that ends normally although cancelled (its work swallowed the cancellation) leaves
        ``reason`` set for the caller to act on."""
        return _CancelsTask(self)


class _CancelsTask:
    """``InFlight.cancels_task``; a class, not ``@contextmanager``: it is on every request,
    and a generator-based context manager costs several times more."""

    __slots__ = ("_handle", "_task")

    def __init__(self, handle: InFlight) -> None:
        self._handle = handle
        self._task: asyncio.Task[Any] | None = None

    def __enter__(self) -> None:
        handle = self._handle
        if handle.stopped():
            raise handle.error()
        task = self._task = asyncio.current_task()
        assert task is not None
        handle.bind(task.cancel)  # type: ignore[arg-type]  # its bool result is not wanted

    def __exit__(self, kind: type[BaseException] | None, exc: object, tb: object) -> None:
        handle, task = self._handle, self._task
        assert task is not None
        handle.unbind()
        if not handle.stopped():
            return
        if kind is None:  # the work swallowed the cancellation it was sent
            task.uncancel()
        elif issubclass(kind, asyncio.CancelledError) and task.uncancel() == 0:
            raise handle.error() from None


class InFlightRequests:
    """The registry: request id -> handles. A dict insert and pop per request."""

    def __init__(self, metrics: Metrics, limit: int = MAX_IN_FLIGHT) -> None:
        self.metrics = metrics
        self.limit = limit
        self._live: dict[str, list[InFlight]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def register(self, request_id: str) -> InFlight:
        handle = InFlight(request_id)
        if request_id and self._count < self.limit:
            self._live.setdefault(request_id, []).append(handle)
            self._count += 1
        return handle

    def remove(self, handle: InFlight) -> None:
        handle.settle()
        handles = self._live.get(handle.request_id)
        if handles is None or handle not in handles:
            return  # never registered (no id, or the registry was full)
        handles.remove(handle)
        self._count -= 1
        if not handles:
            del self._live[handle.request_id]

    def cancel(self, request_id: str, reason: str = "user_stop") -> bool:
        """Stop every in-flight request with this id; False when none could be stopped."""
        stopped = 0
        for handle in list(self._live.get(request_id, ())):
            stopped += handle.cancel(reason)
        if stopped:
            self.metrics.cancellations.labels(reason=reason).inc(stopped)
        return stopped > 0
