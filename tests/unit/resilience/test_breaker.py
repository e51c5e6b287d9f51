"""Circuit breaker: resilience4j semantics with a fake clock, no sleeping."""
# mypy: disable-error-code="comparison-overlap, unreachable"
# (mypy narrows a property after ``assert x.state is A`` and then calls the next check, made
# after the object changed, impossible; these tests observe state that changes under them.)

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.resilience.breaker import BreakerState, CircuitBreaker, Permit
from app.resilience.clock import FakeClock
from app.resilience.config import BreakerConfig
from app.resilience.errors import CallNotPermitted

WINDOWS = pytest.mark.parametrize("window", ["count", "time"])


def make(
    window: str = "count", clock: FakeClock | None = None, **overrides: Any
) -> tuple[CircuitBreaker, FakeClock, list[tuple[str, str, str, str]]]:
    values: dict[str, Any] = {
        "window": window,
        "window_size": 10,
        "min_calls": 10,
        "failure_rate": 0.5,
        "slow_call_s": 1.0,
        "slow_call_rate": 1.0,
        "open_s": 10.0,
        "open_max_s": 35.0,
        "half_open_permits": 1,
    }
    values.update(overrides)
    clock = clock or FakeClock(auto_advance=False)
    events: list[tuple[str, str, str, str]] = []
    breaker = CircuitBreaker(
        "cloud",
        BreakerConfig(**values),
        clock,
        listeners=(lambda *e: events.append(e),),
    )
    return breaker, clock, events


def succeed(b: CircuitBreaker, n: int = 1, duration: float = 0.1) -> None:
    for _ in range(n):
        b.record_success(b.acquire(), duration)


def fail(b: CircuitBreaker, n: int = 1, duration: float = 0.1) -> None:
    for _ in range(n):
        b.record_failure(b.acquire(), duration)


def trip(b: CircuitBreaker) -> None:
    for _ in range(b.config.window_size):
        fail(b)
        if b.state is BreakerState.OPEN:
            return
    raise AssertionError("breaker did not open")


@WINDOWS
def test_stays_closed_below_min_calls(window: str) -> None:
    b, _, events = make(window, min_calls=5)
    fail(b, 4)
    assert b.state is BreakerState.CLOSED
    assert b.snapshot().failure_rate == 1.0
    fail(b)
    assert b.state is BreakerState.OPEN
    assert events == [("cloud", "closed", "open", events[0][3])]
    assert "failure rate 5/5" in events[0][3]


@WINDOWS
def test_opens_exactly_at_the_failure_rate_threshold(window: str) -> None:
    b, _, _ = make(window)
    succeed(b, 5)
    fail(b, 4)
    assert b.state is BreakerState.CLOSED  # 9 calls < min_calls
    succeed(b)
    assert b.state is BreakerState.CLOSED  # 4/10 < 50 %
    fail(b)
    # count window: the oldest success slid out -> 5/10; time window: 5/11 < 50 %
    if window == "count":
        assert b.state is BreakerState.OPEN
    else:
        assert b.state is BreakerState.CLOSED
        fail(b)
        assert b.state is BreakerState.OPEN  # 6/12


@WINDOWS
def test_opens_at_the_slow_call_rate_threshold(window: str) -> None:
    b, _, events = make(window, slow_call_rate=0.5, failure_rate=1.0)
    succeed(b, 5, duration=1.0)  # exactly the threshold is not slow
    succeed(b, 4, duration=1.5)
    assert b.state is BreakerState.CLOSED
    fail(b, 1, duration=2.0)  # slow and failed: counts as slow too
    assert b.state is BreakerState.OPEN
    assert "slow-call rate 5/10" in events[-1][3]


def test_count_window_forgets_old_calls() -> None:
    b, _, _ = make("count")
    fail(b, 4)
    succeed(b, 10)  # the failures slid out
    fail(b, 4)
    assert b.state is BreakerState.CLOSED
    assert b.snapshot().calls == 10
    assert b.snapshot().failed_calls == 4


def test_time_window_forgets_calls_older_than_the_window() -> None:
    b, clock, _ = make("time", window_size=10, min_calls=5)
    fail(b, 4)
    clock.advance(10)  # those four are now outside the last 10 s
    fail(b, 4)
    assert b.state is BreakerState.CLOSED
    assert b.snapshot().calls == 4
    clock.advance(9.5)
    fail(b)  # 4 (9.5 s old, still in the window) + 1
    assert b.state is BreakerState.OPEN


