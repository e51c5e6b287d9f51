"""FakeClock and Deadline: virtual time, bounded awaits, derived deadlines."""
# mypy: disable-error-code="comparison-overlap, unreachable"
# (mypy narrows a property after ``assert x.state is A`` and then calls the next check, made
# after the object changed, impossible; these tests observe state that changes under them.)

from __future__ import annotations

import asyncio

import pytest

from app.resilience.clock import Clock, FakeClock, MonotonicClock
from app.resilience.deadline import Deadline
from app.resilience.errors import DeadlinePassed


async def test_fake_sleep_advances_virtual_time_without_sleeping() -> None:
    clock = FakeClock()
    # Bounded, not timed: a real hour-long sleep would hit this long before it ended.
    await asyncio.wait_for(clock.sleep(3600), timeout=60)
    assert clock.now() == 3600


async def test_concurrent_sleepers_wake_in_time_order() -> None:
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    await asyncio.gather(sleeper("c", 3), sleeper("a", 1), sleeper("b", 2))
    assert woke == [("a", 1), ("b", 2), ("c", 3)]


async def test_chained_sleeps_after_an_event_keep_virtual_order() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    woke: list[tuple[str, float]] = []

    async def first() -> None:
        await clock.sleep(5)
        event.set()

    async def follower() -> None:
        await event.wait()
        await clock.sleep(1)
        woke.append(("follower", clock.now()))

    async def late() -> None:
        await clock.sleep(10)
        woke.append(("late", clock.now()))

    await asyncio.gather(first(), follower(), late())
    assert woke == [("follower", 6), ("late", 10)]


async def test_manual_advance_fires_due_sleepers() -> None:
    clock = FakeClock(auto_advance=False)
    task = asyncio.create_task(clock.sleep(2))
    await clock.settle()
    clock.advance(1)
    await clock.settle()
    assert not task.done()
    clock.advance(1)
    await clock.settle()
    assert task.done()
    assert clock.pending == 0
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


async def test_cancelled_sleeper_leaves_no_timer() -> None:
    clock = FakeClock(auto_advance=False)
    task = asyncio.create_task(clock.sleep(2))
    await clock.settle()
    assert clock.pending == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.pending == 0


def test_clocks_satisfy_the_protocol() -> None:
    assert isinstance(FakeClock(), Clock)
    assert isinstance(MonotonicClock(), Clock)


def test_deadline_remaining_expired_and_derive() -> None:
    clock = FakeClock(start=100)
    d = Deadline.after(10, clock)
    assert d.remaining() == 10
    assert not d.expired
    assert d.derive(3).remaining() == 3
    assert d.derive(30).remaining() == 10
    assert d.derive(None) is d
    clock.advance(12)
    assert d.remaining() == 0
    assert d.expired
    assert "remaining" in repr(d)


async def test_run_returns_the_result_within_the_deadline() -> None:
    clock = FakeClock()
    d = Deadline.after(5, clock)

    async def work() -> str:
        await clock.sleep(4)
        return "done"

    assert await d.run(work()) == "done"
    assert clock.now() == 4


async def test_run_cancels_work_at_the_deadline() -> None:
    clock = FakeClock()
    d = Deadline.after(5, clock)
    cancelled = False

    async def work() -> None:
        nonlocal cancelled
        try:
            await clock.sleep(60)
        except asyncio.CancelledError:
            cancelled = True
            raise

    with pytest.raises(DeadlinePassed):
        await d.run(work())
    assert cancelled
    assert clock.now() == 5
    assert clock.pending == 0


async def test_work_waiting_on_something_else_is_cut_at_the_deadline() -> None:
    clock = FakeClock()
    d = Deadline.after(2, clock)
    never = asyncio.Event()

    async def driver() -> None:
        await clock.sleep(10)

    drive = asyncio.create_task(driver())
    with pytest.raises(DeadlinePassed):
        async with d.bound():
            await never.wait()
    assert clock.now() == 2
    await drive


async def test_expired_deadline_does_not_start_the_work() -> None:
    clock = FakeClock()
    d = Deadline.after(0, clock)
    started = False

    async def work() -> None:
        nonlocal started
        started = True

    with pytest.raises(DeadlinePassed):
        await d.run(work())
    assert not started
    with pytest.raises(DeadlinePassed):
        async with d.bound():
            pass


async def test_work_own_timeout_error_is_not_translated() -> None:
    clock = FakeClock()
    d = Deadline.after(5, clock)

    async def work() -> None:
        raise TimeoutError("upstream read timeout")

    with pytest.raises(TimeoutError, match="upstream read timeout"):
        await d.run(work())


async def test_outside_cancellation_passes_through() -> None:
    clock = FakeClock(auto_advance=False)
    d = Deadline.after(5, clock)
    task = asyncio.create_task(d.run(clock.sleep(60)))
    await clock.settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_nested_deadlines_the_inner_one_fires_first() -> None:
    clock = FakeClock()
    outer = Deadline.after(10, clock)
    inner = outer.derive(2)
    with pytest.raises(DeadlinePassed):
        async with outer.bound(), inner.bound():
            await clock.sleep(60)
    assert clock.now() == 2
    assert not outer.expired


async def test_real_clock_deadline_fires() -> None:
    d = Deadline.after(0.01)
    with pytest.raises(DeadlinePassed):
        await d.run(asyncio.sleep(1))
    assert await Deadline.after(1).run(asyncio.sleep(0, "ok")) == "ok"
