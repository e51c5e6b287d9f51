"""Frozen configuration for the kit's pieces, built by callers from their settings.

The kit never reads settings itself (it imports nothing from the rest of ``app/``); the chat
layer and the model runtime turn their pydantic settings into these plain values. Defaults here
are the shipped defaults, and docs/resilience.md explains the breaker's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, slots=True)
class RetryConfig:
    max_attempts: int = 3  # per target, the first attempt included
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0
    budget_ratio: float = 0.2  # retries <= ratio * requests over the budget window ...
    budget_min_per_s: float = 10.0  # ... plus this floor per second


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """resilience4j's knobs. The defaults do not trip on independent errors up to 30 %:
    a full window of 200 calls reaches 50 % failures with probability 4e-31 at a 15 % error
    rate and 3e-9 at 30 % (docs/resilience.md), while a dead provider opens it after
    ``min_calls`` calls."""

    window: Literal["count", "time"] = "count"
    window_size: int = 200  # calls (count) or seconds (time)
    min_calls: int = 100
    failure_rate: float = 0.5
    slow_call_s: float = 30.0
    slow_call_rate: float = 1.0
    open_s: float = 10.0  # doubles on consecutive re-opens after failed trial calls ...
    open_max_s: float = 300.0  # ... up to this
    half_open_permits: int = 1

    def __post_init__(self) -> None:
        if self.window_size < 1 or self.min_calls < 1 or self.half_open_permits < 1:
            raise ValueError("window_size, min_calls and half_open_permits must be >= 1")
        if not (0 < self.failure_rate <= 1 and 0 < self.slow_call_rate <= 1):
            raise ValueError("failure_rate and slow_call_rate must be in (0, 1]")
        if self.open_s <= 0 or self.open_max_s < self.open_s:
            raise ValueError("open_s must be > 0 and open_max_s >= open_s")


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """One provider's protection: limiter, retries and budget, breaker, timeouts, probing."""

    retry: RetryConfig = field(default_factory=RetryConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    max_concurrency: int = 64
    max_queue_wait_s: float = 1.0
    min_attempt_s: float = 0.05  # less time than this left: an attempt is not worth starting
    # Time to first byte per attempt (None: only the request deadline bounds it).
    attempt_timeout_s: float | None = None
    # While the breaker is open, at most one active probe per this many seconds (0: none).
    probe_interval_s: float = 1.0
    # The longest Retry-After the provider's throttle honours; longer requests are capped.
    max_throttle_s: float = 60.0
    budget_window_s: float = 10.0  # DESIGN §5: "over a sliding 10 s"
