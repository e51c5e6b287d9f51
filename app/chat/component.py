"""The lifespan component that builds providers, their guards and the chat service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from app.chat.inflight import InFlightRequests
from app.chat.records import ChatRecords
from app.chat.resilience import build_guard
from app.chat.service import ChatService
from app.chat.targets import TargetResolver
from app.providers.base import Provider
from app.providers.local import LocalProvider, local_provider_settings
from app.providers.openai_http import OpenAIHTTPProvider
from app.resilience.clock import Clock
from app.resilience.guard import ProviderGuard
from app.runtime.manager import RuntimeManager
from app.store.component import Store


@dataclass(frozen=True, slots=True)
class ChatInputs:
    store: Store
    runtime: RuntimeManager | None = None


@dataclass(frozen=True, slots=True)
class Chat:
    """The chat component's resources."""

    service: ChatService
    guards: Mapping[str, ProviderGuard]
    inflight: InFlightRequests


class ChatComponent:
    """Tests inject the guards' clock: ``ChatComponent(clock=...)``."""

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock = clock

    def __call__(self, inputs: ChatInputs) -> AbstractAsyncContextManager[Chat]:
        return _chat(inputs, self.clock)


@asynccontextmanager
async def _chat(inputs: ChatInputs, clock: Clock | None) -> AsyncIterator[Chat]:
    store = inputs.store
    core = store.core
    settings = core.settings
    providers: dict[str, Provider] = {}
    guards: dict[str, ProviderGuard] = {}
    try:
        for name, cfg in settings.providers.items():
            if cfg.kind != "openai":
                continue  # the local runtime joins below
            http = OpenAIHTTPProvider(
                name, cfg, max_retry_after_s=settings.resilience.max_throttle_s
            )
            providers[name] = http
            guards[name] = build_guard(
                name,
                cfg,
                settings.resilience,
                metrics=core.metrics,
                timeline=core.timeline,
                clock=clock,
                prober=http.probe,
            )
        if inputs.runtime is not None:
            name, local_cfg = local_provider_settings(settings)
            providers[name] = LocalProvider(name, inputs.runtime, local_cfg.models or None)
            guards[name] = build_guard(
                name,
                local_cfg,
                settings.resilience,
                metrics=core.metrics,
                timeline=core.timeline,
                clock=clock,
            )
        targets = TargetResolver(
            settings.routes, {n: p.model_names() for n, p in providers.items()}
        )
        records = ChatRecords(store.db, store.conversations, store.idempotency)
        inflight = InFlightRequests(core.metrics)
        service = ChatService(
            settings, targets, providers, guards, core.metrics, records=records, inflight=inflight
        )
        yield Chat(service, guards, inflight)
    finally:
        for guard in guards.values():
            await guard.aclose()  # stops its prober
        for provider in providers.values():
            await provider.aclose()
