"""What an items page costs, delta sync with tombstones, and checksums on every item read,
through the official openai SDK (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest
from openai.types.conversations import Message
from sqlalchemy import update

from app.store import conversation_repository
from app.store.database import Database
from app.store.tables import messages
from tests.integration.conversations_api.conftest import (
    StatementLog,
    item_id,
    said,
    text_of,
    user,
)


@pytest.fixture
def rows_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many item rows the repository turned into messages (every row a query returned)."""
    counter = [0]
    original: Callable[..., Any] = conversation_repository._message

    def counting(row: Any) -> Any:
        counter[0] += 1
        return original(row)

    monkeypatch.setattr(conversation_repository, "_message", counting)
    return counter


async def test_a_page_of_20_from_500_items_reads_a_page(
    sdk: openai.AsyncOpenAI, statements: StatementLog, rows_read: list[int]
) -> None:
    conv = await sdk.conversations.create()
    for start in range(0, 500, 100):
        await sdk.conversations.items.create(
            conv.id, items=[user(f"m{n}") for n in range(start, start + 100)]
        )
    rows_read[0] = 0
    statements.statements.clear()

    page = await sdk.conversations.items.list(conv.id, limit=20)
    assert [text_of(m) for m in page.data] == [f"m{n}" for n in range(499, 479, -1)]
    assert page.has_more is True
    assert rows_read[0] == 21  # the page and one row to know there is more
    item_reads = [s for s in statements.statements if "FROM messages" in s]
    assert len(item_reads) == 1
    assert "LIMIT" in item_reads[0].upper()
    selects = [s for s in statements.statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2  # the conversation's head, then the page

    rows_read[0] = 0
    statements.statements.clear()
    deeper = await sdk.conversations.items.list(conv.id, limit=20, after=item_id(page.data[-1]))
    assert (deeper.data[0].model_extra or {})["seq"] == 480
    assert rows_read[0] == 21
    assert len([s for s in statements.statements if "FROM messages" in s]) == 2  # cursor + page

    # The counter does see whole-conversation reads: /verify reads all 500.
    rows_read[0] = 0
    await sdk.post(f"/conversations/{conv.id}/verify", cast_to=object)
    assert rows_read[0] == 500


async def test_delta_after_a_delete_shows_a_tombstone(sdk: openai.AsyncOpenAI) -> None:
    conv = await sdk.conversations.create(items=[user("a"), user("b"), user("c")])
    synced = (await sdk.conversations.with_raw_response.retrieve(conv.id)).headers["etag"]
    assert synced == '"1"'
    items = (await sdk.conversations.items.list(conv.id, order="asc")).data
    await sdk.conversations.items.delete(item_id(items[1]), conversation_id=conv.id)
    await sdk.conversations.items.create(conv.id, items=[user("d")])

    delta = await sdk.conversations.items.list(
        conv.id, order="asc", extra_query={"since_version": 1}
    )
    rows = [(d.id, d.model_dump(exclude_none=True)) for d in delta.data]
    assert rows[0][0] == items[1].id
    assert rows[0][1] == {"id": items[1].id, "type": "message", "seq": 2, "deleted": True}
    assert (rows[1][1]["seq"], rows[1][1]["content"][0]["text"]) == (4, "d")
    assert "deleted" not in rows[1][1]
    assert (delta.model_extra or {})["version"] == 3
    assert (delta.model_extra or {})["from_version"] == 1
    # Never existed: no tombstone; the plain list has no deleted items.
    live = [i.id async for i in sdk.conversations.items.list(conv.id)]
    assert items[1].id not in live
    assert len(live) == 3


async def test_checksums_are_verified_on_every_item_read(
    sdk: openai.AsyncOpenAI, db: Database
) -> None:
    conv = await sdk.conversations.create(
        items=[
            user("fine"),
            said(
                "user", [{"type": "input_text", "text": "x"}, {"type": "input_text", "text": "y"}]
            ),
        ]
    )
    items = (await sdk.conversations.items.list(conv.id, order="asc")).data
    two = await sdk.conversations.items.retrieve(item_id(items[1]), conversation_id=conv.id)
    assert isinstance(two, Message)
    assert [getattr(c, "text", None) for c in two.content] == ["x", "y"]
    async with db.write() as conn:
        await conn.execute(
            update(messages)
            .where(messages.c.id == items[1].id)
            .values(parts=[{"type": "input_text", "text": "TAMPERED"}])
        )
    for read in (
        sdk.conversations.items.retrieve(item_id(items[1]), conversation_id=conv.id),
        sdk.conversations.items.list(conv.id),
        sdk.conversations.items.list(conv.id, extra_query={"since_version": 0}),
    ):
        with pytest.raises(openai.InternalServerError) as info:
            await read
        assert isinstance(info.value.body, dict)
        assert info.value.body["code"] == "data_corrupted"
        assert "TAMPERED" not in info.value.response.text
    fine = await sdk.conversations.items.retrieve(item_id(items[0]), conversation_id=conv.id)
    assert fine.id == items[0].id
