"""ProviderGuard: the composition the chat service uses, wired as the chat layer wires it
(``app.chat.resilience``: settings in, metrics, timeline and catalogue errors out)."""
# mypy: disable-error-code="comparison-overlap, unreachable"
# (mypy narrows a property after ``assert x.state is A`` and then calls the next check, made
# after the object changed, impossible; these tests observe state that changes under them.)

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from app.chat.resilience import ChatObserver, build_guard, classify, guard_config, to_catalogue
from app.errors import CircuitOpen, ModelNotReady, Overloaded, UpstreamError
from app.observability.metrics import Metrics
from app.observability.timeline import Timeline
from app.resilience.breaker import BreakerState
from app.resilience.clock import FakeClock
from app.resilience.config import GuardConfig
from app.resilience.deadline import Deadline
from app.resilience.errors import CallNotPermitted, DeadlinePassed, QueueFull
from app.resilience.failures import UpstreamFailure
from app.resilience.guard import ProviderGuard
from app.settings import (
    BreakerSettings,
    ConfigError,
    ProviderSettings,
    ResilienceSettings,
    RetrySettings,
    effective_breaker,
    effective_retry,
)


def make(
    clock: FakeClock | None = None,
    *,
    retry: dict[str, Any] | None = None,
    breaker: dict[str, Any] | None = None,
    max_concurrency: int = 8,
    max_queue_wait_s: float = 1.0,
) -> tuple[ProviderGuard, FakeClock, Metrics, Timeline]:
    clock = clock or FakeClock()
    metrics = Metrics()
    timeline = Timeline(size=50, wall_clock=lambda: 1_700_000_000.0)
    breaker_cfg = {"window_size": 4, "min_calls": 4, "open_s": 10, "slow_call_s": 5.0}
    config = GuardConfig(
        retry=RetrySettings(**{"max_attempts": 1, **(retry or {})}).to_config(),
        breaker=BreakerSettings(**{**breaker_cfg, **(breaker or {})}).to_config(),
        max_concurrency=max_concurrency,
        max_queue_wait_s=max_queue_wait_s,
    )
    guard = ProviderGuard(
        "cloud",
        config,
        clock=clock,
        observer=ChatObserver(metrics, timeline),
        rng=random.Random(3),
        classifier=classify,
    )
    metrics.set_breaker_state("cloud", guard.breaker.state.value)
    return guard, clock, metrics, timeline


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def ok(_: Deadline) -> str:
    return "ok"


async def boom(_: Deadline) -> str:
    raise UpstreamFailure(status_code=503)


async def call(guard: ProviderGuard, op: Any, seconds: float = 30) -> Any:
    return await guard.call(op, Deadline.after(seconds, guard.clock))


# -- configuration ------------------------------------------------------------------------


def test_effective_settings_merge_defaults_and_overrides() -> None:
    retry = effective_retry(RetrySettings(max_attempts=3, base_delay_s=0.2), {"max_attempts": 5})
    assert (retry.max_attempts, retry.base_delay_s) == (5, 0.2)
    breaker = effective_breaker(BreakerSettings(window="time"), {"open_s": 2})
    assert (breaker.window, breaker.open_s) == ("time", 2)
    assert effective_breaker(BreakerSettings(), {}) == BreakerSettings()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"failure_rate": 0}, "providers.cloud.breaker.failure_rate"),
        ({"failure_rate": 1.5}, "providers.cloud.breaker.failure_rate"),
        ({"half_open_permits": 0}, "providers.cloud.breaker.half_open_permits"),
        ({"open_s": 100, "open_max_s": 10}, "open_max_s must be >= open_s"),
        ({"windw": "count"}, "providers.cloud.breaker.windw"),
    ],
)
def test_a_bad_override_is_a_clear_config_error(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        effective_breaker(BreakerSettings(), overrides, provider="cloud")


def test_a_bad_retry_override_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"providers\.x\.retry\.max_attempts"):
        effective_retry(RetrySettings(), {"max_attempts": 0}, provider="x")


def test_from_settings_applies_provider_overrides() -> None:
    provider = ProviderSettings(
        base_url="http://127.0.0.1:9/v1",
        max_concurrency=3,
        max_queue_wait_s=0.5,
        retry={"max_attempts": 2},
        breaker={"open_s": 7, "window": "time"},
    )
    guard = build_guard("p", provider, ResilienceSettings(), clock=FakeClock())
    assert guard.retrier.policy.max_attempts == 2
    assert guard.breaker.config.open_s == 7
    assert guard.breaker.config.window == "time"
    assert guard.limiter.max_concurrency == 3
    assert guard.limiter.max_queue_wait_s == 0.5
    with pytest.raises(ConfigError):
        guard_config(
            "p",
            ProviderSettings(base_url="http://127.0.0.1:9/v1", breaker={"min_calls": -1}),
            ResilienceSettings(),
        )


