"""The retry budget: bounded under a total outage, refilled by successful traffic."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from app.resilience.budget import BucketRing, RetryBudget
from app.resilience.clock import FakeClock


def _window_counts(events: list[tuple[float, str]], start_bucket: int) -> tuple[int, int]:
    """Requests and retries in the 10 whole-second buckets ending with ``start_bucket``."""
    lo = start_bucket - 9
    inside = [kind for t, kind in events if lo <= math.floor(t) <= start_bucket]
    return inside.count("request"), inside.count("retry")


def test_total_outage_keeps_retries_within_ratio_plus_floor() -> None:
    clock = FakeClock(auto_advance=False)
    budget = RetryBudget(ratio=0.2, min_per_s=1, window_s=10, clock=clock)
    events: list[tuple[float, str]] = []
    # 64 requests/s (an exact binary step, so bucket edges are exact) for 60 s; every attempt
    # fails and each request would retry twice: unbudgeted, 2 retries per request.
    for _ in range(64 * 60):
        budget.record_request()
        events.append((clock.now(), "request"))
        for _ in range(2):
            if budget.try_spend_retry():
                events.append((clock.now(), "retry"))
                requests, retries = _window_counts(events, math.floor(clock.now()))
                assert retries <= 0.2 * requests + 1 * 10
        clock.advance(1 / 64)

    for bucket in range(60):
        requests, retries = _window_counts(events, bucket)
        assert retries <= 0.2 * requests + 1 * 10, (bucket, requests, retries)
    # Steady state: retries are 20 % of requests plus the floor, not 200 %.
    requests, retries = _window_counts(events, 59)
    assert requests == 640
    assert retries == 128 + 10
    assert budget.exhausted > 0


def test_budget_refills_as_successes_arrive() -> None:
    clock = FakeClock(auto_advance=False)
    budget = RetryBudget(ratio=0.2, min_per_s=0.5, window_s=10, clock=clock)
    assert budget.floor == 5
    spent = 0
    while budget.try_spend_retry():
        spent += 1
    assert spent == 5
    assert not budget.try_spend_retry()
    # Successful requests deposit 0.2 retries each: ten of them buy two retries.
    for _ in range(10):
        budget.record_request()
    assert budget.try_spend_retry()
    assert budget.try_spend_retry()
    assert not budget.try_spend_retry()
    # After the window slides past the spent retries, the floor is back.
    clock.advance(10)
    snap = budget.snapshot()
    assert snap["retries"] == 0
    assert snap["requests"] == 0
    assert snap["available"] == 5
    assert snap["exhausted"] == 3


def test_no_ratio_and_no_floor_means_no_retries() -> None:
    budget = RetryBudget(ratio=0, min_per_s=0, window_s=10, clock=FakeClock())
    for _ in range(100):
        budget.record_request()
    assert not budget.try_spend_retry()


def test_memory_is_bounded_by_buckets_not_traffic() -> None:
    clock = FakeClock(auto_advance=False)
    ring = BucketRing(10, 1.0, clock, fields=1)
    for _ in range(1024 * 100):
        ring.add(0)
        clock.advance(1 / 1024)
    assert clock.now() == 100
    assert ring.size == 10
    # The window is the current (just started, empty) bucket and the nine before it.
    assert ring.totals() == [9 * 1024]
    clock.advance(1000)
    assert ring.totals() == [0]


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["request", "retry"]), st.floats(min_value=0, max_value=3)),
        max_size=200,
    ),
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5]),
    min_per_s=st.sampled_from([0.0, 0.1, 1.0]),
)
def test_spent_retries_never_exceed_the_allowance_in_the_window(
    steps: list[tuple[str, float]], ratio: float, min_per_s: float
) -> None:
    clock = FakeClock(auto_advance=False)
    budget = RetryBudget(ratio=ratio, min_per_s=min_per_s, window_s=10, clock=clock)
    events: list[tuple[float, str]] = []
    for kind, gap in steps:
        clock.advance(gap)
        if kind == "request":
            budget.record_request()
            events.append((clock.now(), kind))
        elif budget.try_spend_retry():
            # The guarantee holds when a retry is spent; later, the requests that paid for it
            # may leave the window before it does (as in Finagle's budget).
            events.append((clock.now(), kind))
            requests, retries = _window_counts(events, math.floor(clock.now()))
            assert retries <= ratio * requests + min_per_s * 10 + 1e-9
