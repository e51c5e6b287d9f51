"""One local model's runtime record: its state machine, breaker, worker and residency facts."""

from __future__ import annotations

import asyncio
import contextvars
import time
from dataclasses import dataclass, field
from typing import Any

from app.lifecycle.manifest import ModelSpec
from app.resilience.breaker import CircuitBreaker
from app.runtime.residency import keep_alive_left
from app.runtime.states import ModelStateMachine
from app.runtime.supervisor import WorkerProcess

# The X-Request-Id of the request being served, so `POST /v1/requests/{id}/cancel` can find
# the generation it started (set by the chat route, read by the runtime).
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "keel_request_id", default=None
)


class Generation:
    """An in-flight generation that something other than its own caller may stop."""

    def __init__(self, request_id: str | None, gen_id: str, worker: WorkerProcess) -> None:
        self.request_id = request_id
        self.gen_id = gen_id
        self.worker = worker
        self.cancel_reason: str | None = None

    def cancel(self, reason: str) -> bool:
        if self.cancel_reason is not None:
            return False
        self.cancel_reason = reason
        if self.worker.alive:
            try:
                self.worker.send({"op": "cancel", "id": self.gen_id})
            except Exception:  # the worker just died: the generation is over anyway
                return True
        return True


@dataclass
class ModelSlot:
    spec: ModelSpec
    machine: ModelStateMachine
    breaker: CircuitBreaker
    keep_alive_s: float
    worker: WorkerProcess | None = None
    load_task: asyncio.Task[WorkerProcess] | None = None
    unload_task: asyncio.Task[None] | None = None
    gen_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0
    active: Generation | None = None
    phase: str | None = None
    need_bytes: int = 0
    loaded_at: float | None = None  # wall clock, for display
    last_used: float = 0.0  # injected clock, for keep-alive and LRU
    last_used_wall: float | None = None
    last_stderr: str = ""

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def busy(self) -> bool:
        loading = self.load_task is not None and not self.load_task.done()
        return loading or self.waiting > 0 or self.gen_lock.locked()

    def touch(self, now: float, keep_alive_s: float | None) -> None:
        self.last_used = now
        self.last_used_wall = time.time()
        if keep_alive_s is not None:
            self.keep_alive_s = keep_alive_s

    def view(self, now: float) -> dict[str, Any]:
        worker = self.worker if self.worker is not None and self.worker.alive else None
        rss = worker.rss_bytes() if worker is not None else None
        left = (
            keep_alive_left(self.last_used, self.keep_alive_s, now) if worker is not None else None
        )
        tail = worker.stderr_tail() if worker is not None else self.last_stderr
        return {
            "pid": worker.pid if worker is not None else None,
            "rss_bytes": rss,
            "loaded_at": self.loaded_at,
            "last_used_at": self.last_used_wall,
            "keep_alive_left_s": None if left is None else round(left, 1),
            "phase": self.phase,
            "busy": self.busy,
            "stderr_tail": tail[-2048:],
        }
