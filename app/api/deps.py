"""Every dependency that hands a lifespan resource to a route, as an ``Annotated`` alias.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its threadpool,
which costs a thread hop per dependency per request. Each reads the typed ``AppState``
(``app/state.py``); nothing here or in a router looks state up by name. The chat completion
endpoint declares none of these (see its docstring) and calls ``app_state()`` itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from app.api.idempotency import idempotency_request
from app.chat.inflight import InFlightRequests
from app.chat.service import ChatService
from app.errors import ValidationFailed
from app.lifecycle.service import LifecycleService
from app.observability.metrics import Metrics
from app.observability.timeline import Timeline
from app.readiness.service import ReadinessService
from app.resilience.guard import ProviderGuard
from app.runtime.manager import RuntimeManager
from app.settings import Settings
from app.state import AppState, app_state
from app.store.conversations import ConversationService
from app.store.database import Database
from app.store.idempotency import Idempotency, IdempotencyRequest


async def get_state(request: Request) -> AppState:
    return app_state(request)


StateDep = Annotated[AppState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


async def get_metrics(state: StateDep) -> Metrics:
    return state.metrics


async def get_timeline(state: StateDep) -> Timeline:
    return state.timeline


async def get_db(state: StateDep) -> Database:
    return state.db


async def get_idempotency(state: StateDep) -> Idempotency:
    return state.idempotency


async def get_conversations(state: StateDep) -> ConversationService:
    return state.conversations


async def get_chat(state: StateDep) -> ChatService:
    return state.chat


async def get_guards(state: StateDep) -> Mapping[str, ProviderGuard]:
    return state.guards


async def get_lifecycle(state: StateDep) -> LifecycleService:
    return state.lifecycle


async def get_runtime(state: StateDep) -> RuntimeManager:
    return state.runtime


async def get_readiness(state: StateDep) -> ReadinessService:
    return state.readiness


async def get_inflight(state: StateDep) -> InFlightRequests:
    return state.inflight


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
TimelineDep = Annotated[Timeline, Depends(get_timeline)]
DatabaseDep = Annotated[Database, Depends(get_db)]
IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]
IdempotencyKeyDep = Annotated[IdempotencyRequest | None, Depends(idempotency_request)]
ConversationsDep = Annotated[ConversationService, Depends(get_conversations)]
ChatDep = Annotated[ChatService, Depends(get_chat)]
GuardsDep = Annotated[Mapping[str, ProviderGuard], Depends(get_guards)]
LifecycleDep = Annotated[LifecycleService, Depends(get_lifecycle)]
RuntimeDep = Annotated[RuntimeManager, Depends(get_runtime)]
ReadinessDep = Annotated[ReadinessService, Depends(get_readiness)]
InFlightDep = Annotated[InFlightRequests, Depends(get_inflight)]


@dataclass(frozen=True, slots=True)
class ConversationStore:
    """What the conversation endpoints use, in one dependency (one resolution per request)."""

    db: Database
    conversations: ConversationService
    idempotency: Idempotency
    metrics: Metrics


@dataclass(frozen=True, slots=True)
class ConversationWrite:
    """A mutation's store, key, ``If-Match``, ``dry_run`` and route: read by one dependency
    because each declared header/query parameter costs CPU on the append hot path."""

    store: ConversationStore
    key: IdempotencyRequest | None
    if_match: str | None
    dry_run: bool
    route: str


async def get_conversation_store(request: Request) -> ConversationStore:
    st = app_state(request)
    return ConversationStore(st.db, st.conversations, st.idempotency, st.metrics)


async def get_conversation_write(request: Request) -> ConversationWrite:
    dry_run = request.query_params.get("dry_run", "false")
    if dry_run not in ("true", "false"):
        raise ValidationFailed(
            "dry_run must be true or false.",
            extra={"errors": [{"field": "query.dry_run", "message": "must be true or false"}]},
        )
    return ConversationWrite(
        await get_conversation_store(request),
        await idempotency_request(request),
        request.headers.get("if-match"),
        dry_run == "true",
        getattr(request.scope.get("route"), "path", "unmatched"),
    )


ConversationStoreDep = Annotated[ConversationStore, Depends(get_conversation_store)]
ConversationWriteDep = Annotated[ConversationWrite, Depends(get_conversation_write)]
