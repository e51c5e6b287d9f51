"""Progress fan-out stays bounded; a slow reader loses old progress, never the outcome."""

from __future__ import annotations

import pytest

from app.errors import Overloaded
from app.lifecycle.progress import ProgressEvent, ProgressHub


def _event(phase: str, n: int, file: str = "f") -> ProgressEvent:
    return ProgressEvent("m", "job", phase, file, n, 100)


async def test_progress_coalesces_into_the_newest() -> None:
    hub = ProgressHub(queue_size=4)
    sub = hub.subscribe("m")
    for n in range(1000):
        hub.publish(_event("downloading", n % 100))
    hub.publish(_event("verifying", 100))
    hub.publish(_event("ready", 100))
    got = [await sub.get(0) for _ in range(3)]
    assert [(e.phase, e.bytes) for e in got if e] == [
        ("downloading", 99),
        ("verifying", 100),
        ("ready", 100),
    ]
    assert await sub.get(0) is None
    assert sub.dropped == 999


async def test_queue_is_bounded_and_keeps_terminal_events() -> None:
    hub = ProgressHub(queue_size=3)
    sub = hub.subscribe("m")
    for i in range(10):  # alternating files: nothing coalesces
        hub.publish(_event("downloading", i, file=f"f{i % 2}"))
    hub.publish(_event("failed", 0))
    items = []
    while (e := await sub.get(0)) is not None:
        items.append(e)
    assert len(items) == 3
    assert items[-1].phase == "failed"
    assert items[-1].percent == 0.0


async def test_ready_is_100_percent_and_subscribers_are_bounded() -> None:
    assert _event("ready", 0).percent == 100.0
    hub = ProgressHub(max_subscribers=2)
    a, b = hub.subscribe("m"), hub.subscribe("m")
    with pytest.raises(Overloaded):
        hub.subscribe("m")
    a.close()
    with hub.subscribe("m"):
        assert hub.subscribers("m") == 2
    b.close()
    assert hub.subscribers("m") == 0


async def test_get_waits_for_the_next_event() -> None:
    import asyncio

    hub = ProgressHub()
    sub = hub.subscribe("m")
    waiter = asyncio.create_task(sub.get(5))
    await asyncio.sleep(0)
    hub.publish(_event("queued", 0))
    event = await waiter
    assert event is not None
    assert event.phase == "queued"
