"""``client.conversations`` of the official openai SDK, unchanged, against Keel (SQLite and
PostgreSQL): OpenAI's shapes, with Keel's versions, preconditions and idempotency keys."""

from __future__ import annotations

import json

import openai
import pytest
from openai.types.conversations import Conversation, ConversationDeletedResource, Message

from tests.integration.conversations_api.conftest import item_id, said, text_of, user


async def test_create_retrieve_update_delete(sdk: openai.AsyncOpenAI) -> None:
    made = await sdk.conversations.create(
        items=[user("hello"), said("assistant", "hi there")],
        metadata={"topic": "demo"},
    )
    assert isinstance(made, Conversation)
    assert made.object == "conversation"
    assert made.metadata == {"topic": "demo"}
    assert isinstance(made.created_at, int)
    extra = made.model_extra or {}
    assert extra["version"] == 1
    assert extra["title"] is None
    assert extra["updated_at"] == made.created_at

    got = await sdk.conversations.retrieve(made.id)
    assert got.id == made.id
    assert got.metadata == {"topic": "demo"}

    # Updates need the version read (DESIGN §3): If-Match, as the ETag said.
    updated = await sdk.conversations.update(
        made.id, metadata={"topic": "renamed"}, extra_headers={"If-Match": '"1"'}
    )
    assert updated.metadata == {"topic": "renamed"}
    assert (updated.model_extra or {})["version"] == 2
    # ...or expected_version in the body.
    again = await sdk.conversations.update(
        made.id, metadata=None, extra_body={"expected_version": 2, "title": "Demo"}
    )
    assert again.metadata == {}
    assert (again.model_extra or {})["title"] == "Demo"

    items = [i async for i in sdk.conversations.items.list(made.id, order="asc")]
    assert [i.type for i in items] == ["message", "message"]

    gone = await sdk.conversations.delete(made.id, extra_headers={"If-Match": '"3"'})
    assert isinstance(gone, ConversationDeletedResource)
    assert (gone.id, gone.object, gone.deleted) == (made.id, "conversation.deleted", True)
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.retrieve(made.id)


async def test_update_without_a_version_is_428(sdk: openai.AsyncOpenAI) -> None:
    made = await sdk.conversations.create()
    with pytest.raises(openai.APIStatusError) as info:
        await sdk.conversations.update(made.id, metadata={"a": "b"})
    assert info.value.status_code == 428
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "precondition_required"
    assert info.value.response.json()["current_version"] == 1


async def test_items_create_list_retrieve_delete(sdk: openai.AsyncOpenAI) -> None:
    conv = await sdk.conversations.create()
    added = await sdk.conversations.items.create(
        conv.id,
        items=[
            user("one"),
            said("assistant", [{"type": "output_text", "text": "two"}]),
            said("user", "three"),  # plain string content, as Keel always took
        ],
    )
    assert added.object == "list"
    assert [m.type for m in added.data] == ["message"] * 3
    assert added.first_id == added.data[0].id
    assert added.last_id == added.data[-1].id
    assert added.has_more is False
    first = added.data[0]
    assert isinstance(first, Message)
    assert (first.role, first.status) == ("user", "completed")
    assert [(c.type, getattr(c, "text", None)) for c in first.content] == [("input_text", "one")]
    reply = added.data[1]
    assert isinstance(reply, Message)
    assert reply.content[0].type == "output_text"
    assert [(m.model_extra or {})["seq"] for m in added.data] == [1, 2, 3]

    one = await sdk.conversations.items.retrieve(item_id(first), conversation_id=conv.id)
    assert isinstance(one, Message)
    assert one.id == first.id
    assert one.content[0].type == "input_text"

    newest_first = await sdk.conversations.items.list(conv.id)
    assert [m.id for m in newest_first.data] == [m.id for m in reversed(added.data)]

    after_delete = await sdk.conversations.items.delete(item_id(first), conversation_id=conv.id)
    assert isinstance(after_delete, Conversation)
    assert after_delete.id == conv.id
    assert (after_delete.model_extra or {})["version"] == 3
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.items.retrieve(item_id(first), conversation_id=conv.id)
    left = [m.id async for m in sdk.conversations.items.list(conv.id, order="asc")]
    assert left == [added.data[1].id, added.data[2].id]
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.items.delete(item_id(first), conversation_id=conv.id)


