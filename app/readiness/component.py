"""The readiness lifespan component: builds the service and starts the start-up probes.

Entered after the lifecycle and provider components, whose state it reads. The probing task
belongs to the lifespan task group, so it is cancelled and awaited on shutdown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from app.lifecycle.component import STATE_KEY as LIFECYCLE_KEY
from app.readiness.checks import FindSpec, module_installed
from app.readiness.runtime_view import ModelRuntimeView
from app.readiness.service import ReadinessService

STATE_KEY = "readiness"
# A ModelRuntimeView, put there by the runtime component (app/runtime/component.py).
RUNTIME_VIEW_KEY = "runtime_view"


class ReadinessComponent:
    def __init__(
        self, *, find: FindSpec = module_installed, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.find = find
        self.clock = clock

    def __call__(self, state: dict[str, Any]) -> AbstractAsyncContextManager[None]:
        return self._lifespan(state)

    @asynccontextmanager
    async def _lifespan(self, state: dict[str, Any]) -> AsyncIterator[None]:
        runtime: ModelRuntimeView | None = state.get(RUNTIME_VIEW_KEY)
        service = ReadinessService(
            settings=state["settings"],
            db=state["db"],
            lifecycle=state[LIFECYCLE_KEY],
            guards=state.get("guards", {}),
            metrics=state["metrics"],
            runtime=runtime,
            find=self.find,
            clock=self.clock,
        )
        tasks = state["tasks"]

        def spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
            task: asyncio.Task[None] = tasks.spawn(coro, name=name)
            return task

        service.start(spawn)
        state[STATE_KEY] = service
        yield
