"""Fault scenarios in simulated time: an in-process provider on a ``FakeClock`` and a driver.

A five-minute scenario at 20 requests per second runs in seconds and gives the same figures on
every run: the provider's faults come from a seeded RNG and every wait is virtual. The chat
service, its guards (breaker, retries, budget, throttle, prober, attempt timeout) and the
fallback logic are the production code; only the upstream and the clock are fakes.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.chat.resilience import build_guard
from app.chat.service import ChatService
from app.chat.targets import TargetResolver
from app.errors import KeelError
from app.observability.metrics import Metrics
from app.providers.base import Completion
from app.resilience.clock import FakeClock
from app.resilience.deadline import Deadline
from app.resilience.failures import UpstreamFailure
from app.resilience.guard import ProviderGuard
from app.settings import Settings

HANG_S = 3600.0


@dataclass
class SimProvider:
    """An OpenAI-compatible upstream's behaviour, decided per call from a seeded RNG."""

    name: str
    clock: FakeClock
    seed: int = 1
    latency_s: float = 0.05
    error_rate: float = 0.0
    error_status: int = 503
    retry_after: float | None = None
    hang_rate: float = 0.0
    down: bool = False  # refused: chat and probes fail at once
    calls: list[float] = field(default_factory=list)  # virtual times of chat calls
    probes: list[float] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def model_names(self) -> list[str]:
        return ["m"]

    async def complete(self, body: dict[str, Any], model: str, deadline: Deadline) -> Completion:
        self.calls.append(self.clock.now())
        if self.down:
            raise UpstreamFailure("connect")
        roll = self.rng.random()
        if roll < self.hang_rate:
            await self.clock.sleep(HANG_S)
        await self.clock.sleep(self.latency_s)
        if self.rng.random() < self.error_rate:
            raise UpstreamFailure(status_code=self.error_status, retry_after=self.retry_after)
        self.successes.append(self.clock.now())
        return Completion(json.dumps({"provider": self.name}).encode())

    async def open_stream(self, body: dict[str, Any], model: str, deadline: Deadline) -> Any:
        raise NotImplementedError

    async def probe(self, deadline: Deadline) -> None:
        self.probes.append(self.clock.now())
        if self.down:
            raise UpstreamFailure("connect")

    async def aclose(self) -> None:
        pass


@dataclass
class Outcome:
    started: float
    ended: float
    ok: bool
    code: str | None
    provider: str | None
    attempts: int


class Sim:
    """A chat service over ``SimProvider``s, configured like production from ``Settings``."""

    def __init__(
        self,
        settings: Settings,
        providers: dict[str, SimProvider],
        clock: FakeClock,
        *,
        seed: int = 7,
    ) -> None:
        self.clock = clock
        self.metrics = Metrics()
        self.providers = providers
        self.guards: dict[str, ProviderGuard] = {
            name: build_guard(
                name,
                settings.providers[name],
                settings.resilience,
                metrics=self.metrics,
                clock=clock,
                rng=random.Random(seed + i),
                prober=p.probe,
            )
            for i, (name, p) in enumerate(providers.items())
        }
        targets = TargetResolver(
            settings.routes, {n: p.model_names() for n, p in providers.items()}
        )
        self.chat = ChatService(
            settings, targets, dict(providers), self.guards, self.metrics, clock=clock
        )
        self.outcomes: list[Outcome] = []
        self.opened: list[str] = []
        self.opened_at: list[float] = []
        for guard in self.guards.values():
            guard.breaker.add_listener(self._on_transition)

    def _on_transition(self, name: str, from_state: str, to_state: str, reason: str) -> None:
        if to_state == "open":
            self.opened.append(f"{name} at {self.clock.now():.2f}: {reason}")
            self.opened_at.append(self.clock.now())

    async def request(self, model: str = "chat") -> Outcome:
        started = self.clock.now()
        targets = self.chat.targets.resolve(model)
        deadline = self.chat.deadline_for(targets, None)
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        try:
            answer = await self.chat.complete(body, targets, deadline)
        except KeelError as exc:
            out = Outcome(started, self.clock.now(), False, exc.code, None, 0)
        else:
            out = Outcome(
                started, self.clock.now(), True, None, answer.target.provider, answer.attempts
            )
        self.outcomes.append(out)
        return out

    async def paced(
        self,
        rate_per_s: float,
        duration_s: float,
        *,
        model: str = "chat",
        during: Callable[[float], None] | None = None,
    ) -> list[Outcome]:
        """Open-loop arrivals every ``1/rate`` s for ``duration_s``; ``during(t)`` runs before
        each arrival (to switch faults on and off at given times)."""
        gap = 1.0 / rate_per_s
        tasks: list[asyncio.Task[Outcome]] = []
        start = self.clock.now()
        for i in range(int(duration_s * rate_per_s)):
            at = start + i * gap
            await self.clock.sleep(at - self.clock.now())
            if during is not None:
                during(self.clock.now() - start)
            tasks.append(asyncio.create_task(self.request(model)))
        results = await asyncio.gather(*tasks)
        return list(results)

    async def aclose(self) -> None:
        for guard in self.guards.values():
            await guard.aclose()


def success_rate(outcomes: list[Outcome]) -> float:
    return sum(o.ok for o in outcomes) / len(outcomes)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
