"""Two replicas auto-migrating one empty database at the same moment both come up: the upgrade
runs under a lock (a PostgreSQL advisory lock; BEGIN IMMEDIATE on SQLite)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from app.store.database import Database
from app.store.migrate import schema_status
from tests.fakes.servers import ROOT

REPLICAS = 2


async def _keel_migrate(db_url: str, cwd: Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "migrate",
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT), "KEEL_DATABASE_URL": db_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_concurrent_migrations_of_one_empty_database_all_succeed(
    db_url: str, tmp_path: Path
) -> None:
    results = await asyncio.gather(*(_keel_migrate(db_url, tmp_path) for _ in range(REPLICAS)))
    for code, output in results:
        assert code == 0, output
    db = Database(db_url)
    try:
        assert (await schema_status(db)).up_to_date
    finally:
        await db.dispose()
