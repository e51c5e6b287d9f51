"""The download retry policy: separate allowances, full jitter, Retry-After, fresh retry."""

from __future__ import annotations

import random

from app.lifecycle.retry_policy import DownloadFailure, DownloadRetryPolicy, FailureKind


def _policy(**kw: float) -> DownloadRetryPolicy:
    values: dict[str, float] = {
        "retries": 2,
        "network_retries": 4,
        "base_delay_s": 1.0,
        "max_delay_s": 8.0,
    }
    values.update(kw)
    return DownloadRetryPolicy(
        retries=int(values["retries"]),
        network_retries=int(values["network_retries"]),
        base_delay_s=values["base_delay_s"],
        max_delay_s=values["max_delay_s"],
        rng=random.Random(1),
    )


def _fail(
    kind: FailureKind,
    *,
    resumed: bool = False,
    retry_after: float | None = None,
    restart: bool = False,
) -> DownloadFailure:
    failure = DownloadFailure(kind, "x", "m", retry_after=retry_after, restart=restart)
    failure.resumed = resumed
    return failure


def test_http_and_network_allowances_are_counted_separately() -> None:
    policy = _policy()
    http = [policy.decide(_fail(FailureKind.HTTP)).retry for _ in range(3)]
    net = [policy.decide(_fail(FailureKind.NETWORK)).retry for _ in range(5)]
    assert http == [True, True, False]
    assert net == [True, True, True, True, False]


def test_delays_are_full_jitter_within_the_capped_ceiling() -> None:
    policy = _policy(network_retries=10)
    delays = [policy.decide(_fail(FailureKind.NETWORK)).delay for _ in range(10)]
    ceilings = [min(8.0, 2.0**n) for n in range(10)]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) > 5  # jittered, not fixed


def test_retry_after_raises_the_wait_but_not_above_max_delay() -> None:
    policy = _policy(base_delay_s=0.0)
    assert policy.decide(_fail(FailureKind.HTTP, retry_after=3.0)).delay == 3.0
    assert policy.decide(_fail(FailureKind.HTTP, retry_after=600.0)).delay == 8.0


def test_final_failures_stop_unless_the_attempt_had_resumed_once() -> None:
    policy = _policy()
    assert policy.decide(_fail(FailureKind.FINAL)).retry is False
    fresh = policy.decide(_fail(FailureKind.FINAL, resumed=True))
    assert fresh.retry
    assert fresh.fresh
    assert fresh.delay == 0.0
    assert policy.decide(_fail(FailureKind.FINAL, resumed=True)).retry is False


def test_restart_failures_retry_from_zero() -> None:
    decision = _policy().decide(_fail(FailureKind.HTTP, restart=True))
    assert decision.retry
    assert decision.fresh
    assert _fail(FailureKind.FINAL).retryable is False
    assert _fail(FailureKind.NETWORK).retryable is True
