"""Hot-path statements: Core statements compiled once, run on the driver connection.

Why: SQLAlchemy's aiosqlite adapter makes four round trips to the connection's thread per
statement (open cursor, execute, fetch, close) plus its own bookkeeping; on a single serialised
SQLite writer that, not SQLite, bounds appends per second (docs/store.md has the figures).
On PostgreSQL the round trip is asyncpg's, but SQLAlchemy's per-statement path (greenlet
switch, compiled-cache lookup, cursor and result objects) cost as much CPU as the statement.
``Prepared`` compiles a Core statement for the connection's dialect once, applies the same
type processors SQLAlchemy would (datetimes as SQLAlchemy's SQLite text format, JSON), and
runs it through the driver's public API on the DBAPI connection of the caller's SQLAlchemy
transaction: on SQLite one round trip to execute, one to fetch; on PostgreSQL one (asyncpg
prepares it once per connection and keeps it in its statement cache). BEGIN, COMMIT and
ROLLBACK stay with ``Database.write()``. Statements stay Core and stay in the repositories;
only how they are sent differs. Other drivers go through SQLAlchemy, and so does everything
with ``store.fast_path = false`` (``KEEL_STORE__FAST_PATH``), which the conformance tests
(tests/integration/store/test_fast_path_conformance.py) compare row by row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import Executable

from app.store import pg_fastpath as pg
from app.store.database import PLAIN_PATH

Processor = Callable[[Any], Any] | None


class Prepared:
    """A Core statement that runs on the driver connection on SQLite, through SQLAlchemy
    elsewhere. Rows come back as plain tuples in ``columns`` order either way."""

    def __init__(
        self,
        stmt: Executable,
        columns: Sequence[ColumnElement[Any]] = (),
        column_keys: Sequence[str] | None = None,
    ) -> None:
        self.stmt = stmt
        self.columns = tuple(columns)
        self.column_keys = list(column_keys) if column_keys is not None else None
        self._dialect: Dialect | None = None
        self._sql = ""
        self._names: tuple[str, ...] = ()
        self._defaults: tuple[Any, ...] = ()
        self._binds: tuple[Processor, ...] = ()
        self._results: tuple[Processor, ...] = ()

    async def fetch(
        self, conn: AsyncConnection, values: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Execute and return every row."""
        if conn.info.get(PLAIN_PATH):
            return [tuple(r) for r in (await conn.execute(self.stmt, dict(values))).all()]
        if _on_asyncpg(conn):
            params = self._params(conn, values)
            rows = await pg.run(conn, self._sql, params, "fetch")
            return [
                tuple(v if p is None else p(v) for p, v in zip(self._results, row, strict=True))
                for row in rows
            ]
        if conn.dialect.name != "sqlite":
            return [tuple(r) for r in (await conn.execute(self.stmt, dict(values))).all()]
        params = self._params(conn, values)  # compiles on first use, so before self._sql
        # One round trip that also drains the statement, so COMMIT finds it reset.
        rows = await _driver(conn).execute_fetchall(self._sql, params)
        return [
            tuple(v if p is None else p(v) for p, v in zip(self._results, row, strict=True))
            for row in rows
        ]

    async def execute(self, conn: AsyncConnection, values: Mapping[str, Any]) -> int:
        """Execute without rows; returns the number of rows changed."""
        if conn.info.get(PLAIN_PATH):
            return int((await conn.execute(self.stmt, dict(values))).rowcount)
        if _on_asyncpg(conn):
            params = self._params(conn, values)  # compiles on first use, so before self._sql
            status = await pg.run(conn, self._sql, params, "execute")
            return pg.rowcount(status)
        if conn.dialect.name != "sqlite":
            return int((await conn.execute(self.stmt, dict(values))).rowcount)
        params = self._params(conn, values)
        cursor = await _driver(conn).execute(self._sql, params)
        return int(cursor.rowcount)

    async def execute_many(self, conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
        if conn.info.get(PLAIN_PATH):
            await conn.execute(self.stmt, [dict(r) for r in rows])
            return
        if _on_asyncpg(conn):
            params = [self._params(conn, r) for r in rows]
            await pg.run(conn, self._sql, params, "executemany")
            return
        if conn.dialect.name != "sqlite":
            await conn.execute(self.stmt, [dict(r) for r in rows])
            return
        params = [self._params(conn, r) for r in rows]
        await _driver(conn).executemany(self._sql, params)

    def _params(self, conn: AsyncConnection, values: Mapping[str, Any]) -> tuple[Any, ...]:
        if self._dialect is not conn.dialect:
            self._compile(conn.dialect)
        out = []
        for name, default, process in zip(self._names, self._defaults, self._binds, strict=True):
            value = values.get(name, default)
            out.append(value if process is None else process(value))
        return tuple(out)

    def _compile(self, dialect: Dialect) -> None:
        compiled = self.stmt.compile(  # type: ignore[attr-defined]
            dialect=dialect, column_keys=self.column_keys
        )
        if "POSTCOMPILE" in compiled.string or compiled.positiontup is None:
            raise ValueError("fast-path statements take plain positional parameters only")
        binds = compiled.binds
        self._sql = compiled.string
        self._names = tuple(compiled.positiontup)
        # Literals inside the statement (``version + 1``) are anonymous binds with a value.
        self._defaults = tuple(binds[n].effective_value for n in self._names)
        self._binds = tuple(
            binds[n].type.dialect_impl(dialect).bind_processor(dialect) for n in self._names
        )
        self._results = tuple(
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in self.columns
        )
        self._dialect = dialect


def _on_asyncpg(conn: AsyncConnection) -> bool:
    return conn.dialect.driver == "asyncpg" and pg.supported(conn)


def _driver(conn: AsyncConnection) -> Any:
    """The aiosqlite connection under the caller's transaction.

    ``sync_connection.connection`` is the pooled DBAPI connection the transaction already
    holds (no I/O); ``driver_connection`` is the aiosqlite object behind SQLAlchemy's adapter.
    """
    return conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]
