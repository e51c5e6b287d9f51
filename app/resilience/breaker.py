"""A circuit breaker with resilience4j's semantics, pure and synchronous.

A provider that keeps failing should stop receiving traffic for a while (callers fail fast and
fall back instead of queueing on it), then be probed carefully. States::

    closed --(rate >= threshold after min_calls)--> open --(open duration)--> half_open
    open --(an active probe succeeded: probe_succeeded())--> half_open
    half_open --(all trial permits recorded, rates below thresholds)--> closed
    half_open --(trial window over a threshold)--> open (duration doubles, up to open_max_s)
    any --force_open()--> forced_open      any --disable()--> disabled      any --reset()--> closed

Decisions follow resilience4j:

- The sliding window is count-based (last ``window_size`` calls) or time-based (calls in the
  last ``window_size`` seconds, in one-second buckets); both are fixed-size rings. Rates are not
  evaluated until the window holds ``min_calls`` calls (for a count window at most
  ``window_size``, as resilience4j caps it).
- A call slower than ``slow_call_s`` is slow whether it succeeded or failed; the breaker opens
  when the failure rate >= ``failure_rate`` or the slow-call rate >= ``slow_call_rate``.
- Half-open hands out exactly ``half_open_permits`` permits; when that many trial outcomes are
  recorded the trial window is evaluated against the same thresholds. An ignored outcome
  (cancellation, caller error) returns its permit and changes nothing.
- ``open`` -> ``half_open`` happens lazily, when the breaker is next asked (``acquire``,
  ``state``, ``snapshot``) after the open duration, as resilience4j does without its optional
  scheduler; the transition is published then.

One deliberate difference: every permit carries the epoch (a counter bumped on each transition)
in which it was issued, and outcomes from an earlier epoch are dropped. A slow call started while
closed that ends during half-open therefore cannot be mistaken for a trial.

The breaker is not thread-safe; it is meant for one event loop, where ``acquire`` and
``record_*`` never interleave, so concurrent tasks in half-open cannot overdraw the permits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from app.resilience.budget import BucketRing
from app.resilience.clock import Clock
from app.resilience.config import BreakerConfig
from app.resilience.errors import CallNotPermitted

log = logging.getLogger("keel.resilience.breaker")

# (breaker name, from state, to state, reason)
TransitionListener = Callable[[str, str, str, str], None]

_MAX_DOUBLINGS = 32  # 2**32 * open_s exceeds any open_max_s; keeps the power finite


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


class Permit:
    """Leave to make one call; hand it back through exactly one ``record_*``."""

    __slots__ = ("done", "epoch", "trial")

    def __init__(self, epoch: int, trial: bool) -> None:
        self.epoch = epoch
        self.trial = trial
        self.done = False


class CountWindow:
    """The last ``size`` outcomes: a ring of flags with running totals."""

    def __init__(self, size: int) -> None:
        self._ring = [0] * size  # bit 0: call present, bit 1: failed, bit 2: slow
        self._i = 0
        self._calls = self._failures = self._slow = 0

    def record(self, failed: bool, slow: bool) -> None:
        old = self._ring[self._i]
        if old & 1:
            self._calls -= 1
            self._failures -= (old >> 1) & 1
            self._slow -= (old >> 2) & 1
        self._ring[self._i] = 1 | (int(failed) << 1) | (int(slow) << 2)
        self._calls += 1
        self._failures += int(failed)
        self._slow += int(slow)
        self._i = (self._i + 1) % len(self._ring)

    def totals(self) -> tuple[int, int, int]:
        return self._calls, self._failures, self._slow

    def clear(self) -> None:
        self._ring = [0] * len(self._ring)
        self._i = 0
        self._calls = self._failures = self._slow = 0


class TimeWindow:
    """Outcomes of the last ``seconds`` seconds, in one-second buckets."""

    def __init__(self, seconds: int, clock: Clock) -> None:
        self._ring = BucketRing(seconds, 1.0, clock, fields=3)

    def record(self, failed: bool, slow: bool) -> None:
        self._ring.add(0)
        if failed:
            self._ring.add(1)
        if slow:
            self._ring.add(2)

    def totals(self) -> tuple[int, int, int]:
        calls, failures, slow = self._ring.totals()
        return calls, failures, slow

    def clear(self) -> None:
        self._ring.clear()


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    name: str
    state: str
    calls: int  # in the window being evaluated (the trial window while half-open)
    failed_calls: int
    slow_calls: int
    failure_rate: float | None  # None while the window is empty
    slow_call_rate: float | None
    min_calls: int
    seconds_until_half_open: float | None  # only while open
    open_duration_s: float | None  # the current (or last) open period
    consecutive_reopens: int
    trial_permits_available: int | None  # only while half-open

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _rate(part: int, calls: int) -> float | None:
    return part / calls if calls else None


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        clock: Clock,
        *,
        listeners: tuple[TransitionListener, ...] = (),
        half_open_retry_after_s: float = 1.0,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._listeners = list(listeners)
        self._busy_retry_after = half_open_retry_after_s
        self._window: CountWindow | TimeWindow
        if config.window == "count":
            self._window = CountWindow(config.window_size)
            self._min_calls = min(config.min_calls, config.window_size)
        else:
            self._window = TimeWindow(config.window_size, clock)
            self._min_calls = config.min_calls
        self._trials = CountWindow(config.half_open_permits)
        self._state = BreakerState.CLOSED
        self._epoch = 0
        self._free_permits = 0
        self._open_until = 0.0
        self._opened_at = 0.0
        self._open_duration: float | None = None
        self._reopens = 0

    # -- observing -------------------------------------------------------------------------

    def add_listener(self, listener: TransitionListener) -> None:
        self._listeners.append(listener)

    @property
    def state(self) -> BreakerState:
        self._maybe_half_open()
        return self._state

    def snapshot(self) -> BreakerSnapshot:
        state = self.state
        half_open = state is BreakerState.HALF_OPEN
        calls, failed, slow = (self._trials if half_open else self._window).totals()
        until = None
        if state is BreakerState.OPEN:
            until = max(0.0, self._open_until - self._clock.now())
        return BreakerSnapshot(
            name=self.name,
            state=state.value,
            calls=calls,
            failed_calls=failed,
            slow_calls=slow,
            failure_rate=_rate(failed, calls),
            slow_call_rate=_rate(slow, calls),
            min_calls=self.config.half_open_permits if half_open else self._min_calls,
            seconds_until_half_open=until,
            open_duration_s=self._open_duration,
            consecutive_reopens=self._reopens,
            trial_permits_available=self._free_permits if half_open else None,
        )

    # -- calls -----------------------------------------------------------------------------

    def acquire(self) -> Permit:
        """A permit to call the upstream, or ``CallNotPermitted`` with seconds until a trial."""
        state = self.state
        if state in (BreakerState.CLOSED, BreakerState.DISABLED):
            return Permit(self._epoch, trial=False)
        if state is BreakerState.OPEN:
            wait = self._open_until - self._clock.now()
            raise CallNotPermitted(
                f"Provider '{self.name}' is failing; calls resume on trial in {wait:.1f} s.",
                retry_after=wait,
                state=state.value,
            )
        if state is BreakerState.HALF_OPEN:
            if self._free_permits > 0:
                self._free_permits -= 1
                return Permit(self._epoch, trial=True)
            raise CallNotPermitted(
                f"Provider '{self.name}' is being probed; try again shortly.",
                retry_after=self._busy_retry_after,
                state=state.value,
            )
        raise CallNotPermitted(
            f"Provider '{self.name}' was switched off by an operator.", state=state.value
        )

    def record_success(self, permit: Permit, duration: float) -> None:
        self._record(permit, failed=False, duration=duration)

    def record_failure(self, permit: Permit, duration: float) -> None:
        self._record(permit, failed=True, duration=duration)

    def record_ignored(self, permit: Permit) -> None:
        """Neither success nor failure (cancelled, caller error): the permit goes back."""
        if not self._take(permit):
            return
        if permit.trial and self._state is BreakerState.HALF_OPEN:
            self._free_permits += 1

    def hold_open(self, until: float) -> None:
        """Keep an ``open`` breaker from lapsing into half-open before ``until``.

        An active prober calls this so that its probe, not a user's call, finds out whether the
        provider is back. The hold never reaches past ``open_max_s`` after opening: should the
        probe itself be broken, a trial call still comes, as without probing.
        """
        if self._state is BreakerState.OPEN:
            cap = self._opened_at + self.config.open_max_s
            self._open_until = max(self._open_until, min(until, cap))

    def probe_succeeded(self) -> bool:
        """An active probe found the provider answering: open -> half_open at once.

        Only an ``open`` breaker moves (operators' states stay); the trial permits then decide
        as usual. A failed probe is simply not reported: unlike a failed trial call it does not
        lengthen the open time, because it says only that the provider is still down.
        """
        self._maybe_half_open()
        if self._state is not BreakerState.OPEN:
            return False
        self._transition(BreakerState.HALF_OPEN, "active probe succeeded")
        return True

    # -- operators -------------------------------------------------------------------------

    def force_open(self, reason: str = "operator") -> None:
        self._transition(BreakerState.FORCED_OPEN, reason)

    def disable(self, reason: str = "operator") -> None:
        self._transition(BreakerState.DISABLED, reason)

    def reset(self, reason: str = "operator reset") -> None:
        """Back to closed with an empty window and the open duration back at ``open_s``."""
        self._reopens = 0
        self._window.clear()
        if self._state is BreakerState.CLOSED:
            self._epoch += 1  # outcomes of calls started before the reset no longer count
        else:
            self._transition(BreakerState.CLOSED, reason)

    # -- internals -------------------------------------------------------------------------

    def _take(self, permit: Permit) -> bool:
        """Mark the permit used; ``False`` if it was already used or belongs to a past epoch."""
        if permit.done:
            return False
        permit.done = True
        return permit.epoch == self._epoch

    def _record(self, permit: Permit, *, failed: bool, duration: float) -> None:
        self._maybe_half_open()
        if not self._take(permit):
            return
        slow = duration > self.config.slow_call_s
        if self._state is BreakerState.CLOSED:
            self._window.record(failed, slow)
            tripped = self._tripped(self._window, self._min_calls)
            if tripped:
                self._open(tripped)
        elif self._state is BreakerState.HALF_OPEN and permit.trial:
            self._trials.record(failed, slow)
            calls, _, _ = self._trials.totals()
            if calls < self.config.half_open_permits:
                return
            tripped = self._tripped(self._trials, self.config.half_open_permits)
            if tripped:
                self._reopens += 1
                self._open("trial calls: " + tripped)
            else:
                self._reopens = 0
                self._window.clear()
                self._transition(BreakerState.CLOSED, f"{calls} trial call(s) passed")

    def _tripped(self, window: CountWindow | TimeWindow, min_calls: int) -> str | None:
        calls, failed, slow = window.totals()
        if calls < min_calls:
            return None
        c = self.config
        if failed / calls >= c.failure_rate:
            return f"failure rate {failed}/{calls} >= {c.failure_rate:.0%}"
        if slow / calls >= c.slow_call_rate:
            return f"slow-call rate {slow}/{calls} >= {c.slow_call_rate:.0%}"
        return None

    def _open(self, reason: str) -> None:
        c = self.config
        doubled = math.ldexp(c.open_s, min(self._reopens, _MAX_DOUBLINGS))
        self._open_duration = min(c.open_max_s, doubled)
        self._opened_at = self._clock.now()
        self._open_until = self._opened_at + self._open_duration
        self._transition(BreakerState.OPEN, f"{reason}; open for {self._open_duration:g} s")

    def _maybe_half_open(self) -> None:
        if self._state is BreakerState.OPEN and self._clock.now() >= self._open_until:
            self._transition(BreakerState.HALF_OPEN, "open duration elapsed")

    def _transition(self, to: BreakerState, reason: str) -> None:
        before = self._state
        if before is to:
            return
        self._state = to
        self._epoch += 1
        if to is BreakerState.HALF_OPEN:
            self._trials.clear()
            self._free_permits = self.config.half_open_permits
        else:
            self._free_permits = 0
        if to is BreakerState.CLOSED:
            self._window.clear()
        log.info(
            "breaker %s: %s -> %s (%s)",
            self.name,
            before.value,
            to.value,
            reason,
            extra={"breaker": self.name, "from_state": before.value, "to_state": to.value},
        )
        for listener in list(self._listeners):
            try:
                listener(self.name, before.value, to.value, reason)
            except Exception:  # a broken listener must not wedge the breaker
                log.exception("breaker listener failed")
