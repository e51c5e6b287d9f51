"""The runtime's lifespan component: builds the ``RuntimeManager`` over the lifecycle's manifest
and storage, runs the keep-alive sweeper, and on the way out cancels generations and stops
every worker (``shutdown``)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from app.lifecycle.manifest import ModelSpec
from app.lifecycle.progress import ProgressEvent
from app.lifecycle.service import LifecycleService
from app.readiness.runtime_view import RuntimeModel
from app.runtime.manager import RuntimeManager
from app.store.component import Store

log = logging.getLogger("keel.runtime")


@dataclass(frozen=True, slots=True)
class RuntimeInputs:
    store: Store
    lifecycle: LifecycleService


class ReadinessView:
    """The manager's snapshot as the read-only window readiness and diagnostics use."""

    def __init__(self, manager: RuntimeManager) -> None:
        self._manager = manager

    def runtime_models(self) -> Sequence[RuntimeModel]:
        out = []
        for m in self._manager.snapshot():
            breaker = m["breaker"]
            out.append(
                RuntimeModel(
                    model=m["id"],
                    state=m["state"],
                    pid=m["pid"],
                    rss_bytes=m["rss_bytes"],
                    keep_alive_left_s=m["keep_alive_left_s"],
                    breaker_state=breaker["state"],
                    seconds_until_retry=breaker["seconds_until_half_open"],
                    stderr_tail=m["stderr_tail"],
                )
            )
        return out


def _on_stop_signal(callback: Callable[[], None]) -> Callable[[], None]:
    """Run ``callback`` in the event loop when SIGTERM/SIGINT arrive, then the server's own
    handler (uvicorn's, which starts its graceful wait). uvicorn runs the lifespan shutdown
    only after that wait, which an open local stream would otherwise fill. Only the main
    thread can install handlers; elsewhere (servers in test threads) nothing changes.
    Returns what restores the previous handlers."""
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        chained = previous.get(signum)
        if callable(chained):
            chained(signum, frame)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            current = signal.getsignal(sig)
            if callable(current):  # a server is handling it: chain, never replace
                previous[sig] = current
                signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, old)

    return restore


class RuntimeComponent:
    """``argv`` replaces the worker command (tests run the fake worker through it)."""

    def __init__(self, argv: Sequence[str] | None = None) -> None:
        self.argv = argv

    def __call__(self, inputs: RuntimeInputs) -> AbstractAsyncContextManager[RuntimeManager]:
        return self._lifespan(inputs)

    @asynccontextmanager
    async def _lifespan(self, inputs: RuntimeInputs) -> AsyncIterator[RuntimeManager]:
        core = inputs.store.core
        settings = core.settings
        lc = inputs.lifecycle

        def locate(spec: ModelSpec) -> list[tuple[Path, str]] | None:
            plan = lc.manager.plan(spec)
            if not plan.installed or lc.manager.is_running(spec.id):
                return None
            return [(f.path, s.sha256) for f, s in zip(plan.files, spec.files, strict=True)]

        def on_phase(model_id: str, phase: str, details: dict[str, Any]) -> None:
            spec = lc.manager.manifest.get(model_id)
            total = spec.total_bytes if spec is not None else 0
            error = details.get("error")
            lc.hub.publish(ProgressEvent(model_id, None, phase, None, total, total, error=error))

        manager = RuntimeManager(
            list(lc.manager.manifest),
            settings.runtime,
            locate=locate,
            stamps_dir=settings.data_dir / "runtime" / "stamps",
            metrics=core.metrics,
            timeline=core.timeline,
            argv=self.argv,
            on_phase=on_phase,
        )
        sweeper = core.tasks.spawn(manager.sweep_forever(), name="runtime:keep-alive")
        restore = _on_stop_signal(manager.begin_shutdown)
        try:
            yield manager
        finally:
            restore()
            sweeper.cancel()
            await manager.shutdown()
