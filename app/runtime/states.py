"""A local model's state machine: pure, synchronous, clock-injected (like the breaker).

States (``installed`` is the resting state of a verified file that is not loaded)::

    installed|error --begin_load--> loading --load_succeeded--> ready
    loading --load_failed--> error            ready --crashed--> error
    loading|ready --begin_unload--> unloading --unloaded--> installed

``cooldown`` (with seconds remaining) and ``half_open`` are what ``installed``/``error`` read
as while the model's initialisation breaker is open or half-open: a load then fails fast with
``circuit_open`` and no worker is spawned, and in half-open exactly one trial load runs.

Every ``begin_load`` and ``begin_unload`` bumps a generation counter. A load hands back its
ticket when it finishes; a ticket from an earlier generation is stale (the model was unloaded
or switched meanwhile): the completion is dropped and the caller stops the worker it started.

Every change of the visible state is published to the listeners (timeline, log, counter).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from app.errors import CircuitOpen
from app.resilience.breaker import BreakerState, CircuitBreaker, Permit
from app.resilience.clock import Clock
from app.resilience.errors import CallNotPermitted

log = logging.getLogger("keel.runtime.states")

# (model id, from state, to state, reason)
StateListener = Callable[[str, str, str, str], None]


class ModelState(StrEnum):
    INSTALLED = "installed"
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    ERROR = "error"
    COOLDOWN = "cooldown"
    HALF_OPEN = "half_open"


class InvalidTransition(Exception):
    pass


@dataclass(frozen=True, slots=True)
class LoadTicket:
    generation: int
    permit: Permit
    started: float


class ModelStateMachine:
    def __init__(
        self,
        model_id: str,
        breaker: CircuitBreaker,
        clock: Clock,
        *,
        listeners: tuple[StateListener, ...] = (),
    ) -> None:
        self.model_id = model_id
        self.breaker = breaker
        self._clock = clock
        self._base = ModelState.INSTALLED
        self._listeners = list(listeners)
        self.generation = 0
        self.error_code: str | None = None
        self.error_message: str | None = None
        self._shown = self.state
        breaker.add_listener(lambda _n, _f, _t, reason: self._publish(f"breaker: {reason}"))

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    @property
    def state(self) -> ModelState:
        if self._base in (ModelState.INSTALLED, ModelState.ERROR):
            breaker = self.breaker.state
            if breaker is BreakerState.OPEN:
                return ModelState.COOLDOWN
            if breaker is BreakerState.HALF_OPEN:
                return ModelState.HALF_OPEN
        return self._base

    def cooldown_remaining(self) -> float | None:
        if self.state is not ModelState.COOLDOWN:
            return None
        return self.breaker.snapshot().seconds_until_half_open

    # -- loads ---------------------------------------------------------------------------

    def begin_load(self) -> LoadTicket:
        """Start a load: raises ``CircuitOpen`` while cooling down (nothing may be spawned)
        and ``InvalidTransition`` unless the model is at rest."""
        if self._base not in (ModelState.INSTALLED, ModelState.ERROR):
            raise InvalidTransition(f"cannot load from {self._base.value}")
        try:
            permit = self.breaker.acquire()
        except CallNotPermitted as exc:
            wait = exc.retry_after
            raise CircuitOpen(
                f"Model '{self.model_id}' failed to load repeatedly; the next trial load is "
                + (f"in {wait:.1f} s." if exc.state == "open" else "running."),
                retry_after=wait if wait is not None else 1.0,
            ) from None
        self.generation += 1
        self._set(ModelState.LOADING, "load requested")
        return LoadTicket(self.generation, permit, self._clock.now())

    def is_current(self, ticket: LoadTicket) -> bool:
        return ticket.generation == self.generation and self._base is ModelState.LOADING

    def load_succeeded(self, ticket: LoadTicket) -> bool:
        """``False``: the ticket is stale; drop the result and stop its worker."""
        if not self.is_current(ticket):
            self.breaker.record_ignored(ticket.permit)
            return False
        self.breaker.record_success(ticket.permit, self._clock.now() - ticket.started)
        self.error_code = self.error_message = None
        self._set(ModelState.READY, "loaded")
        return True

    def load_failed(
        self, ticket: LoadTicket, code: str, message: str, *, counts: bool = True
    ) -> bool:
        """Record a failed load; ``counts=False`` for failures that say nothing about the
        runtime (a checksum mismatch, a refused budget) and must not open the breaker."""
        if not self.is_current(ticket):
            self.breaker.record_ignored(ticket.permit)
            return False
        self.error_code, self.error_message = code, message
        if counts:
            self.breaker.record_failure(ticket.permit, self._clock.now() - ticket.started)
            self._set(ModelState.ERROR, f"load failed: {code}")
        else:
            self.breaker.record_ignored(ticket.permit)
            self._set(ModelState.ERROR, f"load refused: {code}")
        return True

    def load_abandoned(self, ticket: LoadTicket, reason: str) -> None:
        """Nobody wants the load any more and it did not run to an outcome (refused before
        spawning for a reason of Keel's own, e.g. the memory budget)."""
        if not self.is_current(ticket):
            self.breaker.record_ignored(ticket.permit)
            return
        self.breaker.record_ignored(ticket.permit)
        self._set(ModelState.INSTALLED, reason)

    # -- running and stopping -------------------------------------------------------------

    def crashed(self, message: str) -> None:
        if self._base is ModelState.READY:
            self.error_code, self.error_message = "worker_crashed", message
            self._set(ModelState.ERROR, "worker crashed")

    def begin_unload(self, reason: str) -> bool:
        """Invalidate any in-flight load; ``False`` when there was nothing to unload."""
        self.generation += 1
        if self._base in (ModelState.READY, ModelState.LOADING):
            self._set(ModelState.UNLOADING, reason)
            return True
        return False

    def unloaded(self, reason: str) -> None:
        if self._base is ModelState.UNLOADING:
            self._set(ModelState.INSTALLED, reason)

    def reset_error(self, reason: str) -> None:
        """An operator's unload of a model in ``error`` returns it to rest."""
        if self._base is ModelState.ERROR:
            self.error_code = self.error_message = None
            self._set(ModelState.INSTALLED, reason)

    # -- internals -----------------------------------------------------------------------

    def _set(self, to: ModelState, reason: str) -> None:
        self._base = to
        self._publish(reason)

    def _publish(self, reason: str) -> None:
        shown = self.state
        before = self._shown
        if shown is before:
            return
        self._shown = shown
        log.info(
            "model %s: %s -> %s (%s)",
            self.model_id,
            before.value,
            shown.value,
            reason,
            extra={"model": self.model_id, "from_state": before.value, "to_state": shown.value},
        )
        for listener in list(self._listeners):
            try:
                listener(self.model_id, before.value, shown.value, reason)
            except Exception:
                log.exception("model state listener failed")
