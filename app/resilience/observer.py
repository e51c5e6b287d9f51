"""What a guard tells the outside world: one protocol, implemented by the chat layer.

The kit decides; it does not know Prometheus or the diagnostics timeline. Everything worth
counting or showing is reported through ``GuardObserver`` with bounded labels (provider names,
outcome reasons, breaker states), and the chat layer turns the calls into metrics and timeline
entries. ``NullObserver`` is the default, so the kit works (and is tested) on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class GuardObserver(Protocol):
    def breaker_transition(
        self, provider: str, from_state: str, to_state: str, reason: str
    ) -> None:
        """The provider's breaker moved (also logged by the breaker)."""

    def attempt(self, provider: str, outcome: str, duration_s: float) -> None:
        """An attempt reached the upstream and ended: "success" or the failure's reason."""

    def retry(self, provider: str, reason: str, delay_s: float) -> None:
        """A retry was decided (budget spent) and starts after ``delay_s``."""

    def budget_exhausted(self, provider: str) -> None:
        """A retryable failure was not retried because the retry budget said no."""

    def rejected(self, provider: str, code: str) -> None:
        """Keel refused a call without reaching the upstream: "circuit_open", "overloaded",
        "throttled"."""

    def watch_occupancy(self, provider: str, read: Callable[[], tuple[int, int]]) -> None:
        """``read()`` gives the provider's slots in use and queued callers, at any time. Read
        when asked (a metrics scrape) rather than reported on every change: a slot is taken and
        released on every request."""

    def throttled(self, provider: str, seconds: float) -> None:
        """The provider asked for a pause (429 ``Retry-After``); new work waits or falls back."""

    def probe(self, provider: str, outcome: str) -> None:
        """An active probe of an open provider ended: "success" or the failure's reason."""

    def hedge(self, provider: str, outcome: str) -> None:
        """A hedged attempt on ``provider`` was started ("started") or ended ("won", "lost")."""


class NullObserver:
    """Observes nothing."""

    def breaker_transition(
        self, provider: str, from_state: str, to_state: str, reason: str
    ) -> None:
        pass

    def attempt(self, provider: str, outcome: str, duration_s: float) -> None:
        pass

    def retry(self, provider: str, reason: str, delay_s: float) -> None:
        pass

    def budget_exhausted(self, provider: str) -> None:
        pass

    def rejected(self, provider: str, code: str) -> None:
        pass

    def watch_occupancy(self, provider: str, read: Callable[[], tuple[int, int]]) -> None:
        pass

    def throttled(self, provider: str, seconds: float) -> None:
        pass

    def probe(self, provider: str, outcome: str) -> None:
        pass

    def hedge(self, provider: str, outcome: str) -> None:
        pass
