"""``until_disconnect``: a hang-up cancels the work; a quick answer never starts a watcher."""

from __future__ import annotations

import asyncio

import pytest

from app.chat.relay import ClientDisconnected, until_disconnect


async def _turns(n: int = 5) -> None:
    """A few turns of the loop: the timer fires, then the watcher runs up to its wait."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_quick_answer_never_reads_receive() -> None:
    calls = 0

    async def receive() -> dict[str, str]:
        nonlocal calls
        calls += 1
        return {"type": "http.disconnect"}

    async def work() -> str:
        return "answer"

    assert await until_disconnect(receive, work, watch_after_s=3600) == "answer"
    assert calls == 0
    await asyncio.sleep(0)
    assert calls == 0  # the timer was cancelled with the work done


async def test_a_hang_up_cancels_the_work() -> None:
    cancelled = asyncio.Event()
    hang_up = asyncio.Event()

    async def receive() -> dict[str, str]:
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def work() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    task = asyncio.create_task(until_disconnect(receive, work, watch_after_s=0))
    await _turns()
    assert not task.done()  # watching, the client still there
    hang_up.set()
    with pytest.raises(ClientDisconnected):
        await task
    assert cancelled.is_set()


async def test_errors_and_outside_cancellation_pass_through() -> None:
    async def receive() -> dict[str, str]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def fails() -> str:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await until_disconnect(receive, fails, watch_after_s=0)

    async def waits() -> str:
        await asyncio.Event().wait()
        return "never"

    task = asyncio.create_task(until_disconnect(receive, waits, watch_after_s=0))
    await _turns()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
