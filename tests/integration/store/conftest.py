"""Store test helpers: a second Database on the app's store, table dumps, conversations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.settings import Settings
from app.store.database import Database
from app.store.tables import metadata


@pytest.fixture
async def store_db(client: httpx.AsyncClient, settings: Settings) -> AsyncIterator[Database]:
    """Direct access to the (migrated) store the app under test uses."""
    db = Database(settings.effective_database_url, settings.store)
    try:
        yield db
    finally:
        await db.dispose()


async def dump_tables(db: Database) -> str:
    """Every row of every table, in a stable order: equal dumps mean an unchanged store."""
    out: list[str] = []
    async with db.read() as conn:
        for table in metadata.sorted_tables:
            rows = (await conn.execute(select(table).order_by(*table.primary_key.columns))).all()
            out.append(f"{table.name}: {[tuple(r) for r in rows]!r}")
    return "\n".join(out)


async def create_conversation(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/conversations", json=body)
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def append(
    client: httpx.AsyncClient,
    cid: str,
    *contents: str,
    role: str = "user",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    body = {"messages": [{"role": role, "content": c} for c in contents], **extra}
    return await client.post(f"/v1/conversations/{cid}/messages", json=body, headers=headers or {})


async def messages_of(client: httpx.AsyncClient, cid: str) -> list[dict[str, Any]]:
    """Every live item, oldest first, as ``{id, seq, role, content}`` with the text joined."""
    out: list[dict[str, Any]] = []
    params: dict[str, Any] = {"order": "asc", "limit": 200}
    for _ in range(100):  # bounded: 20,000 items is more than any test writes
        resp = await client.get(f"/v1/conversations/{cid}/items", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        out += [
            {
                "id": i["id"],
                "seq": i["seq"],
                "role": i["role"],
                "content": "".join(p["text"] for p in i["content"]),
            }
            for i in page["data"]
        ]
        if not page["has_more"]:
            return out
        params["after"] = page["last_id"]
    raise AssertionError("more pages than expected")


def metric_value(text: str, line_prefix: str) -> float:
    """The value of the first exposition line starting with ``line_prefix`` (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
async def migrated_db(db_url: str) -> AsyncIterator[Database]:
    """A migrated store without an app in front of it (service-level tests)."""
    from app.store.migrate import upgrade_to_head

    db = Database(db_url)
    try:
        await upgrade_to_head(db)
        yield db
    finally:
        await db.dispose()
