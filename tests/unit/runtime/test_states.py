"""The model state machine: pure, with a fake clock; no process, no sleep."""
# mypy: disable-error-code="comparison-overlap, unreachable"
# (mypy narrows a property after ``assert x.state is A`` and then calls the next check, made
# after the object changed, impossible; these tests observe state that changes under them.)

from __future__ import annotations

import pytest

from app.errors import CircuitOpen
from app.resilience.breaker import CircuitBreaker
from app.resilience.clock import FakeClock
from app.runtime.manager import runtime_breaker_config
from app.runtime.states import InvalidTransition, ModelState, ModelStateMachine
from app.settings import RuntimeSettings


def machine(clock: FakeClock, **breaker: object) -> tuple[ModelStateMachine, list[tuple[str, str]]]:
    cfg = runtime_breaker_config(RuntimeSettings.model_validate({"breaker": breaker}))
    m = ModelStateMachine("gemma", CircuitBreaker("model:gemma", cfg, clock), clock)
    seen: list[tuple[str, str]] = []
    m.add_listener(lambda _id, a, b, _r: seen.append((a, b)))
    return m, seen


def test_load_then_unload_publishes_every_transition() -> None:
    clock = FakeClock()
    m, seen = machine(clock)
    ticket = m.begin_load()
    assert m.state is ModelState.LOADING
    assert m.load_succeeded(ticket)
    assert m.state is ModelState.READY
    assert m.begin_unload("unload")
    m.unloaded("unload")
    assert seen == [
        ("installed", "loading"),
        ("loading", "ready"),
        ("ready", "unloading"),
        ("unloading", "installed"),
    ]


def test_a_load_finishing_after_an_unload_is_stale() -> None:
    m, _ = machine(FakeClock())
    ticket = m.begin_load()
    m.begin_unload("switch")
    m.unloaded("switch")
    assert not m.load_succeeded(ticket)  # dropped: the caller stops its worker
    assert m.state is ModelState.INSTALLED
    assert m.generation == 2


def test_cannot_load_twice() -> None:
    m, _ = machine(FakeClock())
    m.begin_load()
    with pytest.raises(InvalidTransition):
        m.begin_load()


def test_failed_loads_cool_down_then_allow_exactly_one_trial() -> None:
    clock = FakeClock()
    m, seen = machine(clock, min_calls=3, window_size=3, open_s=10.0)
    for _ in range(3):
        m.load_failed(m.begin_load(), "load_failed", "boom")
    assert m.state is ModelState.COOLDOWN
    assert m.cooldown_remaining() == pytest.approx(10.0)
    with pytest.raises(CircuitOpen) as info:
        m.begin_load()
    assert info.value.retry_after == pytest.approx(10.0)
    clock.advance(10.0)
    assert m.state is ModelState.HALF_OPEN
    trial = m.begin_load()
    assert m.state is ModelState.LOADING
    # The trial fails: open again, for twice as long.
    m.load_failed(trial, "load_failed", "boom")
    assert m.state is ModelState.COOLDOWN
    assert m.cooldown_remaining() == pytest.approx(20.0)
    clock.advance(20.0)
    assert m.load_succeeded(m.begin_load())
    assert m.state is ModelState.READY
    assert ("loading", "cooldown") in seen
    assert ("cooldown", "half_open") in seen


def test_checksum_mismatch_does_not_open_the_breaker() -> None:
    m, _ = machine(FakeClock(), min_calls=1)
    for _ in range(3):
        m.load_failed(m.begin_load(), "checksum_mismatch", "bad", counts=False)
    assert m.state is ModelState.ERROR
    assert m.error_code == "checksum_mismatch"


def test_a_crash_moves_ready_to_error_and_the_next_load_may_run() -> None:
    m, _ = machine(FakeClock())
    m.load_succeeded(m.begin_load())
    m.crashed("exit status -9")
    assert m.state is ModelState.ERROR
    assert m.error_code == "worker_crashed"
    assert m.load_succeeded(m.begin_load())
