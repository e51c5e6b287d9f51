"""``GET /v1/diagnostics``: what an operator needs to see why requests fail right now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from app.api.deps import TimelineDep

router = APIRouter(tags=["operations"])


@router.get("/v1/diagnostics")
async def diagnostics(
    request: Request,
    timeline: TimelineDep,
    last: int = Query(100, ge=1, le=1000, description="transitions to include"),
) -> dict[str, Any]:
    guards = getattr(request.state, "guards", {})
    providers = [guard.diagnostics() for guard in guards.values()]
    jobs_fn = getattr(request.state, "running_jobs", None)
    return {
        "providers": providers,
        "breakers": {p["provider"]: p["breaker"] for p in providers},
        "retry_budgets": {p["provider"]: p["retry_budget"] for p in providers},
        "limiters": {p["provider"]: p["limiter"] for p in providers},
        "jobs": jobs_fn() if callable(jobs_fn) else [],
        "transitions": [t.as_json() for t in timeline.last(last)],
    }
