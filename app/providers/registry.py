"""The lifespan component that builds providers, their guards and the chat service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from app.chat.resilience import build_guard
from app.providers.base import Provider
from app.providers.chat_records import ChatRecords
from app.providers.chat_service import ChatService
from app.providers.local import LocalProvider, local_provider_settings
from app.providers.openai_http import OpenAIHTTPProvider
from app.providers.router import ModelRouter
from app.resilience.guard import ProviderGuard
from app.runtime.component import STATE_KEY as RUNTIME
from app.runtime.manager import RuntimeManager
from app.settings import Settings


def providers_component() -> Callable[[dict[str, Any]], Any]:
    @asynccontextmanager
    async def component(state: dict[str, Any]) -> AsyncIterator[None]:
        settings: Settings = state["settings"]
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
                    metrics=state["metrics"],
                    timeline=state["timeline"],
                    prober=http.probe,
                )
            runtime: RuntimeManager | None = state.get(RUNTIME)
            if runtime is not None:
                name, cfg = local_provider_settings(settings)
                providers[name] = LocalProvider(name, runtime, cfg.models or None)
                guards[name] = build_guard(
                    name,
                    cfg,
                    settings.resilience,
                    metrics=state["metrics"],
                    timeline=state["timeline"],
                )
            router = ModelRouter(
                settings.routes, {n: p.model_names() for n, p in providers.items()}
            )
            state["guards"] = guards
            state["chat"] = ChatService(settings, router, providers, guards, state["metrics"])
            state["chat_records"] = ChatRecords(
                state["db"], state["conversations"], state["idempotency"]
            )
            yield
        finally:
            for guard in guards.values():
                await guard.aclose()  # stops its prober
            for provider in providers.values():
                await provider.aclose()

    return component
