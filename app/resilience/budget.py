"""A per-provider retry budget (Finagle's ``RetryBudget``), so retries cannot become a storm.

Per-request attempt limits alone multiply load when a provider fails: with 3 attempts, every
failing request is three upstream calls exactly when the upstream can least afford them. The
budget caps retries across all requests: over a sliding window (10 s by default)

    retries <= ratio * requests + min_per_s * window_s

so under a total outage retries add at most ``ratio`` (20 %) to the load, plus a small floor
that lets a quiet service still retry the odd transient error.

Counts live in a ring of fixed-width buckets (1 s by default): memory is bounded by
``window_s / bucket_s`` whatever the traffic, and the window slides a bucket at a time. The
window is the current bucket and the ones before it, ``window_s`` seconds in all.
"""

from __future__ import annotations

import math
from typing import Any

from app.resilience.clock import Clock, MonotonicClock


class BucketRing:
    """Counters per time bucket over a sliding window, with running totals (O(1) amortised)."""

    def __init__(self, window_s: float, bucket_s: float, clock: Clock, fields: int) -> None:
        if window_s <= 0 or bucket_s <= 0:
            raise ValueError("window_s and bucket_s must be positive")
        self._clock = clock
        self._bucket_s = bucket_s
        self._n = max(1, math.ceil(window_s / bucket_s))
        self._counts = [[0] * fields for _ in range(self._n)]
        self._totals = [0] * fields
        self._head = self._epoch()

    @property
    def size(self) -> int:
        return self._n

    def _epoch(self) -> int:
        return math.floor(self._clock.now() / self._bucket_s)

    def _advance(self) -> None:
        epoch = self._epoch()
        if epoch <= self._head:
            return
        if epoch - self._head >= self._n:
            self.clear()
        else:
            for e in range(self._head + 1, epoch + 1):
                bucket = self._counts[e % self._n]
                for i, v in enumerate(bucket):
                    self._totals[i] -= v
                    bucket[i] = 0
        self._head = epoch

    def add(self, field: int, amount: int = 1) -> None:
        self._advance()
        self._counts[self._head % self._n][field] += amount
        self._totals[field] += amount

    def totals(self) -> list[int]:
        self._advance()
        return list(self._totals)

    def clear(self) -> None:
        for bucket in self._counts:
            for i in range(len(bucket)):
                bucket[i] = 0
        self._totals = [0] * len(self._totals)
        self._head = self._epoch()


_REQUESTS, _RETRIES = 0, 1


class RetryBudget:
    def __init__(
        self,
        ratio: float = 0.2,
        min_per_s: float = 10.0,
        window_s: float = 10.0,
        clock: Clock | None = None,
        *,
        bucket_s: float = 1.0,
    ) -> None:
        if ratio < 0 or min_per_s < 0:
            raise ValueError("ratio and min_per_s must be >= 0")
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._ring = BucketRing(window_s, bucket_s, clock or MonotonicClock(), fields=2)
        self.exhausted = 0  # retries refused since start, for diagnostics

    @property
    def floor(self) -> float:
        return self.min_per_s * self.window_s

    def record_request(self) -> None:
        """A new request (not a retry) was made: it deposits ``ratio`` of a retry."""
        self._ring.add(_REQUESTS)

    def available(self) -> float:
        """Retries that could be spent right now (may be fractional)."""
        requests, retries = self._ring.totals()
        return self.ratio * requests + self.floor - retries

    def try_spend_retry(self) -> bool:
        """Withdraw one retry if the window allows it; ``False`` (and counted) if not."""
        if self.available() >= 1.0 - 1e-9:  # ratio * requests may land a hair under
            self._ring.add(_RETRIES)
            return True
        self.exhausted += 1
        return False

    def snapshot(self) -> dict[str, Any]:
        requests, retries = self._ring.totals()
        return {
            "window_s": self.window_s,
            "requests": requests,
            "retries": retries,
            "available": max(0.0, self.ratio * requests + self.floor - retries),
            "ratio": self.ratio,
            "min_per_s": self.min_per_s,
            "exhausted": self.exhausted,
        }