def test_time_window_min_calls_can_exceed_window_size() -> None:
    b, _, _ = make("time", window_size=2, min_calls=20)
    fail(b, 19)
    assert b.state is BreakerState.CLOSED
    fail(b)
    assert b.state is BreakerState.OPEN


def test_count_window_min_calls_is_capped_by_window_size() -> None:
    b, _, _ = make("count", window_size=4, min_calls=100)
    fail(b, 4)
    assert b.state is BreakerState.OPEN


def test_rejects_while_open_with_the_remaining_time() -> None:
    b, clock, _ = make()
    trip(b)
    clock.advance(3.5)
    with pytest.raises(CallNotPermitted) as info:
        b.acquire()
    assert info.value.retry_after == pytest.approx(6.5)
    snap = b.snapshot()
    assert snap.state == "open"
    assert snap.seconds_until_half_open == pytest.approx(6.5)
    assert snap.open_duration_s == 10


def test_half_open_after_the_open_duration() -> None:
    b, clock, events = make()
    trip(b)
    clock.advance(9.999)
    assert b.state is BreakerState.OPEN
    clock.advance(0.001)
    assert b.state is BreakerState.HALF_OPEN
    assert events[-1][1:3] == ("open", "half_open")
    assert events[-1][3] == "open duration elapsed"
    assert b.snapshot().trial_permits_available == 1


@pytest.mark.parametrize("permits", [1, 3])
async def test_concurrent_callers_in_half_open_get_exactly_the_permits(permits: int) -> None:
    clock = FakeClock()
    b, _, _ = make(half_open_permits=permits, clock=clock)
    trip(b)
    clock.advance(10)
    passed = 0
    rejected: list[float | None] = []

    async def caller() -> None:
        nonlocal passed
        await asyncio.sleep(0)
        try:
            permit = b.acquire()
        except CallNotPermitted as exc:
            rejected.append(exc.retry_after)
            return
        passed += 1
        await clock.sleep(0.5)  # the trial takes a while; others arrive meanwhile
        b.record_success(permit, 0.5)

    await asyncio.gather(*(caller() for _ in range(20)))
    assert passed == permits
    assert len(rejected) == 20 - permits
    assert all(r is not None and 0 < r <= 10 for r in rejected)
    assert b.state is BreakerState.CLOSED


def test_failed_trial_reopens_with_a_longer_capped_duration() -> None:
    b, clock, events = make(open_s=10, open_max_s=35)
    trip(b)
    durations = []
    for _ in range(4):
        duration = b.snapshot().open_duration_s
        assert duration is not None
        durations.append(duration)
        clock.advance(duration)
        assert b.state is BreakerState.HALF_OPEN
        fail(b)
        assert b.state is BreakerState.OPEN
    assert durations == [10, 20, 35, 35]
    assert b.snapshot().consecutive_reopens == 4
    assert [e[1:3] for e in events[-2:]] == [("open", "half_open"), ("half_open", "open")]
    # A success closes it and the next trip starts from open_s again.
    clock.advance(35)
    succeed(b)
    assert b.state is BreakerState.CLOSED
    trip(b)
    assert b.snapshot().open_duration_s == 10


def test_slow_trial_reopens_too() -> None:
    b, clock, _ = make(slow_call_rate=1.0)
    trip(b)
    clock.advance(10)
    succeed(b, duration=5.0)
    assert b.state is BreakerState.OPEN


def test_half_open_window_is_evaluated_after_all_permits() -> None:
    b, clock, _ = make(half_open_permits=3, failure_rate=0.5)
    trip(b)
    clock.advance(10)
    permits = [b.acquire() for _ in range(3)]
    b.record_failure(permits[0], 0.1)
    assert b.state is BreakerState.HALF_OPEN  # undecided until all three are in
    b.record_success(permits[1], 0.1)
    b.record_success(permits[2], 0.1)
    assert b.state is BreakerState.CLOSED  # 1/3 < 50 %
    trip(b)
    clock.advance(10)
    permits = [b.acquire() for _ in range(3)]
    b.record_failure(permits[0], 0.1)
    b.record_success(permits[1], 0.1)
    b.record_failure(permits[2], 0.1)
    assert b.state is BreakerState.OPEN  # 2/3 >= 50 %
    assert b.snapshot().open_duration_s == 20


