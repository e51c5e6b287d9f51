"""Idempotency under hostile timing and damaged rows: the sweeper never deletes a key that was
re-claimed while it waited for the row lock (PostgreSQL), and a stored response is verified
before it is replayed (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import text, update

from app.store import idempotency_repository as repo
from app.store.database import Database
from app.store.tables import idempotency_keys
from app.store.timeutil import utcnow
from tests.integration.store.conftest import (
    append,
    create_conversation,
    messages_of,
    metric_value,
)
from tests.integration.test_foundation import assert_problem

CORRUPTION = 'keel_data_corruption_total{kind="idempotent_response"}'
KEY, SCOPE = "k-race", "POST /v1/chat/completions anonymous"


async def _wait_until_blocked_on_a_lock(db: Database) -> None:
    """Until some other backend of this database waits on a lock (bounded)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    for _ in range(1000):
        async with db.read() as conn:
            if (await conn.execute(query)).scalar_one():
                return
        await asyncio.sleep(0.01)
    raise AssertionError("the sweeper never waited on the row lock")


async def test_sweeper_spares_a_key_reclaimed_while_it_waited(migrated_db: Database) -> None:
    if migrated_db.is_sqlite:
        pytest.skip("SQLite serialises writers: the sweeper cannot wait on a row lock")
    now = utcnow()
    hour = timedelta(hours=1)
    expired = repo.ClaimStamp("f" * 64, "a" * 32, now - 2 * hour, now - hour, now - hour)
    fresh = repo.ClaimStamp("f" * 64, "b" * 32, now, now + hour, now + hour)
    async with migrated_db.write() as conn:
        assert await repo.try_insert(conn, key=KEY, scope=SCOPE, stamp=expired)

    async def sweep() -> int:
        async with migrated_db.write() as conn:
            return await repo.delete_expired(conn, now=now, limit=10)

    # A retry of the client re-claims the expired key and holds the row lock (not committed
    # yet) while the sweeper's DELETE, which saw the row as expired, queues behind it.
    async with migrated_db.engine.connect() as taker:
        tx = await taker.begin()
        assert await repo.take_over(
            taker, key=KEY, scope=SCOPE, previous_owner=expired.owner, stamp=fresh
        )
        sweeper = asyncio.create_task(sweep())
        try:
            await _wait_until_blocked_on_a_lock(migrated_db)
        finally:
            await tx.commit()
        deleted = await sweeper

    assert deleted == 0
    async with migrated_db.read() as conn:
        row = await repo.get(conn, key=KEY, scope=SCOPE)
    assert row is not None
    assert row.owner == fresh.owner


@pytest.mark.parametrize(
    "damage",
    [
        {"response_body": b'{"id":"c_forged"}'},
        {"status_code": 200},
        {"response_headers": {"content-type": "text/html"}},
    ],
)
async def test_a_damaged_stored_response_is_never_replayed(
    client: httpx.AsyncClient, store_db: Database, damage: dict[str, object]
) -> None:
    cid = (await create_conversation(client))["id"]
    key = {"Idempotency-Key": "replay-1"}
    first = await append(client, cid, "hi", headers=key)
    assert first.status_code == 201
    intact = await append(client, cid, "hi", headers=key)
    assert intact.headers["idempotent-replayed"] == "true"

    async with store_db.write() as conn:
        await conn.execute(update(idempotency_keys).values(**damage))

    resp = await append(client, cid, "hi", headers=key)
    assert_problem(resp, 500, "data_corrupted")
    assert "c_forged" not in resp.text
    assert metric_value((await client.get("/metrics")).text, CORRUPTION) == 1
    # The effect did not run again either.
    conv = (await client.get(f"/v1/conversations/{cid}")).json()
    assert (conv["version"], len(await messages_of(client, cid))) == (2, 1)


async def test_rows_stored_before_the_checksum_existed_still_replay(
    client: httpx.AsyncClient, store_db: Database
) -> None:
    cid = (await create_conversation(client))["id"]
    key = {"Idempotency-Key": "legacy-1"}
    first = await append(client, cid, "hi", headers=key)
    async with store_db.write() as conn:
        await conn.execute(update(idempotency_keys).values(response_checksum=None))
    again = await append(client, cid, "hi", headers=key)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
