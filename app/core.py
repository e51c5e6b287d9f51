"""What exists before any lifespan component, the one protocol every component follows, and
where a request's id lives in its scope.

Components depend on this module only (not on ``app/state.py``, which names every part), so
the store does not import the chat package through the wiring.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from starlette.types import Scope

if TYPE_CHECKING:
    from app.observability.metrics import Metrics
    from app.observability.timeline import Timeline
    from app.settings import Settings

log = logging.getLogger("keel")

T = TypeVar("T")
In_contra = TypeVar("In_contra", contravariant=True)
Out_co = TypeVar("Out_co", covariant=True)

_REQUEST_ID_KEY = "request_id"


class Component(Protocol[In_contra, Out_co]):
    """A part the lifespan enters: built from what runs already, it yields what it adds and
    closes it on the way out (in reverse order of entry)."""

    def __call__(self, deps: In_contra, /) -> AbstractAsyncContextManager[Out_co]: ...


class TaskGroup:
    """Owns every background task; its exit cancels what still runs and waits for it."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "background task failed", exc_info=task.exception(), extra={"task": task.get_name()}
            )

    async def aclose(self) -> None:
        pending = list(self._tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class Core:
    """What exists before any component: every component may use it."""

    settings: Settings
    metrics: Metrics
    timeline: Timeline
    tasks: TaskGroup


def set_request_id(scope: Scope, request_id: str) -> None:
    scope.setdefault("state", {})[_REQUEST_ID_KEY] = request_id


def request_id(scope: Scope) -> str | None:
    rid = scope.get("state", {}).get(_REQUEST_ID_KEY)
    return rid if isinstance(rid, str) else None
