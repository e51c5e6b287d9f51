"""The typed lifespan state: every long-lived resource by name, and how a request reaches it.

The lifespan (``app/main.py``) enters the components (``app/core.py``) in order; each is built
from what the earlier ones made and yields what it adds. The result is one frozen ``AppState``.
Starlette copies the lifespan's mapping into every request's scope; the mapping holds
``AppState`` under one key, read only by ``app_state()`` here, so no other module looks
anything up by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from app.chat.inflight import InFlightRequests
    from app.chat.service import ChatService
    from app.core import TaskGroup
    from app.lifecycle.service import LifecycleService
    from app.observability.metrics import Metrics
    from app.observability.timeline import Timeline
    from app.readiness.service import ReadinessService
    from app.resilience.guard import ProviderGuard
    from app.runtime.manager import RuntimeManager
    from app.settings import Settings
    from app.store.conversations import ConversationService
    from app.store.database import Database
    from app.store.idempotency import Idempotency

_STATE_KEY = "keel"


@dataclass(frozen=True, slots=True)
class AppState:
    """Every lifespan resource, as the routes see it."""

    settings: Settings
    metrics: Metrics
    timeline: Timeline
    tasks: TaskGroup
    db: Database
    schema_error: str | None
    idempotency: Idempotency
    conversations: ConversationService
    lifecycle: LifecycleService
    runtime: RuntimeManager
    chat: ChatService
    guards: Mapping[str, ProviderGuard]
    readiness: ReadinessService
    inflight: InFlightRequests  # requests being answered, for cancel by X-Request-Id


def lifespan_state(state: AppState) -> dict[str, AppState]:
    """The mapping the lifespan yields (Starlette copies it into each request's scope)."""
    return {_STATE_KEY: state}


def app_state(conn: HTTPConnection) -> AppState:
    """The lifespan state of a request: one dict lookup, cheap enough for the hot path."""
    state: AppState = conn.scope["state"][_STATE_KEY]
    return state


def state_of(lifespan: Mapping[str, Any]) -> AppState:
    """The ``AppState`` inside what the lifespan yielded (tests reach it this way)."""
    state: AppState = lifespan[_STATE_KEY]
    return state
