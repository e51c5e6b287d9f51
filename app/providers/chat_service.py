"""Deciding who answers a chat request: targets in order, each behind its guard, one deadline.

Per target: a concurrency slot (held until the answer is delivered, the whole stream included),
then attempts under the breaker and the retry policy with its budget. A retryable failure, an
exhausted budget, an open circuit or a full queue moves on to the next target; a caller error
(the upstream's 4xx) or the deadline ends the request. Streams count as answered once their
first event has arrived: until then a failure may still retry or fall back, after it nothing is.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

from app.chat.resilience import to_catalogue, upstream_error
from app.errors import (
    CapabilityUnavailable,
    CircuitOpen,
    DeadlineExceeded,
    KeelError,
    Overloaded,
    RateLimited,
    RetryBudgetExhausted,
    UpstreamRejected,
)
from app.observability.metrics import Metrics
from app.providers.base import ChatStream, Completion, Provider
from app.providers.router import ModelRouter, Target
from app.resilience.clock import Clock, MonotonicClock
from app.resilience.deadline import Deadline
from app.resilience.errors import DeadlinePassed, ResilienceError
from app.resilience.failures import UpstreamFailure
from app.resilience.guard import ProviderGuard
from app.settings import Settings

log = logging.getLogger("keel.chat")

T = TypeVar("T")


@dataclass
class Answer:
    target: Target
    attempts: int
    completion: Completion | None = None
    stream: OpenedStream | None = None


class OpenedStream:
    """A stream whose first event is in hand; closing it releases the slot and the socket."""

    def __init__(self, first: bytes, rest: AsyncIterator[bytes], exit_stack: AsyncExitStack):
        self.first = first
        self._rest = rest
        self._exit = exit_stack

    async def events(self) -> AsyncIterator[bytes]:
        yield self.first
        if self.first.startswith(b"data: [DONE]"):
            return
        async for event in self._rest:
            yield event

    async def aclose(self) -> None:
        await self._exit.aclose()


class ChatService:
    def __init__(
        self,
        settings: Settings,
        router: ModelRouter,
        providers: dict[str, Provider],
        guards: dict[str, ProviderGuard],
        metrics: Metrics,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.providers = providers
        self.guards = guards
        self.metrics = metrics
        self.clock = clock or MonotonicClock()

    def deadline_for(self, targets: list[Target], requested_s: float | None) -> Deadline:
        """The route's default (its first target's ``timeout_s``, else the global default),
        lowered, never raised, by the caller's ``X-Request-Timeout``."""
        first = self.settings.providers.get(targets[0].provider)
        default = (first.timeout_s if first and first.timeout_s else None) or (
            self.settings.resilience.default_timeout_s
        )
        seconds = min(default, requested_s) if requested_s else default
        return Deadline.after(seconds, self.clock)

    async def complete(
        self, body: dict[str, Any], targets: list[Target], deadline: Deadline
    ) -> Answer:
        async def attempt(target: Target, stack: AsyncExitStack) -> Answer:
            provider = self.providers[target.provider]
            completion, attempts = await self.guards[target.provider].run(
                lambda d: provider.complete(body, target.model, d), deadline
            )
            return Answer(target, attempts, completion=completion)

        return await self._first_answer(targets, deadline, attempt)

    async def open_stream(
        self, body: dict[str, Any], targets: list[Target], deadline: Deadline
    ) -> Answer:
        idle = min(self.settings.resilience.stream_idle_s, max(deadline.remaining(), 0.001))

        async def open_and_peek(
            target: Target, d: Deadline
        ) -> tuple[ChatStream, bytes, AsyncIterator[bytes]]:
            stream = await self.providers[target.provider].open_stream(body, target.model, d)
            events = stream.events(min(idle, max(d.remaining(), 0.001)))
            try:
                first = await anext(events)
            except StopAsyncIteration:
                await stream.aclose()
                raise UpstreamFailure("stream_empty") from None
            except UpstreamFailure as exc:
                await stream.aclose()
                # Nothing reached the client yet: this failure may still retry or fall back.
                raise UpstreamFailure(exc.reason, status_code=exc.status_code) from exc
            except BaseException:
                await stream.aclose()
                raise
            return stream, first, events

        async def attempt(target: Target, stack: AsyncExitStack) -> Answer:
            (stream, first, rest), attempts = await self.guards[target.provider].run(
                lambda d: open_and_peek(target, d), deadline
            )
            # Hand the slot and the socket to the stream: released when the client is done.
            owned = stack.pop_all()
            owned.push_async_callback(stream.aclose)
            return Answer(target, attempts, stream=OpenedStream(first, rest, owned))

        return await self._first_answer(targets, deadline, attempt)

    async def _first_answer(
        self,
        targets: list[Target],
        deadline: Deadline,
        attempt: Callable[[Target, AsyncExitStack], Awaitable[Answer]],
    ) -> Answer:
        errors: list[KeelError] = []
        attempts = 0
        for index, target in enumerate(targets):
            if deadline.expired:
                break
            guard = self.guards[target.provider]
            try:
                async with AsyncExitStack() as stack:
                    await stack.enter_async_context(guard.slot(deadline))
                    answer = await attempt(target, stack)
                answer.attempts += attempts
                if index > 0:
                    self.metrics.fallbacks.labels(route=targets[0].provider).inc()
                return answer
            except UpstreamFailure as exc:
                attempts += exc.attempts
                mapped = upstream_error(exc, deadline, target.id)
                if isinstance(mapped, UpstreamRejected | DeadlineExceeded):
                    raise _costed(mapped, attempts) from exc
                errors.append(mapped)
            except (CircuitOpen, Overloaded, RetryBudgetExhausted) as exc:
                errors.append(exc)
            except DeadlinePassed as exc:
                raise _costed(to_catalogue(exc), attempts) from None
            except ResilienceError as exc:  # a refusal: the next target may still answer
                errors.append(to_catalogue(exc))
            except DeadlineExceeded as exc:
                _costed(exc, attempts)
                raise
            log.info(
                "target failed, falling back", extra={"target": target.id, "code": errors[-1].code}
            )
        if deadline.expired:
            raise _costed(
                DeadlineExceeded("The request deadline passed before any target answered."),
                attempts,
            )
        raise _costed(self._final_error(errors), attempts)

    @staticmethod
    def _final_error(errors: list[KeelError]) -> KeelError:
        if len(errors) == 1:
            return errors[0]
        if errors and all(isinstance(e, CircuitOpen) for e in errors):
            wait = min(e.retry_after or 1.0 for e in errors)
            return CircuitOpen("Every target's circuit is open.", retry_after=wait)
        if errors and all(isinstance(e, RateLimited) for e in errors):
            waits = [e.retry_after for e in errors if e.retry_after]
            return RateLimited(
                "Every provider for this model is rate limiting Keel.",
                retry_after=min(waits) if waits else None,
            )
        waits = [e.retry_after for e in errors if e.retry_after]
        return CapabilityUnavailable(
            "No target could answer this request.",
            retry_after=min(waits) if waits else 1.0,
            extra={"causes": sorted({e.code for e in errors})},
        )


def _costed(exc: KeelError, attempts: int) -> KeelError:
    """Tell the caller what the failure cost upstream, so it can see Keel already retried."""
    exc.headers.setdefault("X-Keel-Attempts", str(attempts))
    return exc
