"""The pieces issue 14 added to the kit: the 429 throttle, the breaker's hold and probe hooks,
the active prober, and what the guard does with attempt timeouts, 429s and repeated failures."""

from __future__ import annotations

import asyncio
import random

import pytest

from app.resilience.breaker import BreakerState, CircuitBreaker
from app.resilience.clock import FakeClock
from app.resilience.config import BreakerConfig, GuardConfig, RetryConfig
from app.resilience.deadline import Deadline
from app.resilience.errors import CallNotPermitted, Throttled
from app.resilience.failures import UpstreamFailure
from app.resilience.guard import ProviderGuard
from app.resilience.throttle import Throttle


def state(breaker: CircuitBreaker) -> BreakerState:
    """The state, read through a call so that mypy does not narrow it between awaits."""
    return breaker.state


SMALL = BreakerConfig(window_size=4, min_calls=4, open_s=10, open_max_s=40)


# -- throttle -----------------------------------------------------------------------------


def test_throttle_pauses_for_retry_after_capped_and_spreads_waiters() -> None:
    clock = FakeClock()
    throttle = Throttle(clock, max_pause_s=5, spread_cap_s=2, rng=random.Random(1))
    assert throttle.remaining() == 0
    assert throttle.wait(room=10) == 0
    assert throttle.note(1.0) == 1.0
    assert throttle.remaining() == 1.0
    waits = [throttle.wait(room=10) for _ in range(50)]
    assert all(w is not None and 1.0 <= w <= 2.0 for w in waits)
    assert len(set(waits)) > 10  # spread, not one wave
    assert throttle.wait(room=0.5) is None  # the pause does not fit the caller's deadline
    assert throttle.note(600) == 5  # capped
    assert throttle.note(None) == 1.0  # no Retry-After: a default pause, never shortening one
    assert throttle.remaining() == 5
    clock.advance(5)
    assert throttle.remaining() == 0
    assert throttle.snapshot() == {"paused_for_s": 0, "pauses": 3}


# -- breaker hooks ------------------------------------------------------------------------


def open_breaker(clock: FakeClock) -> CircuitBreaker:
    breaker = CircuitBreaker("p", SMALL, clock)
    for _ in range(4):
        breaker.record_failure(breaker.acquire(), 0.1)
    assert state(breaker) is BreakerState.OPEN
    return breaker


def test_a_probe_success_moves_open_to_half_open_at_once() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(1)
    assert breaker.probe_succeeded()
    assert state(breaker) is BreakerState.HALF_OPEN
    breaker.record_success(breaker.acquire(), 0.1)
    assert state(breaker) is BreakerState.CLOSED
    assert not breaker.probe_succeeded()  # only an open breaker moves
    breaker.force_open()
    assert not breaker.probe_succeeded()
    assert state(breaker) is BreakerState.FORCED_OPEN


def test_hold_open_defers_the_timed_trial_but_never_past_open_max() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    breaker.hold_open(25)
    clock.advance(20)
    assert state(breaker) is BreakerState.OPEN  # open_s (10) passed, the hold has not
    with pytest.raises(CallNotPermitted) as info:
        breaker.acquire()
    assert info.value.retry_after == pytest.approx(5)
    breaker.hold_open(1000)  # capped at opened + open_max_s = 40
    clock.advance(20)
    assert state(breaker) is BreakerState.HALF_OPEN


# -- guard: prober ------------------------------------------------------------------------


def make_guard(clock: FakeClock, probe_ok: list[bool], **config: object) -> ProviderGuard:
    async def probe(_: Deadline) -> None:
        if not probe_ok[0]:
            raise UpstreamFailure("connect")

    defaults: dict[str, object] = {
        "breaker": SMALL,
        "retry": RetryConfig(max_attempts=1),
        "probe_interval_s": 1.0,
    }
    cfg = GuardConfig(**{**defaults, **config})  # type: ignore[arg-type]
    return ProviderGuard("p", cfg, clock=clock, rng=random.Random(1), prober=probe)


async def fail(_: Deadline) -> str:
    raise UpstreamFailure(status_code=503)


async def ok(_: Deadline) -> str:
    return "ok"


async def test_failed_probes_keep_it_open_without_growing_it_and_one_success_reopens_the_way() -> (
    None
):
    clock = FakeClock()
    probe_ok = [False]
    guard = make_guard(clock, probe_ok)
    for _ in range(4):
        with pytest.raises(UpstreamFailure):
            await guard.call(fail, Deadline.after(30, clock))
    assert state(guard.breaker) is BreakerState.OPEN
    assert guard.prober is not None
    await clock.sleep(25.5)  # well past open_s: the probes hold it open, one per second
    assert state(guard.breaker) is BreakerState.OPEN
    assert guard.prober.probes == 25
    snap = guard.breaker.snapshot()
    assert (snap.open_duration_s, snap.consecutive_reopens) == (10, 0)  # not doubled
    probe_ok[0] = True
    await clock.sleep(1.0)
    assert state(guard.breaker) is BreakerState.HALF_OPEN
    assert await guard.call(ok, Deadline.after(30, clock)) == ("ok", 1)
    assert state(guard.breaker) is BreakerState.CLOSED
    assert not guard.prober.running
    await guard.aclose()


