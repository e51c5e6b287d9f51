"""``IdleWatch``: one wait for the upstream longer than the limit ends the stream as
``stream_idle``; time spent away from the wait does not count; other cancellations pass."""

from __future__ import annotations

import asyncio

import pytest

from app.providers.openai_http import HTTPChatStream
from app.resilience.failures import UpstreamFailure

EVENT = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'


class _Chunks:
    """A wire response whose chunks arrive when the test releases them."""

    status = 200

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def header(self, name: str) -> str | None:
        return None

    async def read(self) -> bytes:
        return b""

    async def next_chunk(self) -> bytes:
        return await self.queue.get()

    async def aclose(self) -> None:
        pass


async def test_a_silent_upstream_ends_the_stream_as_idle() -> None:
    wire = _Chunks()
    events = HTTPChatStream(wire, "up").events(0.05)
    wire.queue.put_nowait(EVENT)
    assert await anext(events) == EVENT
    with pytest.raises(UpstreamFailure) as info:
        await anext(events)  # nothing more comes
    assert info.value.reason == "stream_idle"
    assert info.value.committed


async def test_time_spent_away_from_the_wait_does_not_count() -> None:
    wire = _Chunks()
    events = HTTPChatStream(wire, "up").events(0.05)
    for _ in range(3):
        wire.queue.put_nowait(EVENT)
        assert await anext(events) == EVENT
        await asyncio.sleep(0.12)  # a slow client: longer than the limit, outside the wait
    wire.queue.put_nowait(b"data: [DONE]\n\n")
    assert await anext(events) == b"data: [DONE]\n\n"
    wire.queue.put_nowait(b"")
    with pytest.raises(StopAsyncIteration):
        await anext(events)


async def test_another_cancellation_is_not_taken_for_idleness() -> None:
    wire = _Chunks()

    async def read_all() -> None:
        async for _ in HTTPChatStream(wire, "up").events(60):
            pass

    task = asyncio.create_task(read_all())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
