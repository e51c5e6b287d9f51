"""A hypothesis state machine drives the breaker against a deliberately naive reference model.

The model keeps every recorded call in a plain list and recomputes the window by filtering it,
so it shares none of the breaker's ring-buffer bookkeeping; random interleavings of acquire,
outcomes (success, failure, ignored; fast or slow), clock steps and operator actions must leave
both in the same state, with the same rejections and the same window counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from app.resilience.breaker import CircuitBreaker, Permit
from app.resilience.clock import FakeClock
from app.resilience.config import BreakerConfig
from app.resilience.errors import CallNotPermitted


@dataclass
class Call:
    at: float
    failed: bool
    slow: bool


@dataclass
class RefPermit:
    epoch: int
    trial: bool


@dataclass
class RefBreaker:
    cfg: BreakerConfig
    clock: FakeClock
    state: str = "closed"
    epoch: int = 0
    calls: list[Call] = field(default_factory=list)
    trials: list[Call] = field(default_factory=list)
    free: int = 0
    open_until: float = 0.0
    reopens: int = 0

    def min_calls(self) -> int:
        if self.cfg.window == "count":
            return min(self.cfg.min_calls, self.cfg.window_size)
        return self.cfg.min_calls

    def window(self) -> list[Call]:
        if self.cfg.window == "count":
            return self.calls[-self.cfg.window_size :]
        newest = math.floor(self.clock.now())
        return [c for c in self.calls if math.floor(c.at) > newest - self.cfg.window_size]

    def tick(self) -> None:
        if self.state == "open" and self.clock.now() >= self.open_until:
            self.go("half_open")

    def go(self, to: str) -> None:
        if to == self.state:
            return
        self.state = to
        self.epoch += 1
        self.free = self.cfg.half_open_permits if to == "half_open" else 0
        self.trials = []
        if to == "closed":
            self.calls = []

    def trips(self, calls: list[Call], min_calls: int) -> bool:
        if len(calls) < min_calls:
            return False
        failed = sum(c.failed for c in calls)
        slow = sum(c.slow for c in calls)
        return (
            failed / len(calls) >= self.cfg.failure_rate
            or slow / len(calls) >= self.cfg.slow_call_rate
        )

    def open(self) -> None:
        duration = min(self.cfg.open_max_s, self.cfg.open_s * 2.0**self.reopens)
        self.open_until = self.clock.now() + duration
        self.go("open")

    def acquire(self) -> RefPermit | float | None:
        """A permit, or the Retry-After of the rejection (None: no estimate)."""
        self.tick()
        if self.state in ("closed", "disabled"):
            return RefPermit(self.epoch, trial=False)
        if self.state == "open":
            return self.open_until - self.clock.now()
        if self.state == "half_open":
            if self.free:
                self.free -= 1
                return RefPermit(self.epoch, trial=True)
            return 1.0
        return None

    def record(self, permit: RefPermit, outcome: str, duration: float) -> None:
        self.tick()
        if permit.epoch != self.epoch:
            return
        if outcome == "ignored":
            if permit.trial and self.state == "half_open":
                self.free += 1
            return
        call = Call(self.clock.now(), outcome == "failure", duration > self.cfg.slow_call_s)
        if self.state == "closed":
            self.calls.append(call)
            if self.trips(self.window(), self.min_calls()):
                self.open()
        elif self.state == "half_open" and permit.trial:
            self.trials.append(call)
            if len(self.trials) == self.cfg.half_open_permits:
                if self.trips(self.trials, self.cfg.half_open_permits):
                    self.reopens += 1
                    self.open()
                else:
                    self.reopens = 0
                    self.go("closed")

    def reset(self) -> None:
        self.reopens = 0
        self.calls = []
        if self.state == "closed":
            self.epoch += 1
        else:
            self.go("closed")


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(auto_advance=False)
        self.outstanding: list[tuple[Permit, RefPermit]] = []
        self.transitions: list[tuple[str, str]] = []

    @initialize(
        window=st.sampled_from(["count", "time"]),
        window_size=st.integers(min_value=1, max_value=8),
        min_calls=st.integers(min_value=1, max_value=8),
        failure_rate=st.sampled_from([0.25, 0.5, 1.0]),
        slow_call_rate=st.sampled_from([0.5, 1.0]),
        permits=st.integers(min_value=1, max_value=3),
    )
    def setup(
        self,
        window: Literal["count", "time"],
        window_size: int,
        min_calls: int,
        failure_rate: float,
        slow_call_rate: float,
        permits: int,
    ) -> None:
        cfg = BreakerConfig(
            window=window,
            window_size=window_size,
            min_calls=min_calls,
            failure_rate=failure_rate,
            slow_call_s=2.0,
            slow_call_rate=slow_call_rate,
            open_s=5.0,
            open_max_s=30.0,
            half_open_permits=permits,
        )
        self.real = CircuitBreaker(
            "m", cfg, self.clock, listeners=(lambda _n, a, b, _r: self.transitions.append((a, b)),)
        )
        self.ref = RefBreaker(cfg, self.clock)

    @rule()
    def acquire(self) -> None:
        expected = self.ref.acquire()
        if not isinstance(expected, RefPermit):
            with pytest.raises(CallNotPermitted) as info:
                self.real.acquire()
            if expected is None:
                assert info.value.retry_after is None
            else:
                assert info.value.retry_after == pytest.approx(expected)
            return
        permit = self.real.acquire()
        assert permit.trial == expected.trial
        self.outstanding.append((permit, expected))

    @rule(
        outcome=st.sampled_from(["failure", "success", "ignored"]),
        duration=st.sampled_from([0.0, 3.5]),
    )
    def call(self, outcome: str, duration: float) -> None:
        """Acquire and settle at once: the common, sequential case."""
        before = len(self.outstanding)
        self.acquire()
        if len(self.outstanding) > before:
            self._settle(before, outcome, duration)

    @precondition(lambda self: bool(self.outstanding))
    @rule(
        data=st.data(),
        outcome=st.sampled_from(["success", "failure", "ignored"]),
        duration=st.sampled_from([0.0, 1.0, 2.0, 3.5]),
    )
    def complete(self, data: st.DataObject, outcome: str, duration: float) -> None:
        i = data.draw(st.integers(min_value=0, max_value=len(self.outstanding) - 1))
        self._settle(i, outcome, duration)

    def _settle(self, i: int, outcome: str, duration: float) -> None:
        permit, ref_permit = self.outstanding.pop(i)
        self.ref.record(ref_permit, outcome, duration)
        if outcome == "success":
            self.real.record_success(permit, duration)
        elif outcome == "failure":
            self.real.record_failure(permit, duration)
        else:
            self.real.record_ignored(permit)

    @rule(seconds=st.sampled_from([0.25, 1.0, 2.5, 5.0, 10.0, 40.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(action=st.sampled_from(["force_open", "disable", "reset"]))
    def operator(self, action: str) -> None:
        # Operators act rarely; hypothesis still finds the interleavings that matter.
        if action == "reset":
            self.ref.reset()
            self.real.reset()
        else:
            self.ref.tick()
            self.ref.go("forced_open" if action == "force_open" else "disabled")
            getattr(self.real, action)()

    @invariant()
    def same_state_and_window(self) -> None:
        if not hasattr(self, "real"):
            return
        self.ref.tick()
        snap = self.real.snapshot()
        assert snap.state == self.ref.state
        if self.ref.state == "half_open":
            calls = self.ref.trials
            assert snap.trial_permits_available == self.ref.free
        else:
            calls = self.ref.window()
        assert snap.calls == len(calls)
        assert snap.failed_calls == sum(c.failed for c in calls)
        assert snap.slow_calls == sum(c.slow for c in calls)
        if self.ref.state == "open":
            assert snap.seconds_until_half_open == pytest.approx(
                self.ref.open_until - self.clock.now()
            )

    @invariant()
    def transitions_are_real_changes(self) -> None:
        assert all(a != b for a, b in self.transitions)


BreakerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestBreakerAgainstModel = BreakerMachine.TestCase