async def test_after_a_failed_trial_the_next_probe_waits_the_doubled_open_time() -> None:
    clock = FakeClock()
    probe_ok = [True]  # GET /models answers, chat does not
    guard = make_guard(clock, probe_ok)
    for _ in range(4):
        with pytest.raises(UpstreamFailure):
            await guard.call(fail, Deadline.after(30, clock))
    await clock.sleep(1.5)
    assert state(guard.breaker) is BreakerState.HALF_OPEN
    with pytest.raises(UpstreamFailure):
        await guard.call(fail, Deadline.after(30, clock))  # the trial fails: open for 20 s
    assert guard.prober is not None
    probes = guard.prober.probes
    await clock.sleep(19.0)
    assert state(guard.breaker) is BreakerState.OPEN
    assert guard.prober.probes == probes  # no probe (and no trial) meanwhile
    await clock.sleep(1.5)
    assert state(guard.breaker) is BreakerState.HALF_OPEN
    await guard.aclose()


async def test_aclose_stops_the_prober() -> None:
    clock = FakeClock()
    guard = make_guard(clock, [False])
    for _ in range(4):
        with pytest.raises(UpstreamFailure):
            await guard.call(fail, Deadline.after(30, clock))
    assert guard.prober is not None
    assert guard.prober.running
    await guard.aclose()
    assert not guard.prober.running


# -- guard: attempts ----------------------------------------------------------------------


async def test_a_hung_attempt_is_cut_at_its_timeout_and_retried() -> None:
    clock = FakeClock()
    guard = make_guard(clock, [True], attempt_timeout_s=2.0, retry=RetryConfig(max_attempts=3))
    calls: list[float] = []

    async def hangs_once(d: Deadline) -> str:
        calls.append(clock.now())
        assert d.remaining() <= 2.0  # the op sees the attempt's deadline
        if len(calls) == 1:
            await clock.sleep(100)
        return "ok"

    assert await guard.call(hangs_once, Deadline.after(30, clock)) == ("ok", 2)
    assert calls[0] == 0
    assert 2.0 <= calls[1] <= 2.2
    snap = guard.breaker.snapshot()
    assert (snap.calls, snap.failed_calls) == (2, 1)


async def test_with_a_fallback_timeouts_and_429s_are_not_retried_here() -> None:
    clock = FakeClock()
    guard = make_guard(clock, [True], attempt_timeout_s=1.0, retry=RetryConfig(max_attempts=3))
    calls = 0

    async def hangs(_: Deadline) -> str:
        nonlocal calls
        calls += 1
        await clock.sleep(100)
        return "late"

    with pytest.raises(UpstreamFailure) as info:
        await guard.call(hangs, Deadline.after(30, clock), fallback=True)
    assert (info.value.reason, calls) == ("timeout", 1)

    async def limited(_: Deadline) -> str:
        raise UpstreamFailure(status_code=429, retry_after=3)

    with pytest.raises(UpstreamFailure):
        await guard.call(limited, Deadline.after(30, clock), fallback=True)
    # While the provider's pause lasts, new work with a fallback is refused at once ...
    with pytest.raises(Throttled) as throttled:
        await guard.call(ok, Deadline.after(30, clock), fallback=True)
    assert throttled.value.retry_after == pytest.approx(3)
    # ... and work without one waits the pause out (virtual time moves) and then succeeds.
    started = clock.now()
    assert await guard.call(ok, Deadline.after(30, clock)) == ("ok", 1)
    assert 3 <= clock.now() - started <= 6
    assert guard.breaker.snapshot().failed_calls == 1  # the timeout; the 429 is no failure


async def test_the_retries_of_one_request_put_one_failure_in_the_window() -> None:
    clock = FakeClock()
    big = BreakerConfig(window_size=100, min_calls=100)
    guard = make_guard(clock, [True], breaker=big, retry=RetryConfig(max_attempts=3))
    with pytest.raises(UpstreamFailure):
        await guard.call(fail, Deadline.after(30, clock))
    snap = guard.breaker.snapshot()
    assert (snap.calls, snap.failed_calls) == (1, 1)  # three attempts, one failure counted
    outcomes: list[Exception | str] = [UpstreamFailure(status_code=503), "ok"]

    async def flaky(_: Deadline) -> str:
        out = outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return out

    assert await guard.call(flaky, Deadline.after(30, clock)) == ("ok", 2)
    snap = guard.breaker.snapshot()
    assert (snap.calls, snap.failed_calls) == (3, 2)  # the retry's success still counts


async def test_a_cancelled_hedge_loser_returns_its_permit() -> None:
    clock = FakeClock()
    guard = make_guard(clock, [True])

    async def slow(_: Deadline) -> str:
        await clock.sleep(50)
        return "late"

    task = asyncio.create_task(guard.call(slow, Deadline.after(100, clock)))
    await clock.settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert guard.breaker.snapshot().calls == 0
