"""Full jitter bounds, Retry-After parsing, and the deadline clip."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.resilience.backoff import (
    backoff_ceiling,
    compute_delay,
    full_jitter,
    parse_retry_after,
)

FAST = settings(max_examples=200, deadline=None)


@FAST
@given(
    attempt=st.integers(min_value=0, max_value=200),
    base=st.floats(min_value=0, max_value=60),
    cap=st.floats(min_value=0, max_value=600),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_every_delay_lies_within_the_full_jitter_interval(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    ceiling = min(cap, base * 2.0 ** min(attempt, 64))
    delay = full_jitter(attempt, base, cap, random.Random(seed))
    assert 0.0 <= delay <= ceiling
    assert backoff_ceiling(attempt, base, cap) == ceiling


def test_jitter_is_spread_over_the_interval_not_clustered() -> None:
    rng = random.Random(7)
    delays = [full_jitter(3, 0.1, 5.0, rng) for _ in range(2000)]
    assert max(delays) <= 0.8
    assert min(delays) < 0.05
    assert max(delays) > 0.75
    assert 0.35 < sum(delays) / len(delays) < 0.45  # mean of U(0, 0.8)


def test_ceiling_is_capped_and_never_overflows() -> None:
    assert backoff_ceiling(0, 0.1, 5.0) == 0.1
    assert backoff_ceiling(3, 0.1, 5.0) == 0.8
    assert backoff_ceiling(10, 0.1, 5.0) == 5.0
    assert backoff_ceiling(10_000, 0.1, 5.0) == 5.0


def test_parse_retry_after_delay_seconds() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 3 ") == 3.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("0") == 0.0


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 5) == 5.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 -0000", now=1445412480.0) == 0.0


def test_parse_retry_after_rejects_garbage() -> None:
    for bad in ["", "  ", "-5", "soon", "1e9", "inf", "nan", "Wed, 99 Foo 2015"]:
        assert parse_retry_after(bad, now=0.0) is None, bad


@FAST
@given(
    attempt=st.integers(min_value=0, max_value=20),
    retry_after=st.one_of(st.none(), st.floats(min_value=0, max_value=100)),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_delay_honours_retry_after_without_a_deadline(
    attempt: int, retry_after: float | None, seed: int
) -> None:
    delay = compute_delay(attempt, 0.1, 5.0, random.Random(seed), retry_after=retry_after)
    assert delay is not None
    assert delay >= (retry_after or 0.0)
    if retry_after is None:
        assert delay <= backoff_ceiling(attempt, 0.1, 5.0)
    else:  # spread after the upstream's pause by up to as much again (capped)
        assert delay <= retry_after + min(retry_after, 5.0)


@FAST
@given(
    attempt=st.integers(min_value=0, max_value=20),
    retry_after=st.one_of(st.none(), st.floats(min_value=0, max_value=100)),
    remaining=st.floats(min_value=0, max_value=100),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_delay_is_clipped_by_the_deadline(
    attempt: int, retry_after: float | None, remaining: float, seed: int
) -> None:
    min_attempt = 0.05
    delay = compute_delay(
        attempt,
        0.1,
        5.0,
        random.Random(seed),
        retry_after=retry_after,
        remaining=remaining,
        min_attempt_s=min_attempt,
    )
    if delay is None:
        # Only when the deadline cannot hold Retry-After (or anything at all) plus an attempt.
        assert (retry_after or 0.0) + min_attempt > remaining
    else:
        assert delay + min_attempt <= remaining + 1e-9
        assert delay >= (retry_after or 0.0)


def test_retry_after_longer_than_the_deadline_means_no_retry() -> None:
    rng = random.Random(1)
    assert compute_delay(0, 0.1, 5.0, rng, retry_after=10, remaining=5) is None
    delay = compute_delay(0, 0.1, 5.0, rng, retry_after=2, remaining=5)
    assert delay is not None
    assert 2 <= delay <= 4
    assert compute_delay(
        0, 0.1, 5.0, rng, retry_after=2, remaining=2.06, min_attempt_s=0.05
    ) == pytest.approx(2.01)
    assert compute_delay(0, 0.1, 5.0, rng, remaining=0.01, min_attempt_s=0.05) is None
