"""Operations endpoints: liveness, readiness of the store, Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import DatabaseDep, MetricsDep
from app.errors import KeelError
from app.store.migrate import schema_status

router = APIRouter(tags=["operations"])
CHECK_TIMEOUT_S = 2.0
log = logging.getLogger("keel.health")


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. Touches no dependency."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(db: DatabaseDep) -> JSONResponse:
    """Readiness: the store is reachable and migrated to head, checked on every probe.

    Not the start-up verdict: a replica started before `keel migrate` turns ready once the
    migration has run. ``code`` names what is wrong with a catalogue code.
    """
    checks: dict[str, Any] = {}
    try:
        # Bounded: a probe must answer even when the pool is drained or packets are dropped.
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            status = await schema_status(db)
    except TimeoutError:
        saturated = db.pool_saturated()
        checks["database"] = "pool_exhausted" if saturated else "timeout"
        code = "overloaded" if saturated else "database_unavailable"
        return _not_ready(code, _REASONS[code], checks)
    except KeelError as exc:  # db.read() has already told transient failures apart
        log.warning("readiness check failed: %s", exc.code, exc_info=exc.__cause__ is not None)
        checks["database"] = _DATABASE_CHECK.get(exc.code, "error")
        return _not_ready(exc.code, _REASONS.get(exc.code, "the database check failed"), checks)
    except Exception as exc:  # anything else reaching the store still means not ready
        log.warning("readiness check failed", exc_info=exc)
        checks["database"] = "error"
        return _not_ready("internal_error", "the database check failed", checks)
    checks["database"] = "ok"
    checks["schema"] = "ok" if status.up_to_date else "behind"
    if not status.up_to_date:
        return _not_ready("schema_not_ready", _REASONS["schema_not_ready"], checks)
    return JSONResponse({"status": "ready", "checks": checks})


_DATABASE_CHECK = {
    "overloaded": "pool_exhausted",
    "database_unavailable": "unreachable",
    "schema_not_ready": "ok",
}
_REASONS = {
    "overloaded": "every database connection is in use (pool exhausted)",
    "database_unavailable": "database is unreachable, too slow, or dropped the connection",
    "schema_not_ready": "database schema is not migrated; run `keel migrate`",
}


def _not_ready(code: str, reason: str, checks: dict[str, Any]) -> JSONResponse:
    return JSONResponse(
        {"status": "not_ready", "code": code, "reason": reason, "checks": checks},
        status_code=503,
        headers={"Retry-After": "5"},
    )


@router.get("/metrics")
async def metrics(m: MetricsDep) -> Response:
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
