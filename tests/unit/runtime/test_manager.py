"""The runtime manager over the fake worker: joined loads, breaker, verify, budget, keep-alive,
cancellation and shutdown. Real subprocesses; the manager's own clock is fake."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.errors import (
    ChecksumMismatch,
    CircuitOpen,
    MemoryBudgetExceeded,
    ModelLoadFailed,
    Overloaded,
)
from app.resilience.clock import FakeClock
from app.runtime.slot import current_request_id
from app.runtime.states import ModelState
from app.runtime.supervisor import WorkerError
from tests.unit.runtime.conftest import ManagerFactory, Spawns, pid_gone


async def _drain(manager, model: str = "m1", **kw):  # type: ignore[no-untyped-def]
    return [m async for m in manager.generate(model, {"messages": []}, **kw)]


async def _rest(gen: AsyncIterator[Any]) -> list[Any]:
    return [m async for m in gen]


async def test_three_concurrent_loads_spawn_one_worker_and_the_next_is_warm(
    make_manager: ManagerFactory, spawns: Spawns
) -> None:
    manager = make_manager()
    results = await asyncio.gather(*(manager.load("m1") for _ in range(3)))
    assert len(spawns.workers) == 1
    assert {kind for _, kind in results} == {"cold"}
    _, kind = await manager.load("m1")
    assert kind == "warm"
    text = manager.metrics.render().decode()
    assert 'keel_model_load_seconds_count{kind="cold",model="m1"} 1.0' in text
    assert 'keel_model_load_seconds_count{kind="warm",model="m1"} 1.0' in text
    subjects = [t.subject for t in manager.timeline.last()]
    assert "model:m1" in subjects


async def test_repeated_load_failures_cool_down_without_spawning(
    make_manager: ManagerFactory, spawns: Spawns
) -> None:
    clock = FakeClock()
    manager = make_manager(
        {"load": "crash"}, clock=clock, breaker={"min_calls": 3, "window_size": 3}
    )
    for _ in range(3):
        with pytest.raises(ModelLoadFailed):
            await manager.load("m1")
    assert manager.slot("m1").machine.state is ModelState.COOLDOWN
    with pytest.raises(CircuitOpen) as info:
        await manager.load("m1")
    assert info.value.retry_after is not None
    assert info.value.retry_after > 0
    assert len(spawns.workers) == 3  # none for the refused load
    assert "corrupted tensor data" in manager.snapshot()[0]["stderr_tail"]
    clock.advance(10.0)
    assert manager.slot("m1").machine.state is ModelState.HALF_OPEN
    first, second = await asyncio.gather(
        manager.load("m1"), manager.load("m1"), return_exceptions=True
    )
    assert isinstance(first, ModelLoadFailed)
    assert isinstance(second, ModelLoadFailed)
    assert len(spawns.workers) == 4  # exactly one trial


async def test_a_flipped_byte_is_refused_before_spawning(
    make_manager: ManagerFactory, spawns: Spawns
) -> None:
    manager = make_manager()
    path = manager.paths["m1"]  # type: ignore[attr-defined]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch):
        await manager.load("m1")
    assert spawns.workers == []
    assert manager.snapshot()[0]["error"]["code"] == "checksum_mismatch"


async def test_memory_budget_refuses_at_once_and_evicts_the_idle_lru(
    make_manager: ManagerFactory, spawns: Spawns
) -> None:
    tight = make_manager(memory_budget_mb=10)
    with pytest.raises(MemoryBudgetExceeded):
        await tight.load("m1")
    assert spawns.workers == []
    # Room for one: each needs ~160 MB by estimate at n_ctx 2048 before it loads; after
    # loading, the fake worker's real RSS (~15 MB) replaces the estimate.
    manager = make_manager(models=("a", "b"), memory_budget_mb=170)
    await manager.load("a")
    first = spawns.workers[-1]
    await manager.load("b")
    assert manager.slot("a").machine.state is ModelState.INSTALLED
    assert manager.slot("b").machine.state is ModelState.READY
    await first.exited.wait()
    assert pid_gone(first.pid)


async def test_keep_alive_unloads_an_idle_model(
    make_manager: ManagerFactory, spawns: Spawns
) -> None:
    clock = FakeClock()
    manager = make_manager(clock=clock, keep_alive_s=300)
    await _drain(manager)
    assert await manager.sweep() == []
    clock.advance(301)
    assert await manager.sweep() == ["m1"]
    assert pid_gone(spawns.workers[0].pid)
    # keep_alive 0 on the request: unloaded right after it.
    await _drain(manager, keep_alive_s=0)
    for _ in range(200):
        if manager.slot("m1").machine.state is ModelState.INSTALLED:
            break
        await asyncio.sleep(0.05)
    assert manager.slot("m1").machine.state is ModelState.INSTALLED


async def test_a_crash_moves_the_model_to_error_and_the_next_request_reloads(
    make_manager: ManagerFactory, spawns: Spawns
) -> None:
    manager = make_manager({"tokens": 50, "token_delay_s": 0.02})
    gen = manager.generate("m1", {"messages": []})
    await anext(gen)
    os.kill(spawns.workers[0].pid, 9)
    with pytest.raises(WorkerError, match="worker_crashed"):
        await _rest(gen)
    for _ in range(100):
        if manager.slot("m1").machine.state is ModelState.ERROR:
            break
        await asyncio.sleep(0.02)
    assert manager.slot("m1").machine.state is ModelState.ERROR
    assert "keel_worker_crashes_total" in manager.metrics.render().decode()
    events = await _drain(manager)
    assert events[-1]["ev"] == "done"
    assert len(spawns.workers) == 2


async def test_cancel_by_request_id_and_by_unload(make_manager: ManagerFactory) -> None:
    manager = make_manager({"tokens": 100_000, "token_delay_s": 0.01})
    current_request_id.set("req-1")
    gen = manager.generate("m1", {"messages": []})
    await anext(gen)
    assert manager.cancel_request("req-1")
    assert not manager.cancel_request("nobody")
    events = [m async for m in gen]
    assert events[-1]["finish_reason"] == "cancelled"
    assert events[-1]["cancelled"] == "user_stop"
    gen = manager.generate("m1", {"messages": []})
    await anext(gen)
    await manager.unload("m1")
    events = [m async for m in gen]
    assert events[-1]["cancelled"] == "model_switch"  # the provider turns it into an error
    text = manager.metrics.render().decode()
    assert 'keel_cancellations_total{reason="user_stop"} 1.0' in text
    assert 'keel_cancellations_total{reason="model_switch"} 1.0' in text


async def test_one_generation_at_a_time_then_overloaded(make_manager: ManagerFactory) -> None:
    manager = make_manager({"tokens": 100_000, "token_delay_s": 0.01}, max_queue_wait_s=0.2)
    gen = manager.generate("m1", {"messages": []})
    await anext(gen)
    with pytest.raises(Overloaded):
        await _drain(manager)
    await gen.aclose()


async def test_shutdown_leaves_no_child(make_manager: ManagerFactory, spawns: Spawns) -> None:
    manager = make_manager({"tokens": 100_000, "token_delay_s": 0.01}, models=("a", "b"))
    await manager.load("a")
    gen = manager.generate("b", {"messages": []})
    await anext(gen)
    await manager.shutdown()
    for worker in spawns.workers:
        assert worker.returncode is not None
        assert pid_gone(worker.pid)
    assert 'reason="shutdown"' in manager.metrics.render().decode()
    events = [m async for m in gen]
    assert events[-1]["cancelled"] == "shutdown"
