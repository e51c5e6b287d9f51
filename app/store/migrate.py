"""Running Alembic from inside the app and asking whether the schema is current.

The migrations ship inside the package (``app/migrations``, installed as package data), and the
Alembic configuration is built here in code, so ``keel migrate`` and ``keel serve`` work from
any directory after a plain ``pip install .``, with no ``alembic.ini`` or source tree beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from app.store.database import Database

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@dataclass(frozen=True)
class SchemaStatus:
    current: tuple[str, ...]
    head: tuple[str, ...]

    @property
    def up_to_date(self) -> bool:
        return set(self.current) == set(self.head)


async def upgrade_to_head(db: Database) -> None:
    cfg = alembic_config()

    def _upgrade(conn: Connection) -> None:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")

    async with db.engine.connect() as conn:
        await conn.run_sync(_upgrade)
        await conn.commit()


async def schema_status(db: Database) -> SchemaStatus:
    head = tuple(ScriptDirectory.from_config(alembic_config()).get_heads())

    def _current(conn: Connection) -> tuple[str, ...]:
        return tuple(MigrationContext.configure(conn).get_current_heads())

    async with db.engine.connect() as conn:
        current = await conn.run_sync(_current)
    return SchemaStatus(current=current, head=head)
