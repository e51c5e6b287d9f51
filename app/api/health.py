"""Operations endpoints: liveness, readiness of the store, Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import DatabaseDep, MetricsDep, SchemaErrorDep
from app.store.migrate import schema_status

router = APIRouter(tags=["operations"])
log = logging.getLogger("keel.health")


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. Touches no dependency."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(db: DatabaseDep, schema_error: SchemaErrorDep) -> JSONResponse:
    """Readiness: the store is reachable and migrated to head."""
    checks: dict[str, Any] = {}
    reason = schema_error
    try:
        status = await schema_status(db)
        checks["database"] = "ok"
        checks["schema"] = "ok" if status.up_to_date else "behind"
        if not status.up_to_date:
            reason = "database schema is not migrated; run `keel migrate`"
    except Exception as exc:  # any failure to reach the store means not ready
        log.warning("readiness check failed", exc_info=exc)
        checks["database"] = "unreachable"
        reason = "database is unreachable"
    if reason:
        return JSONResponse(
            {"status": "not_ready", "reason": reason, "checks": checks},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return JSONResponse({"status": "ready", "checks": checks})


@router.get("/metrics")
async def metrics(m: MetricsDep) -> Response:
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
