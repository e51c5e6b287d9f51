"""The store's lifespan component: the database (migrated at start unless told otherwise), the
conversation service, the idempotency layer and its sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from app.core import Core
from app.store.conversations import ConversationService
from app.store.database import Database
from app.store.idempotency import Idempotency
from app.store.migrate import schema_status, upgrade_to_head

log = logging.getLogger("keel")

NOT_MIGRATED = "database schema is not migrated; run `keel migrate`"


@dataclass(frozen=True, slots=True)
class Store:
    """The store component's resources. ``schema_error`` is set when the schema is behind."""

    core: Core
    db: Database
    schema_error: str | None
    idempotency: Idempotency
    conversations: ConversationService


@asynccontextmanager
async def store_component(core: Core) -> AsyncIterator[Store]:
    settings = core.settings
    db = Database(settings.effective_database_url, settings.store)
    try:
        schema_error: str | None = None
        if settings.auto_migrate:
            await upgrade_to_head(db)
        elif not (await schema_status(db)).up_to_date:
            schema_error = NOT_MIGRATED
            log.warning("database schema is behind; serving /readyz 503 until migrated")
        idempotency = Idempotency(db, settings.store, core.metrics)
        conversations = ConversationService(settings.store, core.metrics, core.timeline)
        sweeper = core.tasks.spawn(idempotency.sweep_forever(), name="idempotency-sweeper")
        try:
            yield Store(core, db, schema_error, idempotency, conversations)
        finally:
            # The task group would cancel it too, but only after the database is disposed.
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
    finally:
        await db.dispose()