def test_ignored_outcomes_change_nothing() -> None:
    b, clock, events = make()
    succeed(b, 3)
    fail(b, 2)
    before = b.snapshot()
    for _ in range(50):
        b.record_ignored(b.acquire())
    assert b.snapshot() == before
    trip(b)
    clock.advance(10)
    assert b.state is BreakerState.HALF_OPEN
    n_events = len(events)
    for _ in range(5):
        permit = b.acquire()  # the single trial permit goes out ...
        b.record_ignored(permit)  # ... and comes back
    assert b.state is BreakerState.HALF_OPEN
    assert b.snapshot().trial_permits_available == 1
    assert b.snapshot().calls == 0
    assert len(events) == n_events


def test_stale_permits_do_not_count_after_a_transition() -> None:
    b, clock, _ = make()
    early = b.acquire()  # a long call started while closed
    trip(b)
    clock.advance(10)
    trial = b.acquire()
    b.record_failure(early, 30.0)  # lands during half-open: not a trial
    assert b.state is BreakerState.HALF_OPEN
    b.record_success(trial, 0.1)
    assert b.state is BreakerState.CLOSED


def test_a_permit_is_settled_once() -> None:
    b, _, _ = make(min_calls=2, window_size=2)
    p = b.acquire()
    b.record_failure(p, 0.1)
    b.record_failure(p, 0.1)
    b.record_ignored(p)
    assert b.snapshot().calls == 1
    assert b.state is BreakerState.CLOSED


def test_forced_open_rejects_everything_until_reset() -> None:
    b, clock, events = make()
    b.force_open()
    clock.advance(10_000)
    assert b.state is BreakerState.FORCED_OPEN
    with pytest.raises(CallNotPermitted) as info:
        b.acquire()
    assert info.value.retry_after is None
    assert b.snapshot().seconds_until_half_open is None
    b.reset()
    assert b.state is BreakerState.CLOSED
    succeed(b)
    assert [e[1:3] for e in events] == [("closed", "forced_open"), ("forced_open", "closed")]


def test_disabled_lets_everything_through_and_never_opens() -> None:
    b, _, events = make()
    b.disable()
    fail(b, 100, duration=100)
    assert b.state is BreakerState.DISABLED
    assert b.snapshot().calls == 0
    b.reset()
    assert b.state is BreakerState.CLOSED
    assert [e[1:3] for e in events] == [("closed", "disabled"), ("disabled", "closed")]


def test_reset_from_open_closes_with_a_fresh_window_and_duration() -> None:
    b, clock, _ = make()
    trip(b)
    clock.advance(10)
    fail(b)  # reopen: 20 s next time
    b.reset()
    assert b.state is BreakerState.CLOSED
    assert b.snapshot().calls == 0
    trip(b)
    assert b.snapshot().open_duration_s == 10


def test_reset_while_closed_clears_the_window_without_an_event() -> None:
    b, _, events = make()
    early = b.acquire()
    fail(b, 9)
    b.reset()
    b.record_failure(early, 0.1)  # started before the reset: not counted
    assert b.snapshot().calls == 0
    assert events == []


def test_a_failing_listener_does_not_wedge_the_breaker() -> None:
    b, _, events = make()

    def broken(*_: str) -> None:
        raise RuntimeError("listener bug")

    b.add_listener(broken)
    trip(b)
    assert b.state is BreakerState.OPEN
    assert len(events) == 1


def test_snapshot_is_json_ready() -> None:
    b, _, _ = make()
    succeed(b, 3)
    fail(b, 1, duration=2.0)
    snap = b.snapshot().as_json()
    assert snap["state"] == "closed"
    assert snap["calls"] == 4
    assert snap["failure_rate"] == 0.25
    assert snap["slow_call_rate"] == 0.25
    assert snap["seconds_until_half_open"] is None


def test_permit_type_is_opaque_but_inspectable() -> None:
    b, _, _ = make()
    p = b.acquire()
    assert isinstance(p, Permit)
    assert not p.trial
