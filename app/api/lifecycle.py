"""Model lifecycle endpoints: models, downloads, progress events, verify, delete, storage roots.

Thin: parse, call ``LifecycleService``, render. Errors are raised from the catalogue. Every
POST honours ``Idempotency-Key``: the service runs those actions through
``Idempotency.once`` (``app/store/idempotency.py``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import IdempotencyKeyDep, LifecycleDep, RuntimeDep
from app.api.idempotency import to_response
from app.api.runtime import runtime_load_event, runtime_view
from app.lifecycle.manifest import Capability
from app.lifecycle.progress import ProgressEvent
from app.lifecycle.storage import StorageConfig
from app.values import StoragePath

router = APIRouter(prefix="/v1/lifecycle", tags=["lifecycle"])

HEARTBEAT_S = 15.0


DryRun = Annotated[bool, Query(description="answer what would happen; change nothing")]


class BundleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(min_length=1, max_length=64)
    dry_run: bool = False


class StorageRequest(BaseModel):
    """The whole storage configuration (PUT replaces it): ``root`` null means the default."""

    model_config = ConfigDict(extra="forbid")

    root: StoragePath | None = None
    overrides: dict[Capability, StoragePath] = Field(default_factory=dict, max_length=8)
    create: bool = False


@router.get("/models")
async def list_models(lc: LifecycleDep, runtime: RuntimeDep) -> dict[str, Any]:
    return {"data": [runtime_view(runtime, v) for v in lc.list_models()]}


@router.get("/models/{model_id}")
async def get_model(model_id: str, lc: LifecycleDep, runtime: RuntimeDep) -> dict[str, Any]:
    return runtime_view(runtime, lc.model_view(lc.model(model_id)))


@router.post("/models/{model_id}/download")
async def download_model(
    model_id: str,
    lc: LifecycleDep,
    key: IdempotencyKeyDep,
    dry_run: DryRun = False,
) -> Response:
    model = lc.model(model_id)
    if dry_run:
        return JSONResponse(await lc.download([model], dry_run=True))
    return to_response(await lc.start_download(model, key))


@router.delete("/models/{model_id}/download")
async def cancel_model_download(model_id: str, lc: LifecycleDep) -> dict[str, Any]:
    return await lc.cancel_download(lc.model(model_id))


@router.post("/downloads")
async def download_bundle(
    body: BundleRequest,
    lc: LifecycleDep,
    key: IdempotencyKeyDep,
    dry_run: DryRun = False,
) -> Response:
    models = [lc.model(i) for i in dict.fromkeys(body.models)]
    if dry_run or body.dry_run:
        return JSONResponse(await lc.download(models, dry_run=True))
    return to_response(await lc.start_bundle(models, key))


@router.get("/downloads")
async def list_jobs(
    lc: LifecycleDep, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> dict[str, Any]:
    return {"data": [j.as_json() for j in await lc.recent_jobs(limit)]}


@router.get("/downloads/{job_id}")
async def get_job(job_id: str, lc: LifecycleDep) -> dict[str, Any]:
    return (await lc.job(job_id)).as_json()


@router.delete("/downloads/{job_id}")
async def cancel_job(job_id: str, lc: LifecycleDep) -> dict[str, Any]:
    return (await lc.cancel_job(job_id)).as_json()


@router.get("/models/{model_id}/events")
async def model_events(model_id: str, lc: LifecycleDep, runtime: RuntimeDep) -> StreamingResponse:
    """SSE: one ``data: {event}`` per progress event; the stream ends after ready/failed.
    While the local runtime loads the model, its load phases are the events."""
    model = lc.model(model_id)
    sub = lc.subscribe(model)  # before the snapshot, so nothing falls in between
    first = runtime_load_event(runtime, model.id) or lc.snapshot(model)

    async def stream() -> AsyncIterator[bytes]:
        with sub:
            if first is not None:
                yield _sse(first)
                if first.terminal:
                    return
            while True:
                event = await sub.get(HEARTBEAT_S)
                if event is None:
                    yield b": keep-alive\n\n"
                    continue
                yield _sse(event)
                if event.terminal:
                    return

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(event: ProgressEvent) -> bytes:
    return b"data: " + json.dumps(event.as_json(), separators=(",", ":")).encode() + b"\n\n"


@router.post("/models/{model_id}/verify")
async def verify_model(
    model_id: str,
    lc: LifecycleDep,
    key: IdempotencyKeyDep,
) -> Response:
    return to_response(await lc.verify_once(lc.model(model_id), key))


@router.delete("/models/{model_id}")
async def delete_model(model_id: str, lc: LifecycleDep, dry_run: DryRun = False) -> dict[str, Any]:
    return await lc.delete(lc.model(model_id), dry_run=dry_run)


@router.get("/storage")
async def get_storage(lc: LifecycleDep) -> dict[str, Any]:
    return lc.storage_view()


@router.put("/storage")
async def put_storage(
    body: StorageRequest, lc: LifecycleDep, dry_run: DryRun = False
) -> dict[str, Any]:
    config = StorageConfig(root=body.root, overrides={str(k): v for k, v in body.overrides.items()})
    return await lc.replace_storage(config, create=body.create, dry_run=dry_run)
