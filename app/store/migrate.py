"""Running Alembic from inside the app and asking whether the schema is current.

The migrations ship inside the package (``app/migrations``, installed as package data), and the
Alembic configuration is built here in code, so ``keel migrate`` and ``keel serve`` work from
any directory after a plain ``pip install .``, with no ``alembic.ini`` or source tree beside them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
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


MIGRATION_LOCK_KEY = 0x6B65656C_6D696772  # "keelmigr": one advisory lock id for every replica


async def upgrade_to_head(db: Database) -> None:
    """Migrate to head; safe when several replicas start on one database at once.

    On PostgreSQL the upgrade runs under a transaction-level advisory lock: a second replica
    waits for the first to commit, then finds the schema at head and does nothing (without
    it, one of two replicas migrating an empty database died on a duplicate
    ``alembic_version``). On SQLite the transaction starts with ``BEGIN IMMEDIATE``, so a
    second process waits (``busy_timeout``) for the write lock before it reads the version.
    """
    cfg = alembic_config()

    def _upgrade(conn: Connection) -> None:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")

    async with db.engine.connect() as conn:
        if db.is_sqlite:
            conn.info["begin_mode"] = "IMMEDIATE"  # read by Database's "begin" listener
        # One transaction around every step: Alembic then leaves transactions to us instead of
        # committing after each migration on SQLite (no transactional DDL there, it says).
        _ = await conn.begin()
        if not db.is_sqlite:
            # Released by the COMMIT below (or the rollback if the upgrade fails).
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        await conn.run_sync(_upgrade)
        await conn.commit()


@functools.lru_cache(maxsize=1)
def head_revisions() -> tuple[str, ...]:
    """The heads of the installed migrations: fixed for the life of the process, and /readyz
    asks on every probe, so the scripts are parsed once."""
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


async def schema_status(db: Database) -> SchemaStatus:
    """Read the database's current revision now (never a cached verdict: `keel migrate` may
    have run since start-up). Store failures surface as catalogue errors (``db.read``)."""
    head = head_revisions()

    def _current(conn: Connection) -> tuple[str, ...]:
        return tuple(MigrationContext.configure(conn).get_current_heads())

    async with db.read() as conn:
        current = await conn.run_sync(_current)
    return SchemaStatus(current=current, head=head)
