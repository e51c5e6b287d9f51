"""Retry executor: classification, attempts, deadline, Retry-After, budget, cancellation."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from app.resilience.budget import RetryBudget
from app.resilience.clock import FakeClock
from app.resilience.config import RetryConfig
from app.resilience.deadline import Deadline
from app.resilience.errors import CallNotPermitted, DeadlinePassed
from app.resilience.failures import UpstreamFailure, classify, is_caller_error
from app.resilience.retry import Retrier, RetryPolicy


class Recorder:
    def __init__(self) -> None:
        self.attempts: list[tuple[int, str]] = []
        self.retries: list[tuple[str, float]] = []
        self.give_ups: list[tuple[str, str]] = []

    def on_attempt(self, number: int, outcome: str) -> None:
        self.attempts.append((number, outcome))

    def on_retry(self, reason: str, delay: float) -> None:
        self.retries.append((reason, delay))

    def on_give_up(self, reason: str, why: str) -> None:
        self.give_ups.append((reason, why))


def make(
    clock: FakeClock, *, max_attempts: int = 3, budget: RetryBudget | None = None
) -> tuple[Retrier, Recorder]:
    rec = Recorder()
    policy = RetryPolicy(max_attempts=max_attempts, base_delay_s=0.1, max_delay_s=5.0)
    return Retrier(policy, clock, budget=budget, rng=random.Random(42), observer=rec), rec


def scripted(
    clock: FakeClock, outcomes: list[BaseException | str], took: float = 0.0
) -> tuple[Callable[[Deadline], Awaitable[str]], list[float]]:
    """An operation that plays ``outcomes`` in order and logs when each attempt started."""
    starts: list[float] = []

    async def op(_: Deadline) -> str:
        starts.append(clock.now())
        if took:
            await clock.sleep(took)
        outcome = outcomes[len(starts) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return op, starts


async def test_succeeds_after_transient_failures() -> None:
    clock = FakeClock()
    retrier, rec = make(clock)
    op, starts = scripted(clock, [UpstreamFailure("connect"), TimeoutError(), "ok"])
    result, attempts = await retrier.run(op, Deadline.after(30, clock))
    assert (result, attempts) == ("ok", 3)
    assert rec.attempts == [(1, "connect"), (2, "timeout"), (3, "success")]
    assert [r for r, _ in rec.retries] == ["connect", "timeout"]
    # Full jitter: the n-th wait lies in [0, base * 2**n].
    assert 0 <= starts[1] - starts[0] <= 0.1
    assert 0 <= starts[2] - starts[1] <= 0.2


@pytest.mark.parametrize(
    "error",
    [
        UpstreamFailure(status_code=400),
        UpstreamFailure(status_code=401),
        UpstreamFailure(status_code=404),
        UpstreamFailure(status_code=501),
        UpstreamFailure("bad_response"),
        ValueError("bug"),
        CallNotPermitted("open"),
        UpstreamFailure(status_code=503, committed=True),
        UpstreamFailure("reset", committed=True),
    ],
    ids=repr,
)
async def test_non_retryable_errors_fail_fast_after_one_attempt(error: Exception) -> None:
    clock = FakeClock()
    retrier, rec = make(clock)
    op, starts = scripted(clock, [error, "never"])
    with pytest.raises(type(error)) as info:
        await retrier.run(op, Deadline.after(30, clock))
    assert info.value is error
    assert len(starts) == 1
    assert rec.retries == []
    assert clock.now() == 0


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retryable_statuses_stop_at_max_attempts(status: int) -> None:
    clock = FakeClock()
    retrier, rec = make(clock, max_attempts=4)
    errors: list[BaseException | str] = [UpstreamFailure(status_code=status) for _ in range(5)]
    op, starts = scripted(clock, errors)
    with pytest.raises(UpstreamFailure) as info:
        await retrier.run(op, Deadline.after(60, clock))
    assert info.value is errors[3]  # the last error, not a wrapper
    assert len(starts) == 4
    assert rec.give_ups == [(f"status_{status}", "attempts")]


async def test_never_starts_an_attempt_past_the_deadline() -> None:
    clock = FakeClock()
    retrier, _ = make(clock, max_attempts=10)
    deadline = Deadline.after(2.0, clock)
    op, starts = scripted(clock, [UpstreamFailure("timeout")] * 10, took=0.6)
    with pytest.raises((UpstreamFailure, DeadlinePassed)):
        await retrier.run(op, deadline)
    assert starts
    assert all(s + retrier.policy.min_attempt_s <= deadline.at for s in starts)
    assert clock.now() <= deadline.at


async def test_an_attempt_is_cut_at_the_deadline() -> None:
    clock = FakeClock()
    retrier, rec = make(clock)
    op, starts = scripted(clock, ["too late"], took=10)
    with pytest.raises(DeadlinePassed):
        await retrier.run(op, Deadline.after(1, clock))
    assert len(starts) == 1
    assert clock.now() == 1
    assert rec.attempts == [(1, "deadline")]


async def test_no_attempt_when_the_deadline_cannot_fit_one() -> None:
    clock = FakeClock()
    retrier, _ = make(clock)
    op, starts = scripted(clock, ["ok"])
    with pytest.raises(DeadlinePassed):
        await retrier.run(op, Deadline.after(0.01, clock))
    assert starts == []


async def test_retry_after_is_honoured() -> None:
    clock = FakeClock()
    retrier, rec = make(clock)
    op, starts = scripted(clock, [UpstreamFailure(status_code=429, retry_after=2.5), "ok"])
    assert await retrier.run(op, Deadline.after(30, clock)) == ("ok", 2)
    assert 2.5 <= starts[1] - starts[0] <= 5.0  # the pause, then jitter over as much again
    assert rec.retries == [("status_429", starts[1] - starts[0])]


async def test_retry_after_beyond_the_deadline_ends_retrying_with_the_last_error() -> None:
    clock = FakeClock()
    retrier, rec = make(clock)
    error = UpstreamFailure(status_code=503, retry_after=10)
    op, starts = scripted(clock, [error, "ok"])
    with pytest.raises(UpstreamFailure) as info:
        await retrier.run(op, Deadline.after(5, clock))
    assert info.value is error
    assert len(starts) == 1
    assert clock.now() == 0  # it did not wait for nothing
    assert rec.give_ups == [("status_503", "deadline")]


async def test_cancellation_is_never_retried() -> None:
    clock = FakeClock()
    retrier, rec = make(clock)
    op, starts = scripted(clock, [asyncio.CancelledError(), "ok"])
    with pytest.raises(asyncio.CancelledError):
        await retrier.run(op, Deadline.after(30, clock))
    assert len(starts) == 1
    assert rec.attempts == [(1, "cancelled")]


async def test_cancellation_during_backoff_stops_everything() -> None:
    clock = FakeClock(auto_advance=False)
    retrier, _ = make(clock)
    op, starts = scripted(clock, [UpstreamFailure(status_code=503, retry_after=3), "ok"])
    task = asyncio.create_task(retrier.run(op, Deadline.after(30, clock)))
    await clock.settle()
    assert len(starts) == 1
    assert clock.pending >= 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    clock.advance(10)
    await clock.settle()
    assert len(starts) == 1
    assert clock.pending == 0


async def test_budget_refusal_raises_the_last_error_and_is_reported() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_s=0.1, window_s=10, clock=clock)  # one retry
    retrier, rec = make(clock, budget=budget)
    op, starts = scripted(clock, [UpstreamFailure("reset")] * 3)
    with pytest.raises(UpstreamFailure):
        await retrier.run(op, Deadline.after(30, clock))
    assert len(starts) == 2
    assert rec.give_ups == [("reset", "budget")]
    assert budget.exhausted == 1
    assert budget.snapshot()["requests"] == 1


async def test_policy_from_config() -> None:
    policy = RetryPolicy.from_config(RetryConfig(max_attempts=5, base_delay_s=0.2))
    assert (policy.max_attempts, policy.base_delay_s, policy.max_delay_s) == (5, 0.2, 5.0)


def test_classification_table() -> None:
    assert classify(UpstreamFailure("connect")).retryable
    assert classify(UpstreamFailure("timeout")).retryable
    assert classify(UpstreamFailure("reset")).retryable
    assert not classify(UpstreamFailure("bad_response")).retryable
    c = classify(UpstreamFailure(status_code=429, retry_after=3))
    assert (c.retryable, c.reason, c.retry_after) == (True, "status_429", 3)
    assert classify(TimeoutError()).reason == "timeout"
    assert classify(ConnectionResetError()).reason == "reset"
    assert classify(ConnectionRefusedError()).reason == "connect"
    assert not classify(asyncio.CancelledError()).retryable
    assert not classify(DeadlinePassed()).retryable
    assert classify(CallNotPermitted("open")).reason == "circuit_open"
    assert classify(RuntimeError()).reason == "error"
    assert is_caller_error(UpstreamFailure(status_code=400))
    assert is_caller_error(UpstreamFailure(status_code=422))
    assert not is_caller_error(UpstreamFailure(status_code=429))
    assert not is_caller_error(UpstreamFailure(status_code=408))
    assert not is_caller_error(UpstreamFailure(status_code=500))
    assert not is_caller_error(ValueError())
