"""The append path on PostgreSQL: what goes over the wire, and that failures on the asyncpg
fast path (``pg_fastpath.py``) look exactly like failures through SQLAlchemy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc

from app.errors import DatabaseUnavailable
from app.observability.metrics import Metrics
from app.settings import StoreSettings
from app.store import conversation_repository as repo
from app.store.conversation_models import NewMessage
from app.store.conversations import ConversationService
from app.store.database import Database
from app.store.idempotency import Idempotency, IdempotencyRequest, StoredResponse
from app.store.migrate import upgrade_to_head


@pytest.fixture
async def pg(db_url: str) -> AsyncIterator[tuple[Database, list[str]]]:
    """A migrated PostgreSQL store and the log of every query its connections send."""
    if db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL wire traffic")
    db = Database(db_url, StoreSettings(pool_size=1, pool_max_overflow=0))
    await upgrade_to_head(db)
    sent: list[str] = []

    @event.listens_for(db.engine.sync_engine, "connect")
    def _log(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.driver_connection.add_query_logger(lambda q: sent.append(q.query))

    await db.engine.dispose()  # reconnect with the logger attached
    try:
        yield db, sent
    finally:
        await db.dispose()


def _verbs(sent: list[str]) -> list[str]:
    return [q.strip().split()[0].rstrip(";").upper() for q in sent]


async def _append(db: Database, idem: Idempotency, cid: str, key: str | None) -> None:
    conversations = ConversationService(StoreSettings(), Metrics())
    request = IdempotencyRequest(key, "POST /t anon", "f" * 64, "/t") if key else None

    async def effect(conn: Any) -> StoredResponse:
        await conversations.append(conn, cid, [NewMessage("user", "hello")])
        return StoredResponse(201, b"{}", {"content-type": "application/json"})

    await idem.once(request, lambda lease: lease.write(effect))


async def test_an_append_is_begin_update_insert_commit_even_on_a_reused_connection(
    pg: tuple[Database, list[str]],
) -> None:
    db, sent = pg
    idem = Idempotency(db, StoreSettings(), Metrics())
    async with db.write() as conn:
        cid = (await ConversationService(StoreSettings(), Metrics()).create(conn)).conversation.id
    for _ in range(3):  # the pool's single connection, checked out (and pinged) each time
        sent.clear()
        await _append(db, idem, cid, None)
        assert _verbs(sent) == ["BEGIN", "UPDATE", "INSERT", "COMMIT"]
    sent.clear()
    await _append(db, idem, cid, "key-1")
    # The key's claim, the effect and the key's response in one transaction, nothing else.
    assert _verbs(sent) == ["BEGIN", "INSERT", "UPDATE", "INSERT", "UPDATE", "COMMIT"]


async def test_a_checkout_after_the_server_dropped_the_connection_gets_a_fresh_one(
    pg: tuple[Database, list[str]],
) -> None:
    db, _ = pg
    idem = Idempotency(db, StoreSettings(), Metrics())
    async with db.write() as conn:
        cid = (await ConversationService(StoreSettings(), Metrics()).create(conn)).conversation.id
    admin = Database(db.url)
    try:
        async with admin.read() as conn:
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
    finally:
        await admin.dispose()
    await _append(db, idem, cid, None)  # the BEGIN that pings fails, the pool reconnects
    async with db.read() as conn:
        assert (await repo.head(conn, cid)) is not None
        assert (await repo.head(conn, cid)).message_count == 1  # type: ignore[union-attr]


async def test_fast_path_errors_are_sqlalchemy_errors(pg: tuple[Database, list[str]]) -> None:
    db, _ = pg
    async with db.write() as conn:
        created = await ConversationService(StoreSettings(), Metrics()).create(
            conn, messages=[NewMessage("user", "one")]
        )
    with pytest.raises(sa_exc.IntegrityError):  # the same seq twice: the unique constraint
        async with db.write() as conn:
            await repo.insert_messages(conn, created.conversation.id, created.messages)


async def test_a_connection_terminated_mid_append_is_503_and_the_next_append_works(
    pg: tuple[Database, list[str]],
) -> None:
    db, _ = pg
    idem = Idempotency(db, StoreSettings(), Metrics())
    async with db.write() as conn:
        cid = (await ConversationService(StoreSettings(), Metrics()).create(conn)).conversation.id
    admin = Database(db.url)

    async def append_through_a_terminated_connection() -> None:
        async with db.write() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            async with admin.read() as other:
                await other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            await ConversationService(StoreSettings(), Metrics()).append(
                conn, cid, [NewMessage("user", "lost")]
            )

    try:
        with pytest.raises(DatabaseUnavailable) as caught:
            await append_through_a_terminated_connection()
        assert caught.value.retryable
    finally:
        await admin.dispose()
    await _append(db, idem, cid, None)
    async with db.read() as conn:
        assert (await repo.head(conn, cid)).message_count == 1  # type: ignore[union-attr]
