"""hedge.race on the fake clock: when the second side starts, who wins, what is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from app.chat.hedge import RaceResult, race
from app.resilience.clock import FakeClock


class Side:
    def __init__(self, clock: FakeClock, delay: float, result: str) -> None:
        self.clock, self.delay, self.result = clock, delay, result
        self.started: float | None = None
        self.cancelled = False

    def __call__(self) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            self.started = self.clock.now()
            try:
                await self.clock.sleep(self.delay)
            except asyncio.CancelledError:
                self.cancelled = True
                raise
            if self.result == "raise":
                raise RuntimeError("caller's fault")
            return self.result

        return run


async def go(
    clock: FakeClock, a: Side, b: Side, *, allow: bool = True
) -> tuple[RaceResult[str], list[str], list[str]]:
    events: list[str] = []
    discarded: list[str] = []

    async def discard(r: str) -> None:
        discarded.append(r)

    out = await race(
        a(),
        b(),
        1.0,
        clock,
        may_hedge=lambda: allow,
        succeeded=lambda r: r.startswith("ok"),
        discard=discard,
        on_hedge=events.append,
    )
    return out, events, discarded


async def test_a_fast_first_side_means_no_hedge() -> None:
    clock = FakeClock()
    a, b = Side(clock, 0.5, "ok-a"), Side(clock, 0.1, "ok-b")
    out, events, _ = await go(clock, a, b)
    assert (out.results, out.hedged, out.winner) == (["ok-a"], False, 0)
    assert b.started is None
    assert events == []


async def test_a_slow_first_side_is_hedged_and_the_loser_cancelled() -> None:
    clock = FakeClock()
    a, b = Side(clock, 30, "ok-a"), Side(clock, 0.2, "ok-b")
    out, events, _ = await go(clock, a, b)
    assert (out.results, out.hedged, out.winner) == (["ok-b"], True, 1)
    assert b.started == 1.0
    assert a.cancelled
    assert events == ["started", "won"]
    assert clock.now() == pytest.approx(1.2)


async def test_the_first_side_can_still_win_after_the_hedge_started() -> None:
    clock = FakeClock()
    a, b = Side(clock, 1.5, "ok-a"), Side(clock, 5, "ok-b")
    out, events, _ = await go(clock, a, b)
    assert out.winner == 0
    assert b.cancelled
    assert events == ["started", "lost"]


async def test_no_budget_no_hedge() -> None:
    clock = FakeClock()
    a, b = Side(clock, 3, "ok-a"), Side(clock, 0.1, "ok-b")
    out, events, _ = await go(clock, a, b, allow=False)
    assert (out.results, out.hedged) == (["ok-a"], False)
    assert b.started is None
    assert events == []


async def test_a_failed_side_waits_for_the_other_and_both_failures_are_reported() -> None:
    clock = FakeClock()
    a, b = Side(clock, 2, "fail-a"), Side(clock, 3, "fail-b")
    out, _, _ = await go(clock, a, b)
    assert (out.results, out.winner) == (["fail-a", "fail-b"], None)


async def test_an_exception_cancels_the_other_side() -> None:
    clock = FakeClock()
    a, b = Side(clock, 2, "raise"), Side(clock, 30, "ok-b")
    with pytest.raises(RuntimeError):
        await go(clock, a, b)
    assert b.cancelled
