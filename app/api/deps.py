"""Dependencies that hand lifespan-owned resources to routes (``Annotated`` aliases).

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its threadpool,
which costs a thread hop per dependency per request on the hot path.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from app.observability.metrics import Metrics
from app.observability.timeline import Timeline
from app.store.database import Database


def _state(request: Request, name: str) -> Any:
    return getattr(request.state, name)


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = _state(request, "metrics")
    return metrics


async def get_timeline(request: Request) -> Timeline:
    timeline: Timeline = _state(request, "timeline")
    return timeline


async def get_db(request: Request) -> Database:
    db: Database = _state(request, "db")
    return db


MetricsDep = Annotated[Metrics, Depends(get_metrics)]
TimelineDep = Annotated[Timeline, Depends(get_timeline)]
DatabaseDep = Annotated[Database, Depends(get_db)]
