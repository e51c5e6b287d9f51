"""Concurrency limiter: bounded queue wait, FIFO hand-off, exact counts under cancellation."""

from __future__ import annotations

import asyncio

import pytest

from app.resilience.clock import FakeClock
from app.resilience.deadline import Deadline
from app.resilience.errors import QueueFull
from app.resilience.limiter import ConcurrencyLimiter


async def hold(limiter: ConcurrencyLimiter, clock: FakeClock, seconds: float) -> None:
    async with limiter.slot():
        await clock.sleep(seconds)


async def test_excess_callers_wait_at_most_the_queue_wait_then_overloaded() -> None:
    clock = FakeClock()
    limiter = ConcurrencyLimiter(2, max_queue_wait_s=1.5, clock=clock, name="cloud")
    holders = [asyncio.create_task(hold(limiter, clock, 100)) for _ in range(2)]
    await clock.settle()
    assert limiter.in_use == 2

    started = clock.now()
    with pytest.raises(QueueFull) as info:
        async with limiter.slot():
            pytest.fail("must not get a slot")
    assert clock.now() - started == 1.5
    assert info.value.retry_after == 1.5
    assert "cloud" in info.value.message
    assert limiter.queued == 0
    assert limiter.in_use == 2
    for t in holders:
        t.cancel()
    await asyncio.gather(*holders, return_exceptions=True)
    assert limiter.in_use == 0


async def test_waiters_are_served_first_come_first_served() -> None:
    clock = FakeClock()
    limiter = ConcurrencyLimiter(1, max_queue_wait_s=10, clock=clock)
    order: list[int] = []

    async def worker(i: int) -> None:
        async with limiter.slot():
            order.append(i)
            await clock.sleep(1)

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(worker(i)))
        await clock.settle()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert clock.now() == 5
    assert (limiter.in_use, limiter.queued) == (0, 0)


async def test_a_newcomer_does_not_overtake_the_queue() -> None:
    clock = FakeClock(auto_advance=False)
    limiter = ConcurrencyLimiter(1, max_queue_wait_s=10, clock=clock)
    order: list[str] = []
    release = asyncio.Event()

    async def worker(name: str) -> None:
        async with limiter.slot():
            order.append(name)
            await release.wait()

    first = asyncio.create_task(worker("first"))
    await clock.settle()
    queued = asyncio.create_task(worker("queued"))
    await clock.settle()
    release.set()  # first leaves: the slot goes straight to "queued" ...
    newcomer = asyncio.create_task(worker("newcomer"))  # ... not to this one
    await asyncio.gather(first, queued, newcomer)
    assert order == ["first", "queued", "newcomer"]


async def test_queue_length_is_bounded_and_overflow_is_rejected_at_once() -> None:
    clock = FakeClock(auto_advance=False)
    limiter = ConcurrencyLimiter(1, max_queue_wait_s=5, clock=clock, max_queue=2)
    assert ConcurrencyLimiter(3, 1.0, clock).max_queue == 12
    tasks = [asyncio.create_task(hold(limiter, clock, 100)) for _ in range(3)]
    await clock.settle()
    assert (limiter.in_use, limiter.queued) == (1, 2)
    with pytest.raises(QueueFull, match="queue full"):
        async with limiter.slot():
            pass
    assert clock.now() == 0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert (limiter.in_use, limiter.queued) == (0, 0)


async def test_the_deadline_shortens_the_queue_wait() -> None:
    clock = FakeClock()
    limiter = ConcurrencyLimiter(1, max_queue_wait_s=10, clock=clock)
    holder = asyncio.create_task(hold(limiter, clock, 100))
    await clock.settle()
    deadline = Deadline.after(0.25, clock)
    with pytest.raises(QueueFull):
        async with limiter.slot(deadline):
            pass
    assert clock.now() == 0.25
    expired = Deadline.after(0, clock)
    with pytest.raises(QueueFull, match="no queueing time"):
        async with limiter.slot(expired):
            pass
    holder.cancel()
    await asyncio.gather(holder, return_exceptions=True)


async def test_a_free_slot_is_taken_even_with_an_expired_deadline() -> None:
    # The limiter only bounds waiting; whether to start work is the caller's decision.
    limiter = ConcurrencyLimiter(1, max_queue_wait_s=1, clock=FakeClock())
    async with limiter.slot(Deadline.after(0, FakeClock())):
        assert limiter.in_use == 1


async def test_a_cancelled_waiter_leaks_nothing() -> None:
    clock = FakeClock(auto_advance=False)
    limiter = ConcurrencyLimiter(1, max_queue_wait_s=10, clock=clock)
    release = asyncio.Event()
    got: list[str] = []

    async def worker(name: str) -> None:
        async with limiter.slot():
            got.append(name)
            await release.wait()

    holder = asyncio.create_task(worker("holder"))
    await clock.settle()
    waiter = asyncio.create_task(worker("cancelled"))
    patient = asyncio.create_task(worker("patient"))
    await clock.settle()
    assert (limiter.in_use, limiter.queued) == (1, 2)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert (limiter.in_use, limiter.queued) == (1, 1)
    assert clock.pending == 1  # the cancelled waiter's timeout is gone too
    release.set()
    await asyncio.gather(holder, patient)
    assert got == ["holder", "patient"]
    assert (limiter.in_use, limiter.queued) == (0, 0)
    assert clock.pending == 0


async def test_a_waiter_cancelled_just_as_it_is_handed_a_slot_passes_it_on() -> None:
    clock = FakeClock(auto_advance=False)
    limiter = ConcurrencyLimiter(1, max_queue_wait_s=10, clock=clock)
    release = asyncio.Event()
    got: list[str] = []

    async def worker(name: str) -> None:
        async with limiter.slot():
            got.append(name)
            await release.wait()

    holder = asyncio.create_task(worker("holder"))
    await clock.settle()
    unlucky = asyncio.create_task(worker("unlucky"))
    next_in_line = asyncio.create_task(worker("next"))
    await clock.settle()
    release.set()
    while limiter.queued == 2:  # holder wakes, leaves, hands its slot to "unlucky" ...
        await asyncio.sleep(0)
    assert got == ["holder"]
    unlucky.cancel()  # ... which is cancelled before it ever runs
    await asyncio.gather(holder, unlucky, next_in_line, return_exceptions=True)
    assert got == ["holder", "next"]
    assert (limiter.in_use, limiter.queued) == (0, 0)


async def test_occupancy_is_reported_on_every_change() -> None:
    clock = FakeClock()
    seen: list[tuple[int, int]] = []
    limiter = ConcurrencyLimiter(1, 5.0, clock, on_change=lambda u, q: seen.append((u, q)))
    holder = asyncio.create_task(hold(limiter, clock, 2))
    await clock.settle()
    await hold(limiter, clock, 0)
    await holder
    assert seen == [(1, 0), (1, 1), (1, 0), (0, 0)]
    assert limiter.snapshot() == {
        "in_use": 0,
        "queued": 0,
        "max_concurrency": 1,
        "max_queue": 4,
        "max_queue_wait_s": 5.0,
    }
