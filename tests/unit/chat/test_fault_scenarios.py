"""Issue 14's fault scenarios in simulated time (FakeClock, seeded faults): the production chat
service, guards and settings defaults against an in-process upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from app.errors import ModelNotReady
from app.providers.base import Completion
from app.resilience.clock import FakeClock
from app.resilience.deadline import Deadline
from app.settings import Settings
from tests.fakes.sim import Sim, SimProvider, quantile, success_rate


def provider(**overrides: Any) -> dict[str, Any]:
    return {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "models": ["m"], **overrides}


async def test_15_percent_503s_for_five_minutes_never_open_the_breaker(
    make_settings: Callable[..., Settings],
) -> None:
    clock = FakeClock()
    cloud = SimProvider("cloud", clock, seed=15, error_rate=0.15)
    settings = make_settings(providers={"cloud": provider()}, routes={"chat": ["cloud/m"]})
    sim = Sim(settings, {"cloud": cloud}, clock)
    outcomes = await sim.paced(20, 300)  # 6,000 requests over five simulated minutes
    await sim.aclose()
    assert sim.opened == []
    assert success_rate(outcomes) >= 0.995, success_rate(outcomes)
    assert len(cloud.calls) / len(outcomes) <= 1.25
    assert sim.guards["cloud"].breaker.state.value == "closed"


async def test_30_percent_429s_are_backpressure_not_failures(
    make_settings: Callable[..., Settings],
) -> None:
    clock = FakeClock()
    cloud = SimProvider("cloud", clock, seed=30, error_rate=0.3, error_status=429, retry_after=1)
    settings = make_settings(providers={"cloud": provider()}, routes={"chat": ["cloud/m"]})
    sim = Sim(settings, {"cloud": cloud}, clock)
    outcomes = await sim.paced(400 / 60, 60)  # 400 requests paced over 60 s, no fallback
    await sim.aclose()
    assert sim.opened == []
    assert success_rate(outcomes) >= 0.95, success_rate(outcomes)
    snap = sim.guards["cloud"].breaker.snapshot()
    assert snap.failed_calls == 0  # a 429 is not a failure ...
    assert sim.guards["cloud"].throttle.pauses > 0  # ... it is a pause


async def test_hangs_with_a_fallback_cost_one_attempt_timeout(
    make_settings: Callable[..., Settings],
) -> None:
    clock = FakeClock()
    cloud = SimProvider("cloud", clock, seed=20, hang_rate=0.2, latency_s=0.1)
    local = SimProvider("local", clock, seed=21, latency_s=0.2)
    settings = make_settings(
        providers={"cloud": provider(attempt_timeout_s=2.0), "local": provider()},
        routes={"chat": ["cloud/m", "local/m"]},
    )
    sim = Sim(settings, {"cloud": cloud, "local": local}, clock)
    outcomes = await sim.paced(8, 50)
    await sim.aclose()
    assert success_rate(outcomes) >= 0.99
    hung = [o for o in outcomes if o.provider == "local"]
    assert len(hung) > 0.1 * len(outcomes)  # the hung ones were answered by the fallback
    latencies = [o.ended - o.started for o in outcomes]
    assert quantile(latencies, 0.99) <= 2.0 + 0.2 + 1e-6  # attempt timeout + fallback latency
    assert sim.opened == []


async def test_an_outage_is_probed_not_hammered_and_recovery_is_seen_within_a_second(
    make_settings: Callable[..., Settings],
) -> None:
    clock = FakeClock()
    cloud = SimProvider("cloud", clock, seed=5, latency_s=0.02)
    settings = make_settings(providers={"cloud": provider()}, routes={"chat": ["cloud/m"]})
    sim = Sim(settings, {"cloud": cloud}, clock)
    outage = (10.0, 30.0)

    def faults(t: float) -> None:
        cloud.down = outage[0] <= t < outage[1]

    await sim.paced(20, 45, during=faults)
    await sim.aclose()
    assert len(sim.opened) == 1, sim.opened  # opened once; probes, not trials, found it back
    opened_at = sim.opened_at[0]
    assert outage[0] < opened_at < outage[1]
    during_open = [t for t in cloud.calls if opened_at < t < outage[1]]
    probes = [t for t in cloud.probes if opened_at < t < outage[1]]
    assert during_open == []  # no user request reached the dead provider while open
    assert len(probes) <= (outage[1] - opened_at) / 1.0 + 1  # at most one probe per second
    first_success = min(t for t in cloud.successes if t >= outage[1])
    assert first_success - outage[1] <= 1.0, first_success - outage[1]


class _NotReady(SimProvider):
    async def complete(self, body: dict[str, Any], model: str, deadline: Deadline) -> Completion:
        self.calls.append(self.clock.now())
        raise ModelNotReady("The local model is cooling down after a crash.", retry_after=5)


@pytest.mark.parametrize(
    "fault",
    ["refused", "5xx", "throttled", "hung", "breaker_open", "overloaded", "model_cooling_down"],
)
async def test_every_fault_of_the_target_falls_back(
    make_settings: Callable[..., Settings], fault: str
) -> None:
    clock = FakeClock()
    first: SimProvider = SimProvider("first", clock, seed=1)
    if fault == "model_cooling_down":
        first = _NotReady("first", clock)
    backup = SimProvider("backup", clock, seed=2)
    first_cfg = provider(attempt_timeout_s=1.0, max_concurrency=1, max_queue_wait_s=0)
    settings = make_settings(
        providers={"first": first_cfg, "backup": provider()},
        routes={"chat": ["first/m", "backup/m"]},
    )
    sim = Sim(settings, {"first": first, "backup": backup}, clock)
    blocker = None
    if fault == "refused":
        first.down = True
    elif fault == "5xx":
        first.error_rate = 1.0
    elif fault == "throttled":
        first.error_rate, first.error_status, first.retry_after = 1.0, 429, 2.0
    elif fault == "hung":
        first.hang_rate = 1.0
    elif fault == "breaker_open":
        sim.guards["first"].breaker.force_open()
    elif fault == "overloaded":
        first.latency_s = 10.0  # one long request holds the only slot; the next finds none
        blocker = asyncio.create_task(sim.request())
        await clock.settle()
    out = await sim.request()
    assert out.ok, out
    assert out.provider == "backup"
    if blocker is not None:
        await blocker
    await sim.aclose()


@pytest.mark.parametrize("budget", [True, False])
async def test_a_hedge_is_paid_from_the_retry_budget(
    make_settings: Callable[..., Settings], budget: bool
) -> None:
    clock = FakeClock()
    slow = SimProvider("slow", clock, seed=1, latency_s=5.0)
    fast = SimProvider("fast", clock, seed=2, latency_s=0.1)
    retry = {} if budget else {"budget_ratio": 0, "budget_min_per_s": 0}
    settings = make_settings(
        providers={"slow": provider(retry=retry), "fast": provider()},
        routes={"chat": ["slow/m", "fast/m"]},
        resilience={"hedge": {"chat": 0.5}},
    )
    sim = Sim(settings, {"slow": slow, "fast": fast}, clock)
    out = await sim.request()
    await sim.aclose()
    assert out.ok
    if budget:
        assert (out.provider, out.attempts) == ("fast", 2)
        assert out.ended - out.started == pytest.approx(0.6)  # hedge delay + the fast answer
    else:  # no budget, no hedge: the slow answer
        assert (out.provider, out.attempts, len(fast.calls)) == ("slow", 1, 0)


async def test_a_p95_hedge_follows_the_first_targets_observed_latency(
    make_settings: Callable[..., Settings],
) -> None:
    clock = FakeClock()
    first = SimProvider("first", clock, seed=1, latency_s=0.2)
    backup = SimProvider("backup", clock, seed=2, latency_s=0.1)
    settings = make_settings(
        providers={"first": provider(attempt_timeout_s=4.0), "backup": provider()},
        routes={"chat": ["first/m", "backup/m"]},
        resilience={"hedge": {"chat": "p95"}},
    )
    sim = Sim(settings, {"first": first, "backup": backup}, clock)
    # Too few samples yet: the hedge waits half the attempt timeout.
    assert sim.chat._hedge_delay(sim.chat.targets.resolve("chat")) == 2.0
    for _ in range(30):
        assert (await sim.request()).provider == "first"
    assert sim.chat._hedge_delay(sim.chat.targets.resolve("chat")) == pytest.approx(0.2)
    first.latency_s = 3.0  # the first target turns slow: the hedge starts after its p95
    out = await sim.request()
    await sim.aclose()
    assert (out.provider, out.attempts) == ("backup", 2)
    assert out.ended - out.started == pytest.approx(0.3)
