"""The migrations build exactly the schema ``app/store/tables.py`` declares: after upgrading an
empty database to head, Alembic's autogenerate finds nothing to add, drop or alter."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from app.store.database import Database
from app.store.migrate import MIGRATIONS_DIR, upgrade_to_head
from app.store.tables import metadata


async def test_head_matches_the_table_definitions(db_url: str) -> None:
    db = Database(db_url)
    try:
        await upgrade_to_head(db)

        def diff(conn: Connection) -> list[Any]:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))

        async with db.engine.connect() as conn:
            changes = await conn.run_sync(diff)
    finally:
        await db.dispose()
    assert changes == [], changes


def test_migrations_ship_inside_the_package() -> None:
    assert MIGRATIONS_DIR.parent.name == "app"
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("0*.py"))
