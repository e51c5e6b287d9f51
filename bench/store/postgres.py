"""A scratch PostgreSQL database for one benchmark run (created, then dropped)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator


@contextlib.contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """``CREATE DATABASE keel_bench_<random>`` on the server of ``url`` (whose database is
    only used to connect as admin); yields the SQLAlchemy URL of the new one."""
    import asyncpg

    name = f"keel_bench_{uuid.uuid4().hex[:12]}"
    admin = url.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{url.rpartition('/')[0]}/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
