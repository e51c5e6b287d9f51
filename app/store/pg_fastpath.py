"""How ``Prepared`` (sqlite_fastpath.py) runs a statement on asyncpg under SQLAlchemy.

The statement runs on the asyncpg connection of the caller's SQLAlchemy transaction, inside
the transaction SQLAlchemy's adapter opened (or opens now: its BEGIN is lazy). Failures come
back as SQLAlchemy would raise them (``DBAPIError`` subclasses wrapping the driver's error,
the connection invalidated when it is gone), so ``db_errors.translate`` and every caller see
the same exceptions on either path.

This reaches into private members of SQLAlchemy's asyncpg adapter (``_ADAPTER_MEMBERS``);
``supported`` checks they exist, and without them statements go through SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NoReturn

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

Method = Literal["fetch", "execute", "executemany"]


def adapter_of(conn: AsyncConnection) -> Any:
    """SQLAlchemy's adapter around the asyncpg connection the transaction holds (no I/O)."""
    return conn.sync_connection.connection.dbapi_connection  # type: ignore[union-attr]


_ADAPTER_MEMBERS = ("_transaction", "_start_transaction", "_execute_mutex", "_connection")


def supported(conn: AsyncConnection) -> bool:
    adapter = adapter_of(conn)
    return all(hasattr(adapter, name) for name in _ADAPTER_MEMBERS)


async def run(conn: AsyncConnection, sql: str, params: Any, method: Method) -> Any:
    """``asyncpg.Connection.<method>(sql, ...)`` inside the caller's transaction."""
    adapter = adapter_of(conn)
    try:
        async with adapter._execute_mutex:
            if adapter._transaction is None:
                await adapter._start_transaction()
            driver = adapter._connection
            if method == "executemany":
                return await driver.executemany(sql, params)
            return await getattr(driver, method)(sql, *params)
    except Exception as error:
        await _reraise(conn, adapter, error, sql, params)


def rowcount(status: str) -> int:
    """Rows changed, from a command tag such as ``UPDATE 1`` or ``INSERT 0 1``."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else -1


async def _reraise(
    conn: AsyncConnection, adapter: Any, error: Exception, sql: str, params: Sequence[Any]
) -> NoReturn:
    dialect = conn.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    translated: BaseException = error
    if not isinstance(error, dbapi_error):
        try:
            adapter._handle_exception(error)  # raises the DB-API error SQLAlchemy would see
        except dbapi_error as converted:
            translated = converted
        except Exception:
            raise error from None
    if not isinstance(translated, dbapi_error):
        raise error
    gone = dialect.is_disconnect(translated, adapter, None)
    if gone:
        await conn.invalidate()
    raise sa_exc.DBAPIError.instance(
        sql,
        params,
        translated,
        dbapi_error,
        connection_invalidated=gone,
        dialect=dialect,
    ) from error
