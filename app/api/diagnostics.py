"""``GET /v1/diagnostics``: what an operator needs to see why requests fail right now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from app.api.deps import GuardsDep, LifecycleDep, TimelineDep

router = APIRouter(tags=["operations"])


@router.get("/v1/diagnostics")
async def diagnostics(
    timeline: TimelineDep,
    guards: GuardsDep,
    lifecycle: LifecycleDep,
    last: int = Query(100, ge=1, le=1000, description="transitions to include"),
) -> dict[str, Any]:
    providers = [guard.diagnostics() for guard in guards.values()]
    return {
        "providers": providers,
        "breakers": {p["provider"]: p["breaker"] for p in providers},
        "retry_budgets": {p["provider"]: p["retry_budget"] for p in providers},
        "limiters": {p["provider"]: p["limiter"] for p in providers},
        "jobs": lifecycle.running_jobs(),
        "transitions": [t.as_json() for t in timeline.last(last)],
    }
