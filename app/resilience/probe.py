"""Finding out that an open provider is back without sending it a user's request.

resilience4j lets the first user call after ``open_s`` be the trial, and a failed trial doubles
the open time: after a 20 s outage the first success came 10 s late. Envoy's active health
checks show the better way: while the breaker is open, a cheap request (``GET /models``) goes
to the provider once per ``interval_s``; the first one that succeeds moves the breaker to
half-open, where the trial permits decide as usual. Failed probes change nothing: they only say
the provider is still down, so they do not lengthen the open time.

While probing, the breaker is held open (``CircuitBreaker.hold_open``) so that the probe, not a
user's call, is what finds out; the hold ends ``open_max_s`` after opening, a safety net for a
probe endpoint that is broken while chat works. After a trial call fails (the probe said yes,
the provider still fails real work), the next probe waits the breaker's doubled open time, so a
provider whose ``/models`` answers but whose chat fails is not hammered with trials.

One task per open episode, owned by the guard: started when the breaker opens, finished when it
leaves ``open``, cancelled by ``aclose``. At most one probe is in flight, and each is bounded by
``interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from app.resilience.breaker import BreakerState, CircuitBreaker
from app.resilience.clock import Clock
from app.resilience.deadline import Deadline
from app.resilience.failures import classify

Probe = Callable[[Deadline], Awaitable[None]]
ProbeListener = Callable[[str], None]  # "success" or the failure's reason


class ActiveProber:
    def __init__(
        self,
        breaker: CircuitBreaker,
        probe: Probe,
        clock: Clock,
        *,
        interval_s: float,
        on_probe: ProbeListener | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self._breaker = breaker
        self._probe = probe
        self._clock = clock
        self.interval_s = interval_s
        self._on_probe = on_probe
        self._task: asyncio.Task[None] | None = None
        self.probes = 0  # since start, for diagnostics and tests

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def on_transition(self, name: str, from_state: str, to_state: str, reason: str) -> None:
        """Breaker listener: start probing when it opens."""
        if to_state == BreakerState.OPEN.value and not self.running:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # opened outside an event loop (a sync test): nothing to run
                return
            self._task = loop.create_task(self._run(), name=f"probe:{name}")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        snap = self._breaker.snapshot()
        wait = self.interval_s
        if snap.consecutive_reopens > 0 and snap.seconds_until_half_open is not None:
            wait = max(wait, snap.seconds_until_half_open)  # a trial failed: back off as r4j
        while self._open():
            self._breaker.hold_open(self._clock.now() + wait + self.interval_s)
            await self._clock.sleep(wait)
            if not self._open():
                return
            started = self._clock.now()
            if await self._probe_once():
                self._breaker.probe_succeeded()
                return
            wait = max(0.0, started + self.interval_s - self._clock.now())

    def _open(self) -> bool:
        return self._breaker.state is BreakerState.OPEN

    async def _probe_once(self) -> bool:
        self.probes += 1
        outcome = "success"
        try:
            deadline = Deadline.after(self.interval_s, self._clock)
            await deadline.run(self._probe(deadline))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome = classify(exc).reason
        if self._on_probe is not None:
            self._on_probe(outcome)
        return outcome == "success"