# -- calls --------------------------------------------------------------------------------


async def test_a_successful_call_returns_result_and_attempts() -> None:
    guard, _, metrics, _ = make()
    assert await call(guard, ok) == ("ok", 1)
    assert sample(metrics, "keel_upstream_attempts_total", provider="cloud", outcome="success") == 1
    assert sample(metrics, "keel_limiter_in_use", provider="cloud") == 0
    assert sample(metrics, "keel_breaker_state", provider="cloud", state="closed") == 1


async def test_retries_are_counted_by_reason() -> None:
    guard, _, metrics, _ = make(retry={"max_attempts": 3})
    outcomes: list[Exception | str] = [UpstreamFailure("connect"), UpstreamFailure("reset"), "ok"]

    async def flaky(_: Deadline) -> str:
        out = outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return out

    assert await call(guard, flaky) == ("ok", 3)
    for reason in ("connect", "reset"):
        assert sample(metrics, "keel_upstream_retries_total", provider="cloud", reason=reason) == 1
        assert (
            sample(metrics, "keel_upstream_attempts_total", provider="cloud", outcome=reason) == 1
        )


async def test_budget_exhaustion_is_counted() -> None:
    guard, _, metrics, _ = make(retry={"max_attempts": 3, "budget_ratio": 0, "budget_min_per_s": 0})
    with pytest.raises(UpstreamFailure):
        await call(guard, boom)
    assert sample(metrics, "keel_retry_budget_exhausted_total", provider="cloud") == 1
    assert guard.diagnostics()["retry_budget"]["exhausted"] == 1


async def test_the_breaker_lifecycle_lands_on_timeline_and_metrics() -> None:
    guard, clock, metrics, timeline = make()
    for _ in range(4):
        with pytest.raises(UpstreamFailure):
            await call(guard, boom)
    assert guard.breaker.state is BreakerState.OPEN
    with pytest.raises(CallNotPermitted) as info:
        await call(guard, ok)
    assert info.value.retry_after == pytest.approx(10)
    assert isinstance(to_catalogue(info.value), CircuitOpen)
    assert sample(metrics, "keel_rejections_total", provider="cloud", code="circuit_open") == 1
    assert sample(metrics, "keel_breaker_state", provider="cloud", state="open") == 1
    assert sample(metrics, "keel_breaker_state", provider="cloud", state="closed") == 0

    await clock.sleep(10)
    assert await call(guard, ok) == ("ok", 1)  # the trial passes and closes the breaker
    assert guard.breaker.state is BreakerState.CLOSED
    assert [(t.subject, t.from_state, t.to_state) for t in timeline.last()] == [
        ("breaker:cloud", "closed", "open"),
        ("breaker:cloud", "open", "half_open"),
        ("breaker:cloud", "half_open", "closed"),
    ]
    for from_state, to_state in [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]:
        assert (
            sample(
                metrics,
                "keel_breaker_transitions_total",
                provider="cloud",
                from_state=from_state,
                to_state=to_state,
            )
            == 1
        )
    assert sample(metrics, "keel_breaker_state", provider="cloud", state="closed") == 1
    guard.breaker.force_open()
    guard.breaker.disable()
    assert sample(metrics, "keel_breaker_state", provider="cloud", state="disabled") == 1
    assert timeline.last(1)[0].as_json()["to"] == "disabled"


async def test_caller_errors_and_cancellation_are_ignored_by_the_breaker() -> None:
    guard, clock, _, _ = make(retry={"max_attempts": 3})
    calls = 0

    async def bad_request(_: Deadline) -> str:
        nonlocal calls
        calls += 1
        raise UpstreamFailure(status_code=400)

    for _ in range(10):
        with pytest.raises(UpstreamFailure):
            await call(guard, bad_request)
    assert calls == 10  # never retried
    assert guard.breaker.snapshot().calls == 0

    async def hangs(_: Deadline) -> str:
        await clock.sleep(100)
        return "late"

    task = asyncio.create_task(call(guard, hangs))
    await clock.settle()
    assert guard.limiter.in_use == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert guard.breaker.snapshot().calls == 0
    assert (guard.limiter.in_use, guard.limiter.queued) == (0, 0)


