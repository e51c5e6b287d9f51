"""``GET /v1/readiness``: per capability, what works now, why not, and what fixes it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from app.api.deps import ReadinessDep
from app.readiness.text import render_text
from app.settings import Settings

router = APIRouter(tags=["operations"])


@router.get("/v1/readiness", response_model=None)
async def readiness(
    service: ReadinessDep,
    format: Annotated[
        Literal["json", "text"], Query(description="text: a copyable report")
    ] = "json",
    refresh: Annotated[bool, Query(description="re-run the probes before answering")] = False,
) -> Response:
    report: dict[str, Any] = await service.fresh_report() if refresh else service.report()
    if format == "text":
        settings: Settings = service.settings
        text = render_text(
            report,
            data_dir=str(settings.data_dir.absolute()),
            database_kind=settings.effective_database_url.split(":", 1)[0],
        )
        return PlainTextResponse(text, headers={"Cache-Control": "no-store"})
    return JSONResponse(report, headers={"Cache-Control": "no-store"})
