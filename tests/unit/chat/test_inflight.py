"""The in-flight registry behind ``POST /v1/requests/{id}/cancel``: bounded, no leaks, a cancel
that arrives between two phases is not lost, a settled answer cannot be cancelled."""

from __future__ import annotations

import asyncio

import pytest

from app.chat.inflight import InFlightRequests
from app.errors import RequestCancelled
from app.observability.metrics import Metrics


def _stops(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("keel_cancellations_total", {"reason": "user_stop"})
    return value or 0.0


def test_register_cancel_remove() -> None:
    metrics = Metrics()
    registry = InFlightRequests(metrics)
    first, twin = registry.register("r1"), registry.register("r1")
    assert len(registry) == 2
    assert registry.cancel("r1")  # both requests sent with this id are stopped
    assert first.reason == twin.reason == "user_stop"
    assert not registry.cancel("r1")  # already stopped
    assert _stops(metrics) == 2
    registry.remove(first)
    registry.remove(twin)
    registry.remove(twin)  # twice is harmless
    assert len(registry) == 0
    assert not registry.cancel("r1")
    assert not registry.cancel("never-seen")


def test_bounded_and_ids_required() -> None:
    registry = InFlightRequests(Metrics(), limit=2)
    handles = [registry.register(f"r{i}") for i in range(3)]
    registry.register("")
    assert len(registry) == 2
    assert not registry.cancel("r2")  # past the bound: runs, but not cancellable by id
    for handle in handles:
        registry.remove(handle)
    assert len(registry) == 0


def test_a_cancel_before_binding_stops_at_bind_and_settled_is_too_late() -> None:
    registry = InFlightRequests(Metrics())
    handle = registry.register("r")
    assert registry.cancel("r")
    stopped: list[bool] = []
    handle.bind(lambda: stopped.append(True))
    assert stopped == [True]
    done = registry.register("d")
    done.settle()
    assert not registry.cancel("d")


async def test_cancels_task_turns_the_cancel_into_request_cancelled() -> None:
    registry = InFlightRequests(Metrics())
    handle = registry.register("r")
    started = asyncio.Event()

    async def work() -> None:
        with handle.cancels_task():
            started.set()
            await asyncio.Event().wait()  # an upstream that never answers

    task = asyncio.create_task(work())
    await started.wait()
    assert registry.cancel("r")
    with pytest.raises(RequestCancelled):
        await task
    assert task.cancelling() == 0
    with pytest.raises(RequestCancelled), handle.cancels_task():  # already cancelled
        pass


async def test_cancels_task_lets_other_cancellations_through() -> None:
    handle = InFlightRequests(Metrics()).register("r")
    started = asyncio.Event()

    async def work() -> None:
        with handle.cancels_task():
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(work())
    await started.wait()
    task.cancel()  # a shutdown, say
    with pytest.raises(asyncio.CancelledError):
        await task
    assert handle.reason is None
