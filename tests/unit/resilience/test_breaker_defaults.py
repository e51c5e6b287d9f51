"""The shipped breaker defaults do not trip on independent errors (issue 14, docs/resilience.md).

Two views of one claim: the binomial tails computed exactly (the figures docs/resilience.md
quotes), and a seeded random upstream driving the real breaker for 20,000 calls per example.
"""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from app.resilience.breaker import BreakerState, CircuitBreaker
from app.resilience.clock import FakeClock
from app.resilience.config import BreakerConfig
from app.settings import BreakerSettings

DEFAULTS = BreakerConfig()


def trip_probability(calls: int, error_rate: float, threshold: float) -> float:
    """P(failures >= threshold * calls) for ``calls`` independent calls."""
    k = math.ceil(threshold * calls)
    return sum(
        math.comb(calls, i) * error_rate**i * (1 - error_rate) ** (calls - i)
        for i in range(k, calls + 1)
    )


def test_settings_ship_the_same_defaults_as_the_kit() -> None:
    assert BreakerSettings().to_config() == DEFAULTS


def test_the_false_trip_probabilities_docs_quote() -> None:
    w, m, rate = DEFAULTS.window_size, DEFAULTS.min_calls, DEFAULTS.failure_rate
    full_15 = trip_probability(w, 0.15, rate)
    full_30 = trip_probability(w, 0.30, rate)
    # While the window fills (after start or a close) it is judged from min_calls calls on.
    filling_30 = sum(trip_probability(n, 0.30, rate) for n in range(m, w + 1))
    assert full_15 < 1e-30
    assert full_30 < 3e-9
    assert filling_30 < 3e-4
    # Union bound over a million calls in a full window: below 0.3 % at a 30 % error rate.
    assert filling_30 + 1e6 * full_30 < 3e-3


@settings(max_examples=20, deadline=None, derandomize=True)
@given(seed=st.integers(min_value=0, max_value=2**32), error_rate=st.sampled_from([0.15, 0.30]))
def test_independent_errors_never_open_the_default_breaker(seed: int, error_rate: float) -> None:
    upstream = random.Random(seed)
    breaker = CircuitBreaker("p", DEFAULTS, FakeClock())
    for _ in range(20_000):
        permit = breaker.acquire()
        if upstream.random() < error_rate:
            breaker.record_failure(permit, 0.1)
        else:
            breaker.record_success(permit, 0.1)
    assert breaker.state is BreakerState.CLOSED


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_a_failing_provider_still_opens_it(seed: int) -> None:
    upstream = random.Random(seed)
    breaker = CircuitBreaker("p", DEFAULTS, FakeClock())
    for _ in range(DEFAULTS.window_size):
        permit = breaker.acquire()
        if upstream.random() < 0.8:
            breaker.record_failure(permit, 0.1)
        else:
            breaker.record_success(permit, 0.1)
        if breaker.state is BreakerState.OPEN:
            break
    assert breaker.state is BreakerState.OPEN
