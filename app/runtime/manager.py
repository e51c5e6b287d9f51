"""The runtime manager: which local models are loaded, and the async glue around the pure parts.

It owns one ``ModelSlot`` per local model of the manifest. A load runs as one task per model
that concurrent callers join (three concurrent loads spawn one worker); verify-before-use, the
memory budget and the initialisation breaker are checked before anything is spawned. A
generation holds the model's one slot (``gen_lock``); others wait up to ``max_queue_wait_s``,
then get 503 ``overloaded``. A sweeper unloads models whose keep-alive has passed.

Readers: the local provider (chat), the lifecycle routes (load/unload and the ``runtime``
member of model views) and readiness/diagnostics through ``snapshot()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any

from app.errors import ModelNotFound, ModelNotReady, Overloaded
from app.lifecycle.manifest import ModelSpec
from app.observability.metrics import Metrics
from app.observability.timeline import Timeline
from app.resilience.breaker import CircuitBreaker
from app.resilience.clock import Clock, MonotonicClock
from app.resilience.config import BreakerConfig
from app.runtime.loader import Loader
from app.runtime.residency import keep_alive_left
from app.runtime.slot import Generation, ModelSlot, current_request_id
from app.runtime.states import ModelState, ModelStateMachine
from app.runtime.supervisor import WorkerError, WorkerProcess
from app.runtime.verify import StampStore
from app.settings import RuntimeSettings

log = logging.getLogger("keel.runtime")

ENGINES = frozenset({"llama_cpp"})
MAX_WAITERS = 64  # per model, beyond them 503 at once: the queue is bounded
SWEEP_INTERVAL_S = 1.0
Locate = Callable[[ModelSpec], list[tuple[Path, str]] | None]


def worker_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "app.runtime.worker"]


def runtime_breaker_config(settings: RuntimeSettings) -> BreakerConfig:
    b = settings.breaker
    return BreakerConfig(
        window="count",
        window_size=max(b.window_size, b.min_calls),
        min_calls=b.min_calls,
        failure_rate=b.failure_rate,
        slow_call_s=settings.load_timeout_s * 10,  # a slow load is not a failed one
        slow_call_rate=1.0,
        open_s=b.open_s,
        open_max_s=b.open_max_s,
        half_open_permits=1,
    )


class RuntimeManager:
    def __init__(
        self,
        models: Sequence[ModelSpec],
        settings: RuntimeSettings,
        *,
        locate: Locate,
        stamps_dir: Path,
        metrics: Metrics,
        timeline: Timeline,
        clock: Clock | None = None,
        argv: Sequence[str] | None = None,
        on_phase: Callable[[str, str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or MonotonicClock()
        self.metrics = metrics
        self.timeline = timeline
        self._stopping = False
        self._background: set[asyncio.Task[Any]] = set()
        self.slots: dict[str, ModelSlot] = {}
        breaker_cfg = runtime_breaker_config(settings)
        for spec in models:
            if spec.engine not in ENGINES or spec.capability not in ("llm", "embedding"):
                continue
            breaker = CircuitBreaker(f"model:{spec.id}", breaker_cfg, self.clock)
            machine = ModelStateMachine(spec.id, breaker, self.clock)
            machine.add_listener(self._on_transition)
            self.slots[spec.id] = ModelSlot(spec, machine, breaker, settings.keep_alive_s)
        self.loader = Loader(
            self,
            locate=locate,
            stamps=StampStore(stamps_dir),
            argv=list(argv or worker_argv()),
            on_phase=on_phase,
        )
        self._locate = locate

    # -- lookups -------------------------------------------------------------------------

    def slot(self, model_id: str) -> ModelSlot:
        slot = self.slots.get(model_id)
        if slot is None:
            raise ModelNotFound(f"No local model is named '{model_id[:100]}'.")
        return slot

    def model_ids(self, capability: str | None = None) -> list[str]:
        return [m for m, s in self.slots.items() if capability in (None, s.spec.capability)]

    def installed(self, model_id: str) -> bool:
        return self._locate(self.slot(model_id).spec) is not None

    # -- load / unload -------------------------------------------------------------------

    async def load(self, model_id: str) -> tuple[ModelSlot, str]:
        """Make the model ready: ``(slot, "cold"|"warm")``. Concurrent callers join one load."""
        slot = self.slot(model_id)
        started = self.clock.now()
        if self._stopping:
            raise ModelNotReady("Keel is shutting down.")
        if slot.unload_task is not None and not slot.unload_task.done():
            await asyncio.shield(slot.unload_task)
        worker = slot.worker
        if slot.machine.state is ModelState.READY and worker is not None and worker.alive:
            self.metrics.model_load_duration.labels(model=model_id, kind="warm").observe(
                self.clock.now() - started
            )
            return slot, "warm"
        if slot.load_task is None or slot.load_task.done():
            slot.load_task = asyncio.create_task(self.loader.run(slot), name=f"load:{model_id}")
        await asyncio.shield(slot.load_task)
        return slot, "cold"

    def start_load(self, model_id: str) -> None:
        """``?wait=false``: the load runs on; its outcome shows in the model's state."""

        slot = self.slot(model_id)
        idle = slot.unload_task is None or slot.unload_task.done()
        resting = slot.machine.state is not ModelState.READY
        if idle and resting and (slot.load_task is None or slot.load_task.done()):
            # Started here, not in the task below, so it is visible (state, /events) at once.
            slot.load_task = asyncio.create_task(self.loader.run(slot), name=f"load:{model_id}")

        async def run() -> None:
            with contextlib.suppress(Exception):
                await self.load(model_id)

        task = asyncio.create_task(run(), name=f"load-bg:{model_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def unload(self, model_id: str, reason: str = "unload") -> bool:
        slot = self.slot(model_id)
        if slot.unload_task is not None and not slot.unload_task.done():
            await asyncio.shield(slot.unload_task)
            return True
        if not slot.machine.begin_unload(reason):
            slot.machine.reset_error(reason)
            return False
        slot.unload_task = asyncio.create_task(self._stop_slot(slot, reason))
        await asyncio.shield(slot.unload_task)
        return True

    async def _stop_slot(self, slot: ModelSlot, reason: str) -> None:
        cancel_reason = "shutdown" if reason == "shutdown" else "model_switch"
        if slot.active is not None and slot.active.cancel(cancel_reason):
            self.metrics.cancellations.labels(reason=cancel_reason).inc()
        worker, slot.worker = slot.worker, None
        if worker is not None:
            slot.last_stderr = worker.stderr_tail()
            await worker.stop(self.settings.stop_grace_s)
        slot.loaded_at = None
        slot.phase = None
        slot.machine.unloaded(reason)
        self._count_loaded()

    # -- generation ----------------------------------------------------------------------

    async def generate(
        self,
        model_id: str,
        request: dict[str, Any],
        *,
        keep_alive_s: float | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Load if needed, wait for the model's slot, then stream the worker's messages."""
        slot, _ = await self.load(model_id)
        if slot.waiting >= MAX_WAITERS:
            raise Overloaded("Too many requests are waiting for this model.", retry_after=1.0)
        slot.waiting += 1
        try:
            async with asyncio.timeout(self.settings.max_queue_wait_s):
                await slot.gen_lock.acquire()
        except TimeoutError:
            raise Overloaded(
                f"Model '{model_id}' is busy; waited {self.settings.max_queue_wait_s:g} s.",
                retry_after=max(1.0, self.settings.max_queue_wait_s),
            ) from None
        finally:
            slot.waiting -= 1
        try:
            worker = slot.worker
            if worker is None or not worker.alive or slot.machine.state is not ModelState.READY:
                raise ModelNotReady(f"Model '{model_id}' was unloaded; try again.")
            handle = Generation(current_request_id.get(), uuid.uuid4().hex[:16], worker)
            slot.active = handle
            tokens = 0
            stream = worker.generate(
                handle.gen_id, request, token_stall_s=self.settings.token_stall_s
            )
            try:
                # aclosing: leaving early (client gone, deadline) must cancel in the worker
                # now, not whenever the generator is collected.
                async with contextlib.aclosing(stream):
                    async for msg in stream:
                        if msg.get("ev") == "token":
                            tokens += 1
                        elif handle.cancel_reason is not None:
                            msg = {**msg, "cancelled": handle.cancel_reason}
                        yield msg
            except WorkerError as exc:
                if exc.code == "token_stall":
                    log.warning(
                        "worker stalled mid-generation; killing it", extra={"model": model_id}
                    )
                    await worker.kill()
                raise
            finally:
                slot.active = None
                self.metrics.generated_tokens.labels(model=model_id).inc(tokens)
        finally:
            slot.gen_lock.release()
            slot.touch(self.clock.now(), keep_alive_s)
            if slot.keep_alive_s == 0 and not slot.busy:
                self._spawn_unload(model_id, "keep_alive")

    def cancel_request(self, request_id: str, reason: str = "user_stop") -> bool:
        for slot in self.slots.values():
            active = slot.active
            if active is not None and active.request_id == request_id and active.cancel(reason):
                self.metrics.cancellations.labels(reason=reason).inc()
                return True
        return False

    # -- keep-alive, shutdown --------------------------------------------------------------

    async def sweep(self) -> list[str]:
        """Unload every idle model whose keep-alive has passed; the ids unloaded."""
        now = self.clock.now()
        done = []
        for slot in list(self.slots.values()):
            if slot.machine.state is not ModelState.READY or slot.busy:
                continue
            if keep_alive_left(slot.last_used, slot.keep_alive_s, now) <= 0:
                await self.unload(slot.id, "keep_alive")
                done.append(slot.id)
        return done

    async def sweep_forever(self) -> None:
        while True:
            await self.clock.sleep(SWEEP_INTERVAL_S)
            try:
                await self.sweep()
            except Exception:
                log.exception("keep-alive sweep failed")

    def begin_shutdown(self) -> None:
        """The server is stopping: refuse new loads and cancel every running generation now
        (``shutdown``), so open streams end at once instead of holding the graceful wait."""
        self._stopping = True
        for slot in self.slots.values():
            if slot.active is not None and slot.active.cancel("shutdown"):
                self.metrics.cancellations.labels(reason="shutdown").inc()

    async def shutdown(self) -> None:
        """Cancel generations and stop every worker within the grace period."""
        self.begin_shutdown()
        for task in list(self._background):
            task.cancel()
        for slot in self.slots.values():
            if slot.load_task is not None and not slot.load_task.done():
                slot.load_task.cancel()
        await asyncio.gather(
            *(self.unload(s.id, "shutdown") for s in self.slots.values()), return_exceptions=True
        )
        for slot in self.slots.values():  # anything a cancelled load had spawned
            if slot.worker is not None:
                await slot.worker.kill()

    def _spawn_unload(self, model_id: str, reason: str) -> None:
        task = asyncio.create_task(self.unload(model_id, reason), name=f"unload:{model_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- observing -----------------------------------------------------------------------

    def model_runtime(self, model_id: str) -> dict[str, Any]:
        slot = self.slot(model_id)
        return slot.view(self.clock.now())

    def snapshot(self) -> list[dict[str, Any]]:
        """Per model: state, pid, RSS, keep-alive left, breaker, stderr tail (read-only)."""
        now = self.clock.now()
        out = []
        for slot in self.slots.values():
            entry: dict[str, Any] = {
                "id": slot.id,
                "capability": slot.spec.capability,
                "state": slot.machine.state.value,
                "cooldown_s": slot.machine.cooldown_remaining(),
                "error": _error(slot),
                "breaker": slot.breaker.snapshot().as_json(),
                **slot.view(now),
            }
            out.append(entry)
        return out

    def _on_transition(self, model_id: str, from_state: str, to_state: str, reason: str) -> None:
        self.timeline.record(f"model:{model_id}", from_state, to_state, reason)
        self.metrics.model_transitions.labels(
            model=model_id, from_state=from_state, to_state=to_state
        ).inc()

    def _count_loaded(self) -> None:
        ready = sum(1 for s in self.slots.values() if s.machine.state is ModelState.READY)
        self.metrics.models_loaded.set(ready)

    def on_worker_exit(self, slot: ModelSlot, worker: WorkerProcess) -> None:
        if worker.stopping or slot.worker is not worker:
            return
        slot.last_stderr = worker.stderr_tail()
        slot.worker = None
        slot.machine.crashed(f"exit status {worker.returncode}")
        self.metrics.worker_crashes.labels(model=slot.id).inc()
        self._count_loaded()


def _error(slot: ModelSlot) -> dict[str, Any] | None:
    m = slot.machine
    if m.error_code is None or m.state not in (ModelState.ERROR, ModelState.COOLDOWN):
        return None
    return {"code": m.error_code, "message": m.error_message}
