"""The application factory and its lifespan, which owns every long-lived resource.

``uvicorn --factory app.main:create_app`` builds the app from the environment when called;
``app.main:app`` still works, built on first access, so importing this module reads nothing.
The lifespan enters the components (store, lifecycle, chat) in order, each built from what the
earlier ones yield, and closes them in reverse on shutdown; the result is one typed
``AppState`` (``app/state.py``) that routes reach through ``app/api/deps.py``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from app.api import chat, conversations, diagnostics, health, readiness, relay, ui
from app.api import lifecycle as lifecycle_api
from app.api import runtime as runtime_api
from app.api.direct import DirectRoutes, KeelAPI
from app.api.edge import EdgePolicy
from app.api.middleware import KeelMiddleware
from app.api.openapi import install_openapi
from app.api.problems import install_error_handlers
from app.chat.component import Chat, ChatComponent, ChatInputs
from app.core import Component, Core, TaskGroup
from app.lifecycle.component import LifecycleComponent
from app.lifecycle.service import LifecycleService
from app.observability.logging import configure_logging
from app.observability.metrics import Metrics
from app.observability.timeline import Timeline
from app.readiness.component import ReadinessComponent, ReadinessInputs
from app.readiness.service import ReadinessService
from app.runtime.component import ReadinessView, RuntimeComponent, RuntimeInputs
from app.runtime.manager import RuntimeManager
from app.settings import ConfigError, Settings, load_settings
from app.state import AppState, lifespan_state
from app.store.component import Store, store_component

log = logging.getLogger("keel")


@dataclass(frozen=True, slots=True)
class Components:
    """The parts the lifespan enters, in this order; tests swap one with ``replace()``."""

    store: Component[Core, Store] = store_component
    lifecycle: Component[Store, LifecycleService] = field(default_factory=LifecycleComponent)
    runtime: Component[RuntimeInputs, RuntimeManager] = field(default_factory=RuntimeComponent)
    chat: Component[ChatInputs, Chat] = field(default_factory=ChatComponent)
    readiness: Component[ReadinessInputs, ReadinessService] = field(
        default_factory=ReadinessComponent
    )


def create_app(
    settings: Settings | None = None,
    components: Components | None = None,
    *,
    on_ready: Callable[[], None] | None = None,
) -> FastAPI:
    """Build the app (from the environment when ``settings`` is None). ``on_ready`` runs once
    every component is up, before the first request (``keel serve`` tunes the GC there)."""
    if settings is None:
        settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    metrics = Metrics()
    timeline = Timeline(settings.timeline_size)
    parts = components or Components()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, AppState]]:
        tasks = TaskGroup()
        core = Core(settings, metrics, timeline, tasks)
        async with AsyncExitStack() as stack:
            try:
                store = await stack.enter_async_context(parts.store(core))
                lifecycle = await stack.enter_async_context(parts.lifecycle(store))
                runtime = await stack.enter_async_context(
                    parts.runtime(RuntimeInputs(store, lifecycle))
                )
                chat_parts = await stack.enter_async_context(parts.chat(ChatInputs(store, runtime)))
                ready = await stack.enter_async_context(
                    parts.readiness(
                        ReadinessInputs(store, lifecycle, chat_parts.guards, ReadinessView(runtime))
                    )
                )
            except BaseException:
                await tasks.aclose()
                raise
            # Every background task lives in this group. It is closed first on the way out
            # (registered last), so no task outlives the engine or the clients.
            stack.push_async_callback(tasks.aclose)
            state = AppState(
                settings=settings,
                metrics=metrics,
                timeline=timeline,
                tasks=tasks,
                db=store.db,
                schema_error=store.schema_error,
                idempotency=store.idempotency,
                conversations=store.conversations,
                lifecycle=lifecycle,
                runtime=runtime,
                chat=chat_parts.service,
                guards=chat_parts.guards,
                readiness=ready,
                inflight=chat_parts.inflight,
            )
            if on_ready is not None:
                on_ready()
            log.info(
                "keel ready", extra={"database": settings.effective_database_url.split("://", 1)[0]}
            )
            yield lifespan_state(state)
            log.info("keel shutting down")

    app = KeelAPI(
        title="Keel",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        **_NO_FRAMEWORK_TELEMETRY,
    )
    install_error_handlers(app)
    install_openapi(app, settings.store)  # lazy: documents the routes included below too
    edge = EdgePolicy(settings.effective_allowed_hosts, settings.cors_origins)
    token = settings.api_token.get_secret_value() if settings.api_token else None
    app.add_middleware(
        KeelMiddleware,
        metrics=metrics,
        api_token=token,
        max_body_bytes=settings.max_body_bytes,
        edge=edge,
    )
    app.include_router(chat.router)
    app.include_router(relay.router)
    app.include_router(health.router)
    app.include_router(conversations.router)
    app.include_router(lifecycle_api.router)
    app.include_router(diagnostics.router)
    app.include_router(runtime_api.router)
    app.include_router(readiness.router)
    app.include_router(ui.router)
    if settings.direct_routes:
        direct = DirectRoutes()
        direct.adopt(
            [chat.router, relay.router],
            [chat.chat_completions, relay.embeddings, relay.completions],
        )
        entry = KeelMiddleware(
            functools.partial(FastAPI.__call__, app),  # never reached: every path matches
            metrics=metrics,
            api_token=token,
            max_body_bytes=settings.max_body_bytes,
            edge=edge,
            direct=direct,
        )
        app.serve_directly(direct, entry)
    return app


# FastAPI's built-in OpenTelemetry hook asks the global tracer, meter and logger providers on
# every request whether they are configured (about 5% of the chat hot path under load). Keel
# exports Prometheus metrics and its own logs, so the hook is switched off where FastAPI has it.
_NO_FRAMEWORK_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def _app_from_environment() -> FastAPI:
    try:
        return create_app()
    except ConfigError as exc:
        print(f"keel: {exc}", file=sys.stderr)  # noqa: T201  # the one-line start-up contract
        raise SystemExit(2) from None


_compat: dict[str, FastAPI] = {}


def __getattr__(name: str) -> Any:
    """``app.main:app`` for compatibility: built from the environment on first access only."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if "app" not in _compat:
        _compat["app"] = _app_from_environment()
    return _compat["app"]
