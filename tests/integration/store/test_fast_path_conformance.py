"""The store's fast path (``sqlite_fastpath.Prepared`` on the driver connection) against the
plain path (every statement through SQLAlchemy, ``store.fast_path = false``): the same
operations leave the same rows, compared row by row, and read back the same."""

from __future__ import annotations

import itertools
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.observability.metrics import Metrics
from app.settings import StoreSettings
from app.store import sqlite_fastpath
from app.store.conversation_models import NewMessage
from app.store.conversations import ConversationService
from app.store.database import Database
from app.store.idempotency import Idempotency, IdempotencyRequest, Lease, StoredResponse
from app.store.migrate import upgrade_to_head
from app.store.tables import metadata


class Ticks:
    """A clock that advances one second per reading: both runs see the same times."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


async def _script(db: Database) -> list[Any]:
    """Creates, appends, idempotent writes and reads; returns what the reads saw."""
    settings = db.store
    metrics = Metrics()
    service = ConversationService(settings, metrics, None, clock=Ticks())
    idem = Idempotency(db, settings, metrics, clock=Ticks())
    seen: list[Any] = []
    async with db.write() as conn:
        made = await service.create(
            conn, title="t", metadata={"k": 1}, messages=[NewMessage("user", "hi")]
        )
    cid = made.conversation.id
    for i in range(3):
        key = IdempotencyRequest(f"key-{i}", "POST /x anonymous", f"{i:064x}", "/x")

        async def work(lease: Lease, i: int = i) -> StoredResponse:
            async def effect(conn: Any) -> StoredResponse:
                turns = [NewMessage("user", f"q{i}"), NewMessage("assistant", f"a{i}")]
                appended = await service.append(conn, cid, turns)
                return StoredResponse(201, f"v{appended.conversation.version}".encode(), {})

            return await lease.write(effect)

        first = await idem.once(key, work)
        again = await idem.once(key, work)  # a replay: read through the same statements
        seen.append((first.status_code, first.body, again.body, again.replayed))
    async with db.read() as conn:
        head = await service.head(conn, cid)
        items = await service.items(conn, cid, limit=100)
    seen.append((head.version, head.message_count))
    seen.append([(m.id, m.seq, m.role, m.content, m.created_at, m.version) for m in items.items])
    return seen


async def _dump(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    async with db.read() as conn:
        for table in metadata.sorted_tables:
            rows = (await conn.execute(select(table).order_by(*table.primary_key.columns))).all()
            out[table.name] = [tuple(r) for r in rows]
    return out


@pytest.fixture
def deterministic_ids(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """uuid4 and the claim owners from counters, restarted before each run."""

    def reset() -> None:
        ids = itertools.count(1)
        owners = itertools.count(1)
        monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=next(ids)))
        monkeypatch.setattr(secrets, "token_hex", lambda n: f"{next(owners):0{2 * n}x}")

    return reset


async def _run(url: str, fast: bool, reset: Callable[[], None]) -> tuple[list[Any], Any]:
    reset()
    db = Database(url, StoreSettings(fast_path=fast))
    try:
        await upgrade_to_head(db)
        seen = await _script(db)
        return seen, await _dump(db)
    finally:
        await db.dispose()


@pytest.fixture
def two_sqlite_urls(tmp_path: Path) -> tuple[str, str]:
    return (
        f"sqlite+aiosqlite:///{tmp_path / 'fast.db'}",
        f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}",
    )


async def test_fast_and_plain_paths_leave_the_same_rows(
    two_sqlite_urls: tuple[str, str],
    deterministic_ids: Callable[[], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast_url, plain_url = two_sqlite_urls
    driver_calls = 0
    real_driver = sqlite_fastpath._driver

    def counting_driver(conn: Any) -> Any:
        nonlocal driver_calls
        driver_calls += 1
        return real_driver(conn)

    monkeypatch.setattr(sqlite_fastpath, "_driver", counting_driver)
    fast_seen, fast_rows = await _run(fast_url, True, deterministic_ids)
    assert driver_calls > 0  # the fast path ran
    driver_calls = 0
    plain_seen, plain_rows = await _run(plain_url, False, deterministic_ids)
    assert driver_calls == 0  # fast_path = false: nothing bypassed SQLAlchemy
    assert fast_seen == plain_seen
    assert fast_rows.keys() == plain_rows.keys()
    for table in fast_rows:
        assert len(fast_rows[table]) == len(plain_rows[table]), table
        for fast_row, plain_row in zip(fast_rows[table], plain_rows[table], strict=True):
            assert fast_row == plain_row, table
    assert fast_rows["messages"]  # the script did write
    assert [s[3] for s in fast_seen[:3]] == [True, True, True]  # and replayed
