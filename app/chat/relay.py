"""Responses that stop work the moment the client goes away.

Starlette only notices a disconnect when a send fails, which for a slow upstream can be many
seconds later; these watch ``receive()`` for ``http.disconnect`` beside the work and cancel it
at once, so the upstream sees the hang-up too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client hung up before the answer was ready."""


async def until_disconnect(receive: Receive, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``; raise ``ClientDisconnected`` (having cancelled it) if the client leaves.

    Only valid once the request body has been read: from then on ``receive()`` returns only
    ``http.disconnect``. The work runs in the caller's task (its exceptions arrive as
    themselves) and one watcher task cancels it when the client hangs up.
    """
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnected(receive)
        gone = True
        current.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work()
    except asyncio.CancelledError:
        if gone and current.uncancel() == 0:
            raise ClientDisconnected from None
        raise
    finally:
        watcher.cancel()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStreamResponse(Response):
    """``text/event-stream`` from an async iterator of ready-made SSE events.

    A ``Response`` subclass only so FastAPI passes it through; ``__call__`` is its own.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[bytes],
        headers: dict[str, str] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(status_code=200, media_type=self.media_type)
        self.events = events
        self.extra_headers = headers or {}
        self.on_disconnect = on_disconnect
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ] + [(k.lower().encode(), v.encode()) for k, v in self.extra_headers.items()]
        disconnected = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": raw})
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    nonlocal disconnected
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    disconnected = True
                    tg.cancel_scope.cancel()

                async def pump() -> None:
                    async for event in self.events:
                        await send({"type": "http.response.body", "body": event, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                tg.start_soon(pump)
        except OSError:
            disconnected = True
        finally:
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
            if self.on_close is not None:
                with anyio.CancelScope(shield=True):
                    await self.on_close()
            if disconnected and self.on_disconnect is not None:
                self.on_disconnect()
