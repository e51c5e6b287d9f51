"""``GET /v1/diagnostics``: what an operator needs to see why requests fail right now."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.api.deps import GuardsDep, LifecycleDep, ReadinessDep, SettingsDep, TimelineDep
from app.readiness.diagnostics import SUBJECT_PATTERN, diagnostics

router = APIRouter(tags=["operations"])


@router.get("/v1/diagnostics")
async def get_diagnostics(
    settings: SettingsDep,
    timeline: TimelineDep,
    guards: GuardsDep,
    lifecycle: LifecycleDep,
    readiness: ReadinessDep,
    last: Annotated[int, Query(ge=1, le=1000, description="transitions to include")] = 100,
    subject: Annotated[
        str | None,
        Query(
            pattern=SUBJECT_PATTERN,
            description="only this subject (provider:cloud, model:<id>, download:<id>) or name",
        ),
    ] = None,
) -> dict[str, Any]:
    secrets = [k for p in settings.providers.values() if (k := p.api_key())]
    if settings.api_token is not None:
        secrets.append(settings.api_token.get_secret_value())
    return diagnostics(
        guards=guards,
        running_jobs=lifecycle.running_jobs,
        runtime=readiness.runtime,
        timeline=timeline,
        last=last,
        subject=subject,
        secrets=secrets,
    )
