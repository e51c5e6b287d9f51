"""One cold load, start to finish: breaker, verify-before-use, residency, spawn, wait, publish.

Runs as the single load task of a model (``RuntimeManager.load`` joins callers onto it).
Nothing is spawned while the breaker is open, when the file fails verification, or when the
memory budget cannot make room. A load that finishes after the model was unloaded or switched
(a stale ticket) is discarded and its worker stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import (
    ChecksumMismatch,
    KeelError,
    MemoryBudgetExceeded,
    ModelLoadFailed,
    ModelNotReady,
)
from app.runtime.residency import MIB, Resident, admit, estimate_bytes
from app.runtime.slot import ModelSlot
from app.runtime.states import LoadTicket
from app.runtime.supervisor import WorkerError, WorkerProcess
from app.runtime.verify import StampStore, verify_before_use

if TYPE_CHECKING:
    from app.lifecycle.manifest import ModelSpec
    from app.runtime.manager import RuntimeManager

log = logging.getLogger("keel.runtime.loader")

PhaseListener = Callable[[str, str, dict[str, Any]], None]  # (model id, phase, details)


class Loader:
    def __init__(
        self,
        manager: RuntimeManager,
        *,
        locate: Callable[[ModelSpec], list[tuple[Path, str]] | None],
        stamps: StampStore,
        argv: list[str],
        on_phase: PhaseListener | None,
    ) -> None:
        self._m = manager
        self._locate = locate
        self._stamps = stamps
        self._argv = argv
        self._on_phase = on_phase

    def _phase(self, slot: ModelSlot, phase: str, **details: Any) -> None:
        slot.phase = phase
        if self._on_phase is not None:
            try:
                self._on_phase(slot.id, phase, details)
            except Exception:
                log.exception("load phase listener failed")

    def _fail(self, slot: ModelSlot, code: str) -> None:
        self._m.metrics.model_load_failures.labels(model=slot.id, code=code).inc()

    async def run(self, slot: ModelSlot) -> WorkerProcess:
        m = self._m
        started = m.clock.now()
        ticket = slot.machine.begin_load()  # CircuitOpen while cooling down: nothing spawned
        try:
            files = self._locate(slot.spec)
            if files is None:
                slot.machine.load_abandoned(ticket, "not installed")
                raise ModelNotReady(f"Model '{slot.id}' is not installed; download or import it.")
            self._phase(slot, "verifying")
            try:
                await verify_before_use(slot.id, files, self._stamps)
            except ChecksumMismatch:
                slot.machine.load_failed(
                    ticket, "checksum_mismatch", "file failed verification", counts=False
                )
                self._fail(slot, "checksum_mismatch")
                raise
            need = estimate_bytes(sum(p.stat().st_size for p, _ in files), m.settings.n_ctx)
            await self._make_room(slot, need, ticket)
            worker = await self._spawn_and_load(slot, ticket)
        except KeelError as exc:
            error = {"code": exc.code, "retryable": exc.retryable, "message": exc.detail}
            self._phase(slot, "failed", error=error)
            raise
        except asyncio.CancelledError:
            slot.machine.load_abandoned(ticket, "load cancelled")
            raise
        if not slot.machine.load_succeeded(ticket):
            await worker.stop(m.settings.stop_grace_s)
            raise ModelNotReady(f"Model '{slot.id}' was unloaded while it loaded.")
        rss = worker.rss_bytes()
        slot.need_bytes = rss or need
        slot.loaded_at = time.time()
        slot.touch(m.clock.now(), None)
        self._phase(slot, "ready", rss_bytes=rss)
        m.metrics.model_load_duration.labels(model=slot.id, kind="cold").observe(
            m.clock.now() - started
        )
        m._count_loaded()
        return worker

    async def _make_room(self, slot: ModelSlot, need: int, ticket: LoadTicket) -> None:
        m = self._m
        residents = [
            Resident(s.id, s.need_bytes, s.last_used, s.busy)
            for s in m.slots.values()
            if s is not slot and s.worker is not None
        ]
        try:
            victims = admit(
                slot.id,
                need,
                residents,
                budget_bytes=m.settings.memory_budget_mb * MIB,
                max_loaded=m.settings.max_loaded,
            )
        except MemoryBudgetExceeded:
            slot.machine.load_abandoned(ticket, "memory budget")
            self._fail(slot, "memory_budget_exceeded")
            raise
        slot.need_bytes = need
        for victim in victims:
            log.info("evicting idle model", extra={"model": victim, "for_model": slot.id})
            await m.unload(victim, "evicted")

    async def _spawn_and_load(self, slot: ModelSlot, ticket: LoadTicket) -> WorkerProcess:
        m = self._m
        s = m.settings
        self._phase(slot, "spawning")
        worker = await WorkerProcess.spawn(self._argv)
        slot.worker = worker
        worker.on_exit(lambda w: m.on_worker_exit(slot, w))
        files = self._locate(slot.spec) or []
        request = {
            "path": str(files[0][0]) if files else "",
            "chat_format": slot.spec.chat_format,
            "n_ctx": s.n_ctx,
            "n_threads": s.n_threads,
            "embedding": slot.spec.capability == "embedding",
        }
        self._phase(slot, "loading", pid=worker.pid)
        try:
            await worker.load(
                request,
                timeout_s=s.load_timeout_s,
                stall_s=s.load_stall_s,
                on_progress=lambda phase: self._phase(slot, phase, pid=worker.pid),
            )
        except BaseException as exc:
            slot.last_stderr = worker.stderr_tail()
            if slot.worker is worker:
                slot.worker = None
            await worker.kill()
            if isinstance(exc, WorkerError):
                current = slot.machine.load_failed(ticket, exc.code, exc.message)
                self._fail(slot, exc.code)
                log.warning(
                    "model load failed",
                    extra={"model": slot.id, "code": exc.code, "stderr": exc.stderr[-2048:]},
                )
                if not current:
                    raise ModelNotReady(
                        f"Model '{slot.id}' was unloaded while it loaded."
                    ) from None
                raise ModelLoadFailed(
                    f"Model '{slot.id}' failed to load ({exc.code}).",
                    extra={"reason": exc.code},
                ) from None
            raise
        return worker
