"""The async engine and the transaction boundary.

``Database.write()``, ``write_batched(job)`` (group commit) and ``read()`` are the only ways
to reach the store. A write is one
short transaction: on SQLite it starts with ``BEGIN IMMEDIATE`` and is serialised by an asyncio
lock, because a deferred transaction that upgrades to a writer fails with ``database is locked``
without ever calling the busy handler; on PostgreSQL writes run concurrently and rely on row
locks and version checks.

Both turn transient failures of the store (no free pooled connection, a connection the server
terminated, a refused connect) and an unmigrated schema into 503s from the catalogue
(``db_errors.translate``); anything else propagates unchanged.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool, QueuePool
from sqlalchemy.util import await_only

from app.settings import StoreSettings
from app.store.db_errors import translate
from app.store.write_batch import Job, WriteBatcher

T = TypeVar("T")

PLAIN_PATH = "keel_plain_path"

# sqlite3.OperationalError arrives raw from the SQLite fast path (sqlite_fastpath.py).
_SQLITE_POOL = 8
_TRANSIENT = (sa_exc.DBAPIError, sa_exc.TimeoutError, ConnectionError, sqlite3.OperationalError)


class Database:
    def __init__(self, url: str, store: StoreSettings | None = None) -> None:
        self.url = url
        self.store = store or StoreSettings()
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        self.engine = (
            _create_engine(url, self.store)
            if self.is_sqlite
            else create_async_engine(
                url,
                pool_size=self.store.pool_size,
                max_overflow=self.store.pool_max_overflow,
                pool_pre_ping=True,
                pool_timeout=self.store.pool_timeout_s,
            )
        )
        if self.engine.dialect.driver == "asyncpg":
            _ping_with_begin(self.engine)
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        if not self.store.fast_path:
            event.listen(self.engine.sync_engine, "connect", _plain_path)
        self._batcher = WriteBatcher(self)

    async def write_batched(self, job: Job[T]) -> T:
        """``job(conn)`` in a committed write transaction that it may share with other queued
        writes (group commit on SQLite, see ``write_batch.py``). ``job`` may therefore run
        twice after a rollback: keep side effects other than the store's out of it."""
        return await self._batcher.run(job)

    def pool_saturated(self) -> bool:
        """Every pooled connection is checked out: a new transaction would queue for one."""
        pool = self.engine.pool
        if not isinstance(pool, QueuePool):
            return False
        limit = (
            _SQLITE_POOL if self.is_sqlite else self.store.pool_size + self.store.pool_max_overflow
        )
        return pool.checkedout() >= limit

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: commit when the block returns, roll back when it raises."""
        try:
            if self._write_lock is None:
                async with self.engine.begin() as conn:
                    yield conn
                return
            async with self._write_lock, self.engine.connect() as conn:
                conn.info["begin_mode"] = "IMMEDIATE"
                async with conn.begin():
                    yield conn
        except _TRANSIENT as exc:
            translated = translate(exc)
            if translated is None:
                raise
            raise translated from exc

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only snapshot (SQLite WAL readers never block the writer)."""
        try:
            async with self.engine.connect() as conn, conn.begin() as tx:
                try:
                    yield conn
                finally:
                    await tx.rollback()
        except _TRANSIENT as exc:
            translated = translate(exc)
            if translated is None:
                raise
            raise translated from exc

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self._batcher.aclose()  # queued writes finish before the engine goes
        await self.engine.dispose()


def _create_engine(url: str, store: StoreSettings) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = (
        create_async_engine(
            url,
            # A small pool: one writer at a time anyway, plus readers under WAL.
            pool_size=_SQLITE_POOL,
            max_overflow=0,
            pool_timeout=store.pool_timeout_s,
            connect_args={"timeout": store.sqlite_busy_timeout_ms / 1000},
        )
        if parsed.database not in (None, "", ":memory:")
        else create_async_engine(url, poolclass=NullPool)
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver; _on_begin below issues BEGIN itself.
        dbapi_conn.isolation_level = None
        # SQLite returns TEXT bytes unchecked, and sqlite3 raises on invalid UTF-8 before any
        # checksum runs (a bit flip became a 500 internal_error). Decoding with U+FFFD keeps
        # the read going; the altered text then fails its checksum like any other damage.
        dbapi_conn.driver_connection.text_factory = _decode_text
        cur = dbapi_conn.cursor()
        _switch_to_wal(cur, store.sqlite_busy_timeout_ms / 1000)
        cur.execute(f"PRAGMA synchronous={store.sqlite_synchronous}")
        cur.execute(f"PRAGMA busy_timeout={int(store.sqlite_busy_timeout_ms)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(f"BEGIN {conn.info.pop('begin_mode', 'DEFERRED')}")

    return engine


def _ping_with_begin(engine: AsyncEngine) -> None:
    """Make the pool's pre-ping the transaction's own BEGIN.

    SQLAlchemy's asyncpg ping is three round trips (BEGIN, an empty query, ROLLBACK) on every
    checkout, before the transaction sends its own BEGIN: on an append that was most of the
    CPU PostgreSQL cost over SQLite (docs/benchmarks.md). Starting the transaction is as good a
    liveness check: a dead connection fails the BEGIN, the pool discards it and checks out
    another, exactly as with the stock ping. The transaction then uses the BEGIN already sent;
    a connection returned unused is rolled back by the pool's reset as always.
    """
    stock = engine.dialect.do_ping

    def do_ping(dbapi_connection: Any) -> bool:
        if getattr(dbapi_connection, "_transaction", True) is not None:
            return stock(dbapi_connection)  # already in a transaction, or not the adapter we know
        await_only(dbapi_connection._start_transaction())  # no-op under AUTOCOMMIT
        return True

    engine.dialect.do_ping = do_ping  # type: ignore[method-assign]


def _plain_path(_dbapi_conn: Any, record: Any) -> None:
    # Read by sqlite_fastpath.Prepared: every statement on this connection goes through
    # SQLAlchemy (store.fast_path = false).
    record.info[PLAIN_PATH] = True


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _switch_to_wal(cur: Any, bound_s: float) -> None:
    """Turn on WAL, retrying within the busy timeout: a new database switches under an
    exclusive lock, and SQLite answers a concurrent switch (two replicas starting on one fresh
    file) with "database is locked" at once, without consulting busy_timeout."""
    deadline = time.monotonic() + bound_s
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
