"""Local model runtime endpoints: load, unload, and cancelling a request by its id (a local
generation through the runtime, which ends it normally at the next token; any other request
Keel is answering through the in-flight registry, ``app/chat/inflight.py``).

Thin: parse, call the ``RuntimeManager``, render. The ``runtime`` member of the lifecycle's
model views comes from ``runtime_view``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from app.api.deps import InFlightDep, RuntimeDep
from app.errors import NotFound
from app.lifecycle.progress import ProgressEvent
from app.runtime.manager import RuntimeManager

router = APIRouter(tags=["runtime"])


def runtime_view(runtime: RuntimeManager, view: dict[str, Any]) -> dict[str, Any]:
    """A lifecycle model view with the runtime's state and ``runtime`` member merged in."""
    if view["id"] not in runtime.slots:
        return view
    slot = runtime.slot(view["id"])
    state = slot.machine.state.value
    if view.get("state") in ("installed", "error") and state != "installed":
        view["state"] = state
        if state == "cooldown":
            view["cooldown_s"] = slot.machine.cooldown_remaining()
        if slot.machine.error_code is not None and state in ("error", "cooldown"):
            view["error"] = {
                "code": slot.machine.error_code,
                "retryable": slot.machine.error_code != "checksum_mismatch",
                "message": slot.machine.error_message,
            }
    view["runtime"] = {
        k: v
        for k, v in runtime.model_runtime(view["id"]).items()
        if k in ("pid", "rss_bytes", "loaded_at", "last_used_at", "keep_alive_left_s", "phase")
    }
    return view


def runtime_load_event(runtime: RuntimeManager, model_id: str) -> ProgressEvent | None:
    """The current load phase as the first event of ``/events``, while a load runs."""
    if model_id not in runtime.slots:
        return None
    slot = runtime.slot(model_id)
    if slot.load_task is None or slot.load_task.done() or slot.phase is None:
        return None
    total = slot.spec.total_bytes
    return ProgressEvent(model_id, None, slot.phase, None, total, total)


def _state(runtime: RuntimeManager, model_id: str) -> dict[str, Any]:
    slot = runtime.slot(model_id)
    view = runtime.model_runtime(model_id)
    view.pop("stderr_tail", None)
    return {"id": model_id, "state": slot.machine.state.value, "runtime": view}


@router.post("/v1/lifecycle/models/{model_id}/load")
async def load_model(
    model_id: str,
    runtime: RuntimeDep,
    wait: Annotated[bool, Query(description="false: answer 202 at once")] = True,
) -> JSONResponse:
    runtime.slot(model_id)  # 404 for a model the runtime does not serve
    if not wait:
        runtime.start_load(model_id)
        return JSONResponse(_state(runtime, model_id), status_code=202)
    _, kind = await runtime.load(model_id)
    return JSONResponse({**_state(runtime, model_id), "load": kind})


@router.post("/v1/lifecycle/models/{model_id}/unload")
async def unload_model(model_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    unloaded = await runtime.unload(model_id)
    return {**_state(runtime, model_id), "unloaded": unloaded}


@router.post("/v1/requests/{request_id}/cancel")
async def cancel_request(
    request_id: str, runtime: RuntimeDep, inflight: InFlightDep
) -> dict[str, Any]:
    rid = request_id[:128]
    if not (runtime.cancel_request(rid, "user_stop") or inflight.cancel(rid, "user_stop")):
        raise NotFound("No cancellable request with this id is in flight.")
    return {"request_id": request_id, "cancelled": True, "reason": "user_stop"}
