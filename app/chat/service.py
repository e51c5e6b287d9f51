"""Deciding who answers a chat request: targets in order, each behind its guard, one deadline.

Per target: a concurrency slot (held until the answer is delivered, the whole stream included),
then attempts under the breaker and the retry policy with its budget, each attempt bounded by
its time-to-first-byte limit. Any fault of the target (hung, slow, refused, 5xx, throttled,
breaker open, overloaded, a local model cooling down) moves on to the next target; a caller
error (the upstream's 4xx about the request) or the deadline ends the request. A route may hedge
(``[resilience.hedge]``): its second target starts too when the first is slow (``hedge.py``).
Streams count as answered once their first event has arrived: until then a failure may still
retry or fall back, after it nothing is.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from app.chat import hedge
from app.chat.inflight import InFlightRequests
from app.chat.records import ChatRecords
from app.chat.resilience import to_catalogue, upstream_error
from app.chat.targets import Target, TargetResolver
from app.chat.turn import ChatCall, Reply, answer
from app.errors import (
    CapabilityUnavailable,
    CircuitOpen,
    DeadlineExceeded,
    KeelError,
    ModelNotFound,
    RateLimited,
    UpstreamRejected,
)
from app.observability.metrics import Metrics
from app.providers.base import ChatStream, Completion, Provider, RelayProvider
from app.providers.upstream_checks import carries_content
from app.resilience.clock import Clock, MonotonicClock
from app.resilience.deadline import Deadline
from app.resilience.errors import DeadlinePassed, ResilienceError
from app.resilience.failures import UpstreamFailure
from app.resilience.guard import ProviderGuard, Slot
from app.settings import Settings

if TYPE_CHECKING:
    from starlette.types import Receive

log = logging.getLogger("keel.chat")

T = TypeVar("T")


_MAX_HELD_EVENTS = 8  # events without content held back before a stream counts as answered
_MIN_HEDGE_S = 0.05  # a "p95" hedge never fires sooner than this


@dataclass
class _Run:
    """One target's share of a request: attempts made (counted as they start, so a cancelled
    hedge is counted too) and whether another target could still answer."""

    fallback: bool
    attempts: int = 0


@dataclass
class Answer:
    target: Target
    attempts: int
    completion: Completion | None = None
    stream: OpenedStream | None = None


class OpenedStream:
    """A stream whose first event is in hand; closing it releases the slot and the socket."""

    def __init__(self, first: bytes, rest: AsyncIterator[bytes], exit_stack: AsyncExitStack):
        self.first = first  # relayed first; when it ends the stream, ``rest`` is not read
        self.rest = rest
        self._exit = exit_stack

    async def aclose(self) -> None:
        await self._exit.aclose()


class ChatService:
    def __init__(
        self,
        settings: Settings,
        targets: TargetResolver,
        providers: dict[str, Provider],
        guards: dict[str, ProviderGuard],
        metrics: Metrics,
        clock: Clock | None = None,
        records: ChatRecords | None = None,
        inflight: InFlightRequests | None = None,
    ) -> None:
        self.settings = settings
        self.targets = targets
        self.providers = providers
        self.guards = guards
        self.metrics = metrics
        self.clock = clock or MonotonicClock()
        self.records = records
        self.inflight = inflight if inflight is not None else InFlightRequests(metrics)

    async def check_conversation(self, conversation_id: str) -> None:
        """Fail before spending an upstream call on a conversation that does not exist."""
        assert self.records is not None
        await self.records.check_conversation(conversation_id)

    def answer(self, call: ChatCall, receive: Receive) -> Coroutine[Any, Any, Reply]:
        """The whole turn (``app/chat/turn.py``): deadline, idempotency, answer, record.

        Here and below, a layer that only passes a call on returns the callee's coroutine
        instead of awaiting it: every await level is paid again each time the request
        suspends and resumes."""
        assert self.records is not None, "built without records (unit tests call complete())"
        return answer(self, self.records, call, receive)

    def deadline_for(self, targets: list[Target], requested_s: float | None) -> Deadline:
        """The route's default (its first target's ``timeout_s``, else the global default),
        lowered, never raised, by the caller's ``X-Request-Timeout``."""
        first = self.settings.providers.get(targets[0].provider)
        default = (first.timeout_s if first and first.timeout_s else None) or (
            self.settings.resilience.default_timeout_s
        )
        seconds = min(default, requested_s) if requested_s else default
        return Deadline.after(seconds, self.clock)

    def relay_targets(self, model: str, path: str | None) -> list[Target]:
        """``model``'s targets that can serve ``path`` (``None``: chat, which all can)."""
        targets = self.targets.resolve(model)
        if path is None:
            return targets
        able = [t for t in targets if isinstance(self.providers.get(t.provider), RelayProvider)]
        if not able:
            raise ModelNotFound(
                f"No provider behind '{model[:100]}' serves /v1/{path}.", param="model"
            )
        return able

    def complete(
        self,
        body: dict[str, Any],
        targets: list[Target],
        deadline: Deadline,
        path: str | None = None,
    ) -> Coroutine[Any, Any, Answer]:
        """A whole answer; ``path`` relays another OpenAI endpoint (``embeddings``,
        ``completions``) through the same guard, fallbacks and deadline."""

        async def attempt(target: Target, slot: Slot, run: _Run) -> Answer:
            provider = self.providers[target.provider]

            def op(d: Deadline) -> Awaitable[Completion]:
                run.attempts += 1
                if path is not None:
                    return cast(RelayProvider, provider).relay(path, body, target.model, d)
                return provider.complete(body, target.model, d)

            completion, _ = await self.guards[target.provider].run(
                op, deadline, fallback=run.fallback
            )
            return Answer(target, 0, completion=completion)

        return self._first_answer(targets, deadline, attempt)

    async def open_stream(
        self,
        body: dict[str, Any],
        targets: list[Target],
        deadline: Deadline,
        path: str | None = None,
    ) -> Answer:
        async def open_and_peek(
            target: Target, d: Deadline, run: _Run
        ) -> tuple[ChatStream, bytes, AsyncIterator[bytes]]:
            run.attempts += 1
            provider = self.providers[target.provider]
            stream = await (
                provider.open_stream(body, target.model, d)
                if path is None
                else cast(RelayProvider, provider).open_relay_stream(path, body, target.model, d)
            )
            # The gaps between events are bounded by the idle limit and the request's deadline;
            # the first event by ``d``, which is also the attempt's time-to-first-byte limit.
            idle = min(self._stream_idle_s(target), max(deadline.remaining(), 0.001))
            events = stream.events(idle)
            try:
                async with d.bound():
                    first = await anext(events)
                    # Hold back events with nothing of the answer (a role-only delta): an
                    # in-band error right after them still retries or falls back.
                    held: list[bytes] = []
                    while not carries_content(first) and len(held) < _MAX_HELD_EVENTS:
                        held.append(first)
                        first = await anext(events)
                    if held:
                        first, events = held[0], _chain([*held[1:], first], events)
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

        async def attempt(target: Target, slot: Slot, run: _Run) -> Answer:
            (stream, first, rest), _ = await self.guards[target.provider].run(
                lambda d: open_and_peek(target, d, run), deadline, fallback=run.fallback
            )
            # Hand the slot and the socket to the stream: released when the client is done.
            owned = AsyncExitStack()
            owned.push_async_callback(slot.hand_off())
            owned.push_async_callback(stream.aclose)
            return Answer(target, 0, stream=OpenedStream(first, rest, owned))

        return await self._first_answer(targets, deadline, attempt)

    def _stream_idle_s(self, target: Target) -> float:
        cfg = self.settings.providers.get(target.provider)
        override = cfg.stream_idle_s if cfg is not None else None
        return override or self.settings.resilience.stream_idle_s

    def _hedge_delay(self, targets: list[Target]) -> float | None:
        """Seconds before the second target starts too, when the route asks for hedging."""
        if len(targets) < 2:
            return None
        for route, delay in self.settings.resilience.hedge.items():
            if self.targets.routes.get(route) == targets:
                if delay != "p95":
                    return delay
                guard = self.guards[targets[0].provider]
                observed = guard.latency_quantile(0.95)
                if observed is None:  # too few samples yet: half the attempt timeout
                    return (guard.config.attempt_timeout_s or 2.0) / 2
                return max(observed, _MIN_HEDGE_S)
        return None

    async def _first_answer(
        self,
        targets: list[Target],
        deadline: Deadline,
        attempt: Callable[[Target, Slot, _Run], Awaitable[Answer]],
    ) -> Answer:
        errors: list[KeelError] = []
        runs: list[_Run] = []

        def start(index: int) -> Callable[[], Awaitable[Answer | KeelError]]:
            run = _Run(fallback=index < len(targets) - 1)
            runs.append(run)
            return lambda: self._try_target(targets[index], deadline, attempt, run)

        def cost() -> int:
            total = 0
            for r in runs:
                total += r.attempts
            return total

        index = 0
        try:
            delay = self._hedge_delay(targets)
            if delay is not None:
                raced = await hedge.race(
                    start(0),
                    start(1),
                    delay,
                    self.clock,
                    may_hedge=self.guards[targets[0].provider].budget.try_spend_retry,
                    succeeded=lambda r: isinstance(r, Answer),
                    discard=_discard,
                    on_hedge=lambda outcome: self.metrics.hedges.labels(
                        provider=targets[1].provider, outcome=outcome
                    ).inc(),
                )
                won = raced.results[0] if raced.winner is not None else None
                if isinstance(won, Answer) and raced.winner is not None:
                    return self._answered(won, raced.winner, targets, cost())
                errors.extend(r for r in raced.results if isinstance(r, KeelError))
                index = 2 if raced.hedged else 1
            for i in range(index, len(targets)):
                if deadline.expired:
                    break
                result = await start(i)()
                if isinstance(result, Answer):
                    return self._answered(result, i, targets, cost())
                errors.append(result)
        except KeelError as exc:
            raise _costed(exc, cost()) from None
        if deadline.expired:
            raise _costed(
                DeadlineExceeded("The request deadline passed before any target answered."),
                cost(),
            )
        raise _costed(self._final_error(errors), cost())

    def _answered(self, result: Answer, index: int, targets: list[Target], cost: int) -> Answer:
        result.attempts = cost
        if index > 0:
            self.metrics.fallbacks.labels(route=targets[0].provider).inc()
        return result

    async def _try_target(
        self,
        target: Target,
        deadline: Deadline,
        attempt: Callable[[Target, Slot, _Run], Awaitable[Answer]],
        run: _Run,
    ) -> Answer | KeelError:
        """One target's answer, or the error to fall back from when the fault is the target's
        (hung, slow, refused, 5xx, throttled, breaker open, overloaded, refused credentials, a
        local model cooling down). Raises what no other target can fix: the caller's own
        mistake (the upstream's 4xx about the request) and the deadline."""
        guard = self.guards[target.provider]
        try:
            async with guard.slot(deadline) as slot:
                return await attempt(target, slot, run)
        except UpstreamFailure as exc:
            mapped = upstream_error(exc, deadline, target.id)
            error: KeelError = mapped
            if isinstance(mapped, UpstreamRejected | DeadlineExceeded):
                raise mapped from exc
        except DeadlinePassed as exc:
            raise to_catalogue(exc) from None
        except ResilienceError as exc:  # a refusal: the next target may still answer
            error = to_catalogue(exc)
        except KeelError as exc:  # raised by a provider itself (a local model, say)
            caller_fault = exc.status_code < 500 and not exc.retryable
            if caller_fault or isinstance(exc, UpstreamRejected | DeadlineExceeded):
                raise
            error = exc
        log.info("target failed, falling back", extra={"target": target.id, "code": error.code})
        return error

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


async def _discard(result: Answer | KeelError) -> None:
    if isinstance(result, Answer) and result.stream is not None:
        await result.stream.aclose()


async def _chain(head: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for event in head:
        yield event
    async for event in rest:
        yield event