async def test_a_short_caller_deadline_does_not_count_against_the_upstream() -> None:
    guard, clock, metrics, _ = make(breaker={"slow_call_s": 5.0})

    async def slow(_: Deadline) -> str:
        await clock.sleep(100)
        return "late"

    with pytest.raises(DeadlinePassed):
        await call(guard, slow, seconds=1)
    assert guard.breaker.snapshot().calls == 0
    attempts = sample(metrics, "keel_upstream_attempts_total", provider="cloud", outcome="deadline")
    assert attempts == 1
    # An upstream that hangs past the slow-call threshold is a failure.
    with pytest.raises(DeadlinePassed):
        await call(guard, slow, seconds=6)
    snap = guard.breaker.snapshot()
    assert (snap.calls, snap.failed_calls, snap.slow_calls) == (1, 1, 1)


async def test_slow_successes_open_the_breaker() -> None:
    guard, clock, _, _ = make(breaker={"slow_call_s": 1.0, "slow_call_rate": 0.5})

    async def slow_ok(_: Deadline) -> str:
        await clock.sleep(2)
        return "ok"

    for _ in range(4):
        assert await call(guard, slow_ok) == ("ok", 1)
    assert guard.breaker.state is BreakerState.OPEN


async def test_twenty_concurrent_callers_in_half_open_send_exactly_the_trial_permits() -> None:
    guard, clock, metrics, _ = make(breaker={"half_open_permits": 2}, max_concurrency=32)
    for _ in range(4):
        with pytest.raises(UpstreamFailure):
            await call(guard, boom)
    await clock.sleep(10)
    reached = 0

    async def slow_ok(_: Deadline) -> str:
        nonlocal reached
        reached += 1
        await clock.sleep(1)
        return "ok"

    results = await asyncio.gather(
        *(call(guard, slow_ok) for _ in range(20)), return_exceptions=True
    )
    assert reached == 2
    assert sum(r == ("ok", 1) for r in results) == 2
    rejected = [r for r in results if isinstance(r, CallNotPermitted)]
    assert len(rejected) == 18
    assert all(r.retry_after == 1.0 for r in rejected)
    assert sample(metrics, "keel_rejections_total", provider="cloud", code="circuit_open") == 18
    assert guard.breaker.state is BreakerState.CLOSED


async def test_overload_is_rejected_after_the_queue_wait_and_counted() -> None:
    guard, clock, metrics, _ = make(max_concurrency=1, max_queue_wait_s=0.5)

    async def busy(_: Deadline) -> str:
        await clock.sleep(5)
        return "ok"

    first = asyncio.create_task(call(guard, busy))
    await clock.settle()
    with pytest.raises(QueueFull) as info:
        await call(guard, ok)
    assert info.value.retry_after == 1.0
    assert isinstance(to_catalogue(info.value), Overloaded)
    assert clock.now() == 0.5
    assert sample(metrics, "keel_rejections_total", provider="cloud", code="overloaded") == 1
    assert sample(metrics, "keel_limiter_in_use", provider="cloud") == 1
    assert await first == ("ok", 1)
    assert sample(metrics, "keel_limiter_in_use", provider="cloud") == 0
    assert sample(metrics, "keel_limiter_queued", provider="cloud") == 0


async def test_diagnostics_are_json_ready() -> None:
    guard, _, _, _ = make()
    await call(guard, ok)
    diag = guard.diagnostics()
    json.dumps(diag)
    assert diag["provider"] == "cloud"
    assert diag["breaker"]["state"] == "closed"
    assert diag["breaker"]["calls"] == 1
    assert diag["retry_budget"]["requests"] == 1
    assert diag["limiter"] == {
        "in_use": 0,
        "queued": 0,
        "max_concurrency": 8,
        "max_queue": 32,
        "max_queue_wait_s": 1.0,
    }


@pytest.mark.parametrize(
    ("error", "counts_as_failure"),
    [
        (UpstreamFailure(status_code=404), False),
        (UpstreamFailure(status_code=429), False),  # backpressure, neither failure nor success
        (UpstreamFailure("connect"), True),
        (ValueError("unexpected"), True),
        (CircuitOpen("nested"), False),
        (CallNotPermitted("nested"), False),
        (QueueFull("nested"), False),
        (Overloaded("nested"), False),
        (UpstreamError("mapped by a provider"), True),
        (ModelNotReady("4xx catalogue error"), False),
    ],
    ids=repr,
)
async def test_what_the_breaker_counts_as_a_failure(
    error: Exception, counts_as_failure: bool
) -> None:
    guard, _, _, _ = make()

    async def failing(_: Deadline) -> str:
        raise error

    with pytest.raises(type(error)):
        await call(guard, failing)
    snap = guard.breaker.snapshot()
    assert (snap.calls, snap.failed_calls) == ((1, 1) if counts_as_failure else (0, 0))