async def test_items_page_with_after_and_limit(sdk: openai.AsyncOpenAI) -> None:
    conv = await sdk.conversations.create(items=[user(f"m{i}") for i in range(7)])
    page = await sdk.conversations.items.list(conv.id, limit=3, order="asc")
    texts: list[str] = []
    pages = 0
    while True:
        pages += 1
        texts += [text_of(m) for m in page.data]
        if not page.has_next_page():
            break
        page = await page.get_next_page()
    assert texts == [f"m{i}" for i in range(7)]
    assert pages == 3
    first = await sdk.conversations.items.list(conv.id, limit=3, order="asc")
    second = await sdk.conversations.items.list(
        conv.id, limit=3, order="asc", after=item_id(first.data[-1])
    )
    assert [text_of(m) for m in second.data] == ["m3", "m4", "m5"]
    assert second.has_more is True

    desc = await sdk.conversations.items.list(conv.id, limit=2)
    older = await sdk.conversations.items.list(conv.id, limit=2, after=item_id(desc.data[-1]))
    got = [text_of(m) for m in [*desc.data, *older.data]]
    assert got == ["m6", "m5", "m4", "m3"]
    all_desc = [m.id async for m in sdk.conversations.items.list(conv.id, limit=2)]
    assert len(all_desc) == 7


async def test_raw_response_etag_if_match_and_idempotent_replay(sdk: openai.AsyncOpenAI) -> None:
    raw = await sdk.conversations.with_raw_response.create(metadata={"k": "v"})
    assert raw.headers["etag"] == '"1"'
    conv = raw.parse()
    got = await sdk.conversations.with_raw_response.retrieve(conv.id)
    assert got.headers["etag"] == '"1"'

    ok = await sdk.conversations.with_raw_response.update(
        conv.id, metadata={"k": "w"}, extra_headers={"If-Match": '"1"'}
    )
    assert ok.headers["etag"] == '"2"'
    with pytest.raises(openai.APIStatusError) as stale:
        await sdk.conversations.update(
            conv.id, metadata={"k": "x"}, extra_headers={"If-Match": '"1"'}
        )
    assert stale.value.status_code == 412
    assert isinstance(stale.value.body, dict)
    assert stale.value.body["code"] == "precondition_failed"
    assert stale.value.response.json()["current_version"] == 2

    key = {"Idempotency-Key": "append-1"}
    first = await sdk.conversations.items.with_raw_response.create(
        conv.id, items=[user("once")], extra_headers=key
    )
    assert first.status_code == 201
    assert first.headers["etag"] == '"3"'
    assert "idempotent-replayed" not in first.headers
    replay = await sdk.conversations.items.with_raw_response.create(
        conv.id, items=[user("once")], extra_headers=key
    )
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["etag"] == '"3"'
    assert json.loads(replay.content) == json.loads(first.content)
    assert replay.parse().data[0].id == first.parse().data[0].id
    with pytest.raises(openai.UnprocessableEntityError):  # same key, another request
        await sdk.conversations.items.create(conv.id, items=[user("other")], extra_headers=key)
    listed = await sdk.conversations.items.list(conv.id)
    assert len(listed.data) == 1
    assert ((await sdk.conversations.retrieve(conv.id)).model_extra or {})["version"] == 3


async def test_items_create_honours_expected_version_and_dry_run(
    sdk: openai.AsyncOpenAI,
) -> None:
    conv = await sdk.conversations.create(items=[user("a")])
    with pytest.raises(openai.ConflictError) as info:
        await sdk.conversations.items.create(
            conv.id, items=[user("b")], extra_body={"expected_version": 0}
        )
    assert isinstance(info.value.body, dict)
    assert info.value.response.json()["current_version"] == 1
    dry = await sdk.conversations.items.with_raw_response.create(
        conv.id, items=[user("b")], extra_query={"dry_run": "true"}
    )
    assert dry.status_code == 200
    assert dry.headers["x-keel-dry-run"] == "true"
    assert dry.headers["etag"] == '"2"'
    assert len((await sdk.conversations.items.list(conv.id)).data) == 1
    done = await sdk.conversations.items.with_raw_response.create(
        conv.id, items=[user("b"), user("c")], extra_body={"expected_version": 1}
    )
    assert done.headers["etag"] == '"2"'  # two items, one version
    assert [(m.model_extra or {})["seq"] for m in done.parse().data] == [2, 3]
