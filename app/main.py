"""The application factory and its lifespan, which owns every long-lived resource.

``uvicorn app.main:app`` serves the module-level app built from the environment. Components
(store sweepers, providers, the download manager) are async context managers entered in order
by the lifespan and closed in reverse on shutdown; each puts what handlers need into the
lifespan state, which reaches routes through the dependencies in ``app/api/deps.py``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app.api import chat, conversations, diagnostics, health, readiness, relay, ui
from app.api import lifecycle as lifecycle_api
from app.api import runtime as runtime_api
from app.api.edge import EdgePolicy
from app.api.middleware import KeelMiddleware
from app.api.openapi import install_openapi
from app.api.problems import install_error_handlers
from app.lifecycle.component import LifecycleComponent
from app.observability.logging import configure_logging
from app.observability.metrics import Metrics
from app.observability.timeline import Timeline
from app.providers.registry import providers_component
from app.readiness.component import ReadinessComponent
from app.runtime.component import RuntimeComponent
from app.settings import ConfigError, Settings, load_settings
from app.store.component import store_services
from app.store.database import Database
from app.store.migrate import schema_status, upgrade_to_head

log = logging.getLogger("keel")

State = dict[str, Any]
"""Lifespan state. Keys: settings, metrics, timeline, db, tasks, plus each component's own."""

Component = Callable[[State], AbstractAsyncContextManager[None]]


@asynccontextmanager
async def _store(state: State) -> AsyncIterator[None]:
    settings: Settings = state["settings"]
    db = Database(settings.effective_database_url, settings.store)
    state["db"] = db
    state["schema_error"] = None
    try:
        if settings.auto_migrate:
            await upgrade_to_head(db)
        else:
            status = await schema_status(db)
            if not status.up_to_date:
                state["schema_error"] = "database schema is not migrated; run `keel migrate`"
                log.warning("database schema is behind; serving /readyz 503 until migrated")
        yield
    finally:
        await db.dispose()


def default_components() -> list[Component]:
    return [
        _store,
        store_services,
        LifecycleComponent(),
        RuntimeComponent(),
        providers_component(),
        ReadinessComponent(),
    ]


def create_app(
    settings: Settings | None = None, components: list[Component] | None = None
) -> FastAPI:
    if settings is None:
        settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    metrics = Metrics()
    timeline = Timeline(settings.timeline_size)
    parts = default_components() if components is None else components

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        state: State = {"settings": settings, "metrics": metrics, "timeline": timeline}
        async with AsyncExitStack() as stack:
            # Every background task lives in this group. It is closed first on the way out
            # (registered after the components), so no task outlives the engine or clients.
            tasks = _TaskGroup()
            state["tasks"] = tasks
            try:
                for component in parts:
                    await stack.enter_async_context(component(state))
            except BaseException:
                await tasks.__aexit__(None, None, None)
                raise
            stack.push_async_exit(tasks)
            # Everything built so far lives as long as the process: move it out of the
            # collector's generations so collections under load only scan request garbage.
            gc.collect()
            gc.freeze()
            # Each request allocates a few hundred container objects; the default gen-0
            # threshold (700) ran a collection every couple of requests at load.
            gc.set_threshold(10_000, 20, 20)
            log.info(
                "keel ready", extra={"database": settings.effective_database_url.split("://", 1)[0]}
            )
            yield state
            log.info("keel shutting down")

    app = FastAPI(
        title="Keel",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.timeline = timeline
    install_error_handlers(app)
    install_openapi(app)  # lazy: documents every route included below, and later ones
    app.add_middleware(
        KeelMiddleware,
        metrics=metrics,
        api_token=settings.api_token.get_secret_value() if settings.api_token else None,
        max_body_bytes=settings.max_body_bytes,
        edge=EdgePolicy(settings.effective_allowed_hosts, settings.cors_origins),
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
    return app


class _TaskGroup:
    """An asyncio.TaskGroup whose exit cancels what is still running instead of waiting."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any, *, name: str | None = None) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "background task failed", exc_info=task.exception(), extra={"task": task.get_name()}
            )

    async def __aenter__(self) -> _TaskGroup:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pending = list(self._tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


def _app_from_environment() -> FastAPI:
    try:
        return create_app()
    except ConfigError as exc:
        print(f"keel: {exc}", file=sys.stderr)  # noqa: T201  # the one-line start-up contract
        raise SystemExit(2) from None


app = _app_from_environment()
