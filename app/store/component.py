"""The store's lifespan component: the conversation service, the idempotency layer and its
sweeper. Enter it after the database component (it needs ``state["db"]``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from app.store.conversations import ConversationService
from app.store.idempotency import Idempotency


@asynccontextmanager
async def store_services(state: dict[str, Any]) -> AsyncIterator[None]:
    settings = state["settings"].store
    idempotency = Idempotency(state["db"], settings, state["metrics"])
    state["idempotency"] = idempotency
    state["conversations"] = ConversationService(settings, state["metrics"], state["timeline"])
    sweeper = state["tasks"].spawn(idempotency.sweep_forever(), name="idempotency-sweeper")
    try:
        yield
    finally:
        # The task group would cancel it too, but only after the database is disposed.
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await idempotency.aclose()
