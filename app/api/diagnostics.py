"""``GET /v1/diagnostics``: what an operator needs to see why requests fail right now."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from app.api.deps import TimelineDep
from app.readiness.component import RUNTIME_VIEW_KEY
from app.readiness.diagnostics import SUBJECT_PATTERN, diagnostics
from app.settings import Settings

router = APIRouter(tags=["operations"])


@router.get("/v1/diagnostics")
async def get_diagnostics(
    request: Request,
    timeline: TimelineDep,
    last: Annotated[int, Query(ge=1, le=1000, description="transitions to include")] = 100,
    subject: Annotated[
        str | None,
        Query(
            pattern=SUBJECT_PATTERN,
            description="only this subject (provider:cloud, model:<id>, download:<id>) or name",
        ),
    ] = None,
) -> dict[str, Any]:
    settings: Settings = request.state.settings
    secrets = [k for p in settings.providers.values() if (k := p.api_key())]
    if settings.api_token is not None:
        secrets.append(settings.api_token.get_secret_value())
    return diagnostics(
        guards=getattr(request.state, "guards", {}),
        running_jobs=getattr(request.state, "running_jobs", None),
        runtime=getattr(request.state, RUNTIME_VIEW_KEY, None),
        timeline=timeline,
        last=last,
        subject=subject,
        secrets=secrets,
    )
