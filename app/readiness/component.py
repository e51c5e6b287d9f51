"""The readiness lifespan component: builds the service and starts the start-up probes.

Entered after the lifecycle and chat components, whose resources it reads. The probing task
belongs to the lifespan task group, so it is cancelled and awaited on shutdown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from app.lifecycle.service import LifecycleService
from app.readiness.checks import FindSpec, module_installed
from app.readiness.runtime_view import ModelRuntimeView
from app.readiness.service import GuardView, ReadinessService
from app.store.component import Store


@dataclass(frozen=True, slots=True)
class ReadinessInputs:
    """What the readiness service looks at; ``runtime`` is None without a local runtime."""

    store: Store
    lifecycle: LifecycleService
    guards: Mapping[str, GuardView]
    runtime: ModelRuntimeView | None = None


class ReadinessComponent:
    def __init__(
        self,
        *,
        find: FindSpec = module_installed,
        runtime: ModelRuntimeView | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.find = find
        self.runtime = runtime  # tests put a fake runtime in place of the real one here
        self.clock = clock

    def __call__(self, inputs: ReadinessInputs) -> AbstractAsyncContextManager[ReadinessService]:
        return self._lifespan(inputs)

    @asynccontextmanager
    async def _lifespan(self, inputs: ReadinessInputs) -> AsyncIterator[ReadinessService]:
        core = inputs.store.core
        service = ReadinessService(
            settings=core.settings,
            db=inputs.store.db,
            lifecycle=inputs.lifecycle,
            guards=inputs.guards,
            metrics=core.metrics,
            runtime=self.runtime or inputs.runtime,
            find=self.find,
            clock=self.clock,
        )
        tasks = core.tasks

        def spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
            task: asyncio.Task[None] = tasks.spawn(coro, name=name)
            return task

        service.start(spawn)
        yield service
