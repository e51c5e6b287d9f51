"""A hedged pair of attempts: start the second target when the first is slow, keep the winner.

Tail latency from one slow or hung upstream is the commonest way a request with a healthy
fallback still ends late. Envoy's and Finagle's answer is a hedge: when the first target has not
produced a byte after ``delay`` seconds, start the second as well and take whichever answers
first, cancelling the other at once (its connection closes, so the upstream stops working for
nobody). Bounded: one hedge per request, and only if ``may_hedge()`` says yes (the caller spends
from the first provider's retry budget, so hedges cannot double the load during an incident).

``race`` is generic: each side is a coroutine factory returning a result that is either a
success (``succeeded(result)``) or a failure value to fall back from; an exception from a side
cancels the other and propagates. A success that finished together with the winner is handed
to ``discard`` (an opened stream must be closed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from app.resilience.clock import Clock

R = TypeVar("R")


@dataclass
class RaceResult(Generic[R]):
    results: list[R] = field(default_factory=list)  # in completion order, the winner first
    hedged: bool = False  # the second side was started
    winner: int | None = None  # 0 or 1: which side succeeded first, if any


async def race(
    first: Callable[[], Awaitable[R]],
    second: Callable[[], Awaitable[R]],
    delay: float,
    clock: Clock,
    *,
    may_hedge: Callable[[], bool],
    succeeded: Callable[[R], bool],
    discard: Callable[[R], Awaitable[None]],
    on_hedge: Callable[[str], None] = lambda outcome: None,
) -> RaceResult[R]:
    """Run ``first``; after ``delay`` without its result, ``second`` too (at most once)."""
    out: RaceResult[R] = RaceResult()
    tasks: dict[asyncio.Task[R], int] = {asyncio.ensure_future(first()): 0}
    try:
        timer = asyncio.ensure_future(clock.sleep(delay))
        try:
            await asyncio.wait([*tasks, timer], return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        primary = next(iter(tasks))
        if not primary.done() and may_hedge():
            tasks[asyncio.ensure_future(second())] = 1
            out.hedged = True
            on_hedge("started")
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                result = task.result()  # an exception here cancels the rest (finally below)
                if out.winner is None and succeeded(result):
                    out.winner = tasks[task]
                    out.results.insert(0, result)
                elif succeeded(result):
                    await discard(result)  # both answered in the same instant
                else:
                    out.results.append(result)
            if out.winner is not None:
                break
        if out.hedged:
            on_hedge("won" if out.winner == 1 else "lost")
        return out
    finally:
        losers = [t for t in tasks if not t.done()]
        for task in losers:
            task.cancel()
        for late in await asyncio.gather(*losers, return_exceptions=True):
            if not isinstance(late, BaseException) and succeeded(late):
                await discard(late)  # it finished before it saw the cancellation
