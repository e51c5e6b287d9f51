"""A provider's request to slow down, honoured by every caller of that provider.

A 429 is backpressure, not a fault: it neither opens the breaker nor counts as a success. What
it asks for is a pause, so one 429 with ``Retry-After: s`` pauses *new* attempts to the provider
for ``s`` seconds (capped at ``max_pause_s``, 1 s when the header is missing). Callers with a
fallback go there at once; the others wait the pause out within their deadline, and the wake-up
is spread by full jitter over ``[pause, pause + min(pause, spread_cap_s)]`` so the waiters do not
return as one burst and earn the next 429 together.
"""

from __future__ import annotations

import random
from typing import Any

from app.resilience.clock import Clock

DEFAULT_PAUSE_S = 1.0  # a 429 without Retry-After


class Throttle:
    def __init__(
        self,
        clock: Clock,
        *,
        max_pause_s: float = 60.0,
        spread_cap_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self.max_pause_s = max_pause_s
        self.spread_cap_s = spread_cap_s
        self._rng = rng or random.Random()
        self._until = float("-inf")
        self._last_pause = 0.0
        self.pauses = 0  # since start, for diagnostics

    def note(self, retry_after: float | None) -> float:
        """The provider answered 429; returns the pause it asked for (capped)."""
        asked = DEFAULT_PAUSE_S if retry_after is None else max(0.0, retry_after)
        pause = min(asked, self.max_pause_s)
        self._until = max(self._until, self._clock.now() + pause)
        self._last_pause = pause
        self.pauses += 1
        return pause

    def remaining(self) -> float:
        """Seconds until new attempts may go out; 0 when the provider is not pausing us."""
        return max(0.0, self._until - self._clock.now())

    def wait(self, room: float) -> float | None:
        """How long a new attempt should wait, jitter included, or ``None`` when the pause
        does not end within ``room`` seconds (the caller's deadline minus a minimal attempt)."""
        left = self.remaining()
        if left <= 0:
            return 0.0
        if left > room:
            return None
        spread = self._rng.uniform(0.0, min(self._last_pause, self.spread_cap_s))
        return min(left + spread, room)

    def snapshot(self) -> dict[str, Any]:
        return {"paused_for_s": round(self.remaining(), 3), "pauses": self.pauses}
