"""Dependencies that hand lifespan-owned resources to routes (``Annotated`` aliases).

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its threadpool,
which costs a thread hop per dependency per request on the hot path.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from app.observability.metrics import Metrics
from app.observability.timeline import Timeline
from app.settings import Settings
from app.store.database import Database


def _state(request: Request, name: str) -> Any:
    return getattr(request.state, name)


async def get_settings(request: Request) -> Settings:
    settings: Settings = _state(request, "settings")
    return settings


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = _state(request, "metrics")
    return metrics


async def get_timeline(request: Request) -> Timeline:
    timeline: Timeline = _state(request, "timeline")
    return timeline


async def get_db(request: Request) -> Database:
    db: Database = _state(request, "db")
    return db


async def get_request_id(request: Request) -> str:
    rid: str = _state(request, "request_id")
    return rid


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
TimelineDep = Annotated[Timeline, Depends(get_timeline)]
DatabaseDep = Annotated[Database, Depends(get_db)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
