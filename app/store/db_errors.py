"""Which database failures a caller should see as "come back later" rather than a 500.

A pool that stays exhausted for ``pool_timeout``, a connection the server terminated (a
failover, ``pg_terminate_backend``, a restart) and a database that refuses connections are
conditions of the moment: the client's retry can succeed, so they are 503 with ``Retry-After``.
A schema that is not migrated yet (a replica that started before ``keel migrate``) is 503
``schema_not_ready``. Everything else stays what it is (a bug is still a 500).
"""

from __future__ import annotations

import sqlite3

from sqlalchemy import exc as sa_exc

from app.errors import DatabaseUnavailable, KeelError, Overloaded, SchemaNotReady

# SQLSTATE classes and codes (PostgreSQL appendix A): 08 connection exception, 57P01-57P03
# admin/crash shutdown and "cannot connect now", 53300 too many connections.
_UNAVAILABLE_STATES = ("08", "57P01", "57P02", "57P03", "53300")
# 42P01 undefined table, 42703 undefined column: the schema is behind the code.
_SCHEMA_STATES = ("42P01", "42703")
_SQLITE_SCHEMA = ("no such table", "no such column")
# Another process held SQLite's write lock for longer than busy_timeout.
_SQLITE_BUSY = ("database is locked", "database is busy")


def translate(exc: BaseException) -> KeelError | None:
    """The catalogue error for a transient or schema failure of the store, else None."""
    if isinstance(exc, sa_exc.TimeoutError):  # QueuePool: no connection within pool_timeout
        return Overloaded(
            "The store has no free connection right now; retry shortly.", retry_after=1
        )
    if isinstance(exc, sa_exc.DBAPIError):
        state = _sqlstate(exc)
        if state is not None and state.startswith(_SCHEMA_STATES):
            return _schema_not_ready()
        sqlite_error = _sqlite(str(exc.orig)) if isinstance(exc, sa_exc.OperationalError) else None
        if sqlite_error is not None:
            return sqlite_error
        if exc.connection_invalidated or (
            state is not None and state.startswith(_UNAVAILABLE_STATES)
        ):
            return _unavailable()
        return None
    if isinstance(exc, sqlite3.OperationalError):  # raw, from the SQLite fast path
        return _sqlite(str(exc))
    if isinstance(exc, ConnectionError):  # refused or reset while connecting
        return _unavailable()
    return None


def _sqlite(message: str) -> KeelError | None:
    if any(marker in message for marker in _SQLITE_SCHEMA):
        return _schema_not_ready()
    if any(marker in message for marker in _SQLITE_BUSY):
        return Overloaded("The store is busy with another writer; retry shortly.", retry_after=1)
    return None


def _sqlstate(exc: sa_exc.DBAPIError) -> str | None:
    # SQLAlchemy's asyncpg adapter copies the server's SQLSTATE onto the DBAPI error.
    for candidate in (exc.orig, getattr(exc.orig, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


def _schema_not_ready() -> SchemaNotReady:
    return SchemaNotReady(
        "The database schema is not migrated yet; run `keel migrate` (or enable auto-migrate).",
        retry_after=5,
    )


def _unavailable() -> DatabaseUnavailable:
    return DatabaseUnavailable(
        "The database connection was lost or refused; retry shortly.", retry_after=1
    )
