"""Transient store failures are 503s a client may retry, never 500 internal_error: an exhausted
connection pool, a connection the server terminated; /readyz says which (PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
from sqlalchemy import text

from app.errors import DatabaseUnavailable
from app.main import create_app
from app.settings import Settings
from app.store.database import Database
from tests.conftest import asgi_client
from tests.integration.test_foundation import assert_problem


@pytest.fixture
def postgres_url(db_url: str) -> str:
    if db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL connections: pool and server-side termination")
    return db_url


async def test_pool_exhaustion_is_503_overloaded_and_readyz_says_so(
    make_settings: Callable[..., Settings], postgres_url: str
) -> None:
    settings = make_settings(
        database_url=postgres_url,
        store={"pool_size": 1, "pool_max_overflow": 0, "pool_timeout_s": 0.2},
    )
    running = asgi_client(create_app(settings))
    async with running as client:
        assert (await client.post("/v1/conversations", json={})).status_code == 201
        db = running.state.db
        async with AsyncExitStack() as held:
            _ = await held.enter_async_context(db.engine.connect())  # the pool's only one
            for resp in (
                await client.post("/v1/conversations", json={}),
                await client.get("/v1/conversations"),
            ):
                body = assert_problem(resp, 503, "overloaded")
                assert body["retryable"] is True
                assert resp.headers["retry-after"] == "1"
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["code"] == "overloaded"
            assert ready.json()["checks"]["database"] == "pool_exhausted"
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/v1/conversations")).status_code == 200


async def test_readyz_answers_within_its_own_bound_when_the_pool_is_drained(
    make_settings: Callable[..., Settings],
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pool wait longer than the probe's own bound still gets an honest, prompt answer."""
    monkeypatch.setattr("app.api.health.CHECK_TIMEOUT_S", 0.2)
    settings = make_settings(
        database_url=postgres_url,
        store={"pool_size": 1, "pool_max_overflow": 0, "pool_timeout_s": 60},
    )
    running = asgi_client(create_app(settings))
    async with running as client:
        db: Database = running.state.db
        async with db.engine.connect():
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["code"] == "overloaded"
            assert ready.json()["checks"]["database"] == "pool_exhausted"
        assert (await client.get("/readyz")).status_code == 200


async def test_a_terminated_connection_is_503_database_unavailable(postgres_url: str) -> None:
    db, admin = Database(postgres_url), Database(postgres_url)
    try:

        async def read_through_a_terminated_connection() -> None:
            async with db.read() as conn:
                pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                async with admin.read() as other:
                    await other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                await conn.execute(text("SELECT 1"))

        with pytest.raises(DatabaseUnavailable) as caught:
            await read_through_a_terminated_connection()
        assert caught.value.status_code == 503
        assert caught.value.retryable
        # The pool dropped the dead connection: the next transaction just works.
        async with db.read() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await db.dispose()
        await admin.dispose()


async def test_requests_after_the_server_dropped_every_connection_succeed(
    client: Any, store_db: Database, db_url: str
) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL connections")
    assert (await client.post("/v1/conversations", json={})).status_code == 201
    async with store_db.read() as conn:
        await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    assert (await client.get("/v1/conversations")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200


async def test_sqlite_locked_by_another_process_is_503_overloaded(
    make_settings: Callable[..., Settings], db_url: str
) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("SQLite's file lock")
    import sqlite3

    settings = make_settings(database_url=db_url, store={"sqlite_busy_timeout_ms": 50})
    async with asgi_client(create_app(settings)) as client:
        cid = (await client.post("/v1/conversations", json={})).json()["id"]
        other = sqlite3.connect(db_url.split("///", 1)[1], isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            resp = await client.post(
                f"/v1/conversations/{cid}/messages",
                json={"messages": [{"role": "user", "content": "hi"}]},
            )
            body = assert_problem(resp, 503, "overloaded")
            assert body["retryable"] is True
        finally:
            other.execute("ROLLBACK")
            other.close()
        again = await client.post(
            f"/v1/conversations/{cid}/messages",
            json={"messages": [{"role": "user", "content": "hi"}]},
        )
        assert again.status_code == 201
