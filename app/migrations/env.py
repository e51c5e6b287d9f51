"""Alembic environment: async engine, Keel's settings for the URL, batch mode for SQLite.

When the app migrates at start it hands over an open connection in
``config.attributes["connection"]``; the ``alembic`` command line builds its own engine.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from app.store.tables import metadata

config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from app.settings import load_settings

    return load_settings().effective_database_url


async def _run_async() -> None:
    from app.store.database import Database

    db = Database(_url())
    try:
        async with db.engine.connect() as conn:
            await conn.run_sync(_configure)
            await conn.commit()
    finally:
        await db.dispose()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    given = config.attributes.get("connection")
    if given is not None:
        _configure(given)
    else:
        asyncio.run(_run_async())
