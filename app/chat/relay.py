"""Responses that stop work the moment the client goes away.

Starlette only notices a disconnect when a send fails, which for a slow upstream can be many
seconds later; these watch ``receive()`` for ``http.disconnect`` beside the work and cancel it
at once, so the upstream sees the hang-up too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.errors import KeelError

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client hung up before the answer was ready."""


# A call that answers sooner than this never starts a watcher: a task per request was a
# tenth of the proxy's own cost against a fast upstream, and a hang-up noticed 50 ms late
# wastes at most 50 ms of upstream work.
WATCH_AFTER_S = 0.05


async def until_disconnect(
    receive: Receive, work: Callable[[], Awaitable[T]], *, watch_after_s: float = WATCH_AFTER_S
) -> T:
    """Run ``work``; raise ``ClientDisconnected`` (having cancelled it) if the client leaves.

    Only valid once the request body has been read: from then on ``receive()`` returns only
    ``http.disconnect``. The work runs in the caller's task (its exceptions arrive as
    themselves); once it has run ``watch_after_s``, one watcher task cancels it when the client
    hangs up (a client already gone by then is noticed at once).
    """
    current = asyncio.current_task()
    assert current is not None
    loop = asyncio.get_running_loop()
    gone = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal gone
        await _disconnected(receive)
        gone = True
        current.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(watch_after_s, start_watching)
    try:
        return await work()
    except asyncio.CancelledError:
        if gone and current.uncancel() == 0:
            raise ClientDisconnected from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class StopHandle(Protocol):
    def bind(self, stop: Callable[[], None]) -> None: ...

    def settle(self) -> None: ...


class EventStreamResponse(Response):
    """``text/event-stream`` from an async iterator of ready-made SSE events.

    A ``Response`` subclass only so FastAPI passes it through; ``__call__`` is its own.
    ``stop``, when given, may end the stream from outside (a cancel by request id): the relay
    stops, the upstream is closed, then ``stop_event()`` is sent as the last event.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[bytes],
        headers: dict[str, str] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        stop: StopHandle | None = None,
        stop_event: Callable[[], bytes] | None = None,
        error_event: Callable[[KeelError], bytes] | None = None,
    ) -> None:
        super().__init__(status_code=200, media_type=self.media_type)
        self.events = events
        self.error_event = error_event
        self.extra_headers = headers or {}
        self.on_disconnect = on_disconnect
        self.on_close = on_close
        self.stop = stop
        self.stop_event = stop_event
        self._closed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ] + [(k.lower().encode(), v.encode()) for k, v in self.extra_headers.items()]
        disconnected = False
        stopped = False
        ended = False  # the last body message went out: nothing may follow it
        try:
            await send({"type": "http.response.start", "status": 200, "headers": raw})
            async with anyio.create_task_group() as tg:

                def stop() -> None:
                    nonlocal stopped
                    stopped = True
                    tg.cancel_scope.cancel()

                if self.stop is not None:
                    self.stop.bind(stop)

                async def watch() -> None:
                    nonlocal disconnected
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    disconnected = True
                    tg.cancel_scope.cancel()

                async def pump() -> None:
                    nonlocal ended
                    try:
                        async for event in self.events:
                            await send(
                                {"type": "http.response.body", "body": event, "more_body": True}
                            )
                    except KeelError as exc:  # after the first event: the stream says why
                        if self.error_event is None:
                            raise
                        await send(
                            {
                                "type": "http.response.body",
                                "body": self.error_event(exc),
                                "more_body": True,
                            }
                        )
                    ended = True
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                tg.start_soon(pump)
            if self.stop is not None and not stopped:
                self.stop.settle()  # relayed to the end, or the client left: nothing to stop
            if stopped and not (disconnected or ended) and self.stop_event is not None:
                await self._close()  # the upstream first, so it stops at once
                await send({"type": "http.response.body", "body": self.stop_event()})
        except OSError:
            disconnected = True
        finally:
            await self._close()
            if disconnected and self.on_disconnect is not None:
                self.on_disconnect()

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        aclose = getattr(self.events, "aclose", None)
        if aclose is not None:
            with anyio.CancelScope(shield=True):
                await aclose()
        if self.on_close is not None:
            with anyio.CancelScope(shield=True):
                await self.on_close()
