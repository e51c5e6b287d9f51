"""The supervisor against the scriptable fake worker: real processes, generous timeouts, no
assertion on durations."""

from __future__ import annotations

import pytest

from app.runtime.supervisor import WorkerError, WorkerProcess
from tests.unit.runtime.conftest import fake_argv, pid_gone

LOAD = {"path": "x"}


async def _loaded(**script: object) -> WorkerProcess:
    worker = await WorkerProcess.spawn(fake_argv(**script))
    await worker.load(LOAD, timeout_s=30, stall_s=15)
    return worker


async def test_load_generate_and_stop() -> None:
    worker = await _loaded(tokens=3)
    events = [m async for m in worker.generate("g1", {"messages": []}, token_stall_s=10)]
    assert [e["ev"] for e in events] == ["token", "token", "token", "done"]
    assert events[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3}
    await worker.stop(3)
    assert worker.returncode == 0
    assert pid_gone(worker.pid)


async def test_a_crash_on_load_keeps_the_stderr_tail() -> None:
    worker = await WorkerProcess.spawn(fake_argv(load="crash"))
    with pytest.raises(WorkerError) as info:
        await worker.load(LOAD, timeout_s=30, stall_s=15)
    assert info.value.code == "worker_crashed"
    assert "corrupted tensor data" in info.value.stderr
    await worker.stop(1)


async def test_a_load_failure_is_reported() -> None:
    worker = await WorkerProcess.spawn(fake_argv(load="fail"))
    with pytest.raises(WorkerError) as info:
        await worker.load(LOAD, timeout_s=30, stall_s=15)
    assert info.value.code == "load_failed"
    await worker.stop(1)


async def test_a_hanging_load_is_killed_by_the_stall_timeout() -> None:
    worker = await WorkerProcess.spawn(fake_argv(load="hang"))
    with pytest.raises(WorkerError) as info:
        await worker.load(LOAD, timeout_s=60, stall_s=1.0)
    assert info.value.code == "load_stall"
    await worker.kill()
    assert pid_gone(worker.pid)


async def test_progress_resets_the_stall_timer_but_not_the_whole_timeout() -> None:
    worker = await WorkerProcess.spawn(fake_argv(load="slow", load_s=3.0))
    phases: list[str] = []
    # Each progress event comes 50 ms apart: a 1 s stall timer never fires.
    await worker.load(LOAD, timeout_s=60, stall_s=1.0, on_progress=phases.append)
    assert "reading" in phases
    await worker.stop(3)
    worker = await WorkerProcess.spawn(fake_argv(load="slow", load_s=30.0))
    with pytest.raises(WorkerError) as info:
        await worker.load(LOAD, timeout_s=1.0, stall_s=10)
    assert info.value.code == "load_timeout"
    await worker.kill()


async def test_a_crash_mid_stream_ends_the_generation_with_an_error() -> None:
    worker = await _loaded(tokens=10, crash_after=2)
    got: list[dict[str, object]] = []

    async def consume() -> None:
        async for msg in worker.generate("g1", {}, token_stall_s=10):
            got.append(msg)

    with pytest.raises(WorkerError) as info:
        await consume()
    assert info.value.code == "worker_crashed"
    assert len(got) == 2
    await worker.exited.wait()
    assert worker.returncode == 9


async def test_a_stalled_generation_times_out() -> None:
    worker = await _loaded(tokens=10, stall_after=1)
    with pytest.raises(WorkerError) as info:
        async for _ in worker.generate("g1", {}, token_stall_s=1.0):
            pass
    assert info.value.code == "token_stall"
    await worker.kill()


async def test_closing_a_generation_cancels_it_and_the_worker_stays_usable() -> None:
    worker = await _loaded(tokens=1000, token_delay_s=0.01)
    gen = worker.generate("g1", {}, token_stall_s=10)
    await anext(gen)
    await gen.aclose()  # sends cancel, drains to the cancelled ``done``
    assert worker.alive
    events = [m async for m in worker.generate("g2", {}, token_stall_s=10)]
    assert events[-1]["ev"] == "done"
    await worker.stop(3)


async def test_a_worker_that_ignores_cancel_is_killed() -> None:
    worker = await _loaded(tokens=100_000, token_delay_s=0.01, ignore_cancel=True)
    gen = worker.generate("g1", {}, token_stall_s=1.0)
    await anext(gen)
    await gen.aclose()
    assert not worker.alive
    assert pid_gone(worker.pid)


async def test_a_worker_deaf_to_eof_is_terminated() -> None:
    worker = await _loaded(exit_on_eof=False)
    await worker.stop(0.5)  # no answer to shutdown/EOF: SIGTERM reaps it
    assert worker.returncode is not None
    assert pid_gone(worker.pid)
