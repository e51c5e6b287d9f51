"""The conversations API over HTTP: shapes, versions and ETags, preconditions, soft delete,
pagination, limits; every error is problem+json with its code (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from app.main import create_app
from app.settings import Settings, StoreSettings
from tests.conftest import asgi_client
from tests.integration.store.conftest import append, create_conversation, messages_of
from tests.integration.test_foundation import assert_problem


async def test_create_read_shapes_and_etag(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/conversations", json={"title": "Trip", "metadata": {"a": 1}})
    assert resp.status_code == 201
    conv = resp.json()
    assert set(conv) == {
        "id",
        "object",
        "title",
        "metadata",
        "version",
        "created_at",
        "updated_at",
    }
    assert (conv["object"], conv["title"], conv["metadata"], conv["version"]) == (
        "conversation",
        "Trip",
        {"a": 1},
        1,
    )
    assert isinstance(conv["created_at"], int)  # Unix seconds, as OpenAI's
    assert conv["updated_at"] == conv["created_at"]
    assert resp.headers["etag"] == '"1"'
    assert resp.headers["location"] == f"/v1/conversations/{conv['id']}"

    added = await append(client, conv["id"], "hello", "world")
    assert added.status_code == 201
    assert added.headers["etag"] == '"2"'
    assert [m["seq"] for m in added.json()["messages"]] == [1, 2]

    got = await client.get(f"/v1/conversations/{conv['id']}")
    assert got.status_code == 200
    assert got.headers["etag"] == '"2"'
    body = got.json()
    assert body["version"] == 2
    assert "messages" not in body  # items are paged: GET .../items
    items = await client.get(f"/v1/conversations/{conv['id']}/items", params={"order": "asc"})
    assert items.headers["etag"] == '"2"'
    page = items.json()
    assert [(i["seq"], i["role"], i["content"]) for i in page["data"]] == [
        (1, "user", [{"type": "input_text", "text": "hello"}]),
        (2, "user", [{"type": "input_text", "text": "world"}]),
    ]
    assert set(page) == {"object", "data", "first_id", "last_id", "has_more"}
    assert set(page["data"][0]) == {"id", "type", "role", "content", "status", "seq", "created_at"}


async def test_if_none_match_gives_304(client: httpx.AsyncClient) -> None:
    conv = await create_conversation(client)
    url = f"/v1/conversations/{conv['id']}"
    resp = await client.get(url, headers={"If-None-Match": '"1"'})
    assert resp.status_code == 304
    assert resp.headers["etag"] == '"1"'
    assert resp.content == b""
    await append(client, conv["id"], "x")
    assert (await client.get(url, headers={"If-None-Match": '"1"'})).status_code == 200
    assert (await client.get(url, headers={"If-None-Match": 'W/"2"'})).status_code == 304


async def test_each_mutation_bumps_version_exactly_once(client: httpx.AsyncClient) -> None:
    conv = await create_conversation(client)
    url = f"/v1/conversations/{conv['id']}"
    assert (await append(client, conv["id"], "a", "b", "c")).json()["version"] == 2
    patched = await client.patch(url, json={"title": "t"}, headers={"If-Match": '"2"'})
    assert patched.json()["version"] == 3
    assert patched.json()["object"] == "conversation"
    same = await client.patch(url, json={"title": "t", "expected_version": 3})
    assert same.json()["version"] == 4  # an unchanged value is still a mutation
    deleted = await client.delete(url, headers={"If-Match": '"4"'})
    assert deleted.status_code == 200
    assert deleted.json() == {
        "id": conv["id"],
        "object": "conversation.deleted",
        "deleted": True,
        "version": 5,
    }


async def test_patch_and_delete_require_a_precondition(client: httpx.AsyncClient) -> None:
    conv = await create_conversation(client)
    url = f"/v1/conversations/{conv['id']}"
    body = assert_problem(
        await client.patch(url, json={"title": "x"}), 428, "precondition_required"
    )
    assert body["current_version"] == 1
    body = assert_problem(await client.delete(url), 428, "precondition_required")
    assert body["current_version"] == 1
    # Appending needs none.
    assert (await append(client, conv["id"], "free")).status_code == 201


async def test_stale_if_match_is_412_and_stale_body_version_409(
    client: httpx.AsyncClient,
) -> None:
    conv = await create_conversation(client)
    cid = conv["id"]
    url = f"/v1/conversations/{cid}"
    await append(client, cid, "one")  # version 2
    body = assert_problem(
        await client.patch(url, json={"title": "x"}, headers={"If-Match": '"1"'}),
        412,
        "precondition_failed",
    )
    assert body["current_version"] == 2
    body = assert_problem(
        await client.patch(url, json={"title": "x", "expected_version": 1}), 409, "version_conflict"
    )
    assert body["current_version"] == 2
    body = assert_problem(
        await append(client, cid, "late", headers={"If-Match": '"1"'}), 412, "precondition_failed"
    )
    assert body["current_version"] == 2
    body = assert_problem(
        await append(client, cid, "late", expected_version=1), 409, "version_conflict"
    )
    assert body["current_version"] == 2
    body = assert_problem(
        await client.request("DELETE", url, json={"expected_version": 7}), 409, "version_conflict"
    )
    assert body["current_version"] == 2
    # Weak tags never match If-Match; a list matches when one entry does; * matches any.
    assert_problem(
        await client.patch(url, json={}, headers={"If-Match": 'W/"2"'}), 412, "precondition_failed"
    )
    ok = await client.patch(url, json={"title": "y"}, headers={"If-Match": '"1", "2"'})
    assert ok.json()["version"] == 3
    ok = await client.patch(url, json={"title": "z"}, headers={"If-Match": "*"})
    assert ok.json()["version"] == 4
    assert_problem(
        await client.patch(url, json={}, headers={"If-Match": "nonsense"}), 400, "bad_request"
    )
    got = (await client.get(url)).json()
    assert (got["version"], got["title"]) == (4, "z")
    assert len(await messages_of(client, cid)) == 1
    metrics = (await client.get("/metrics")).text
    assert (
        'keel_version_conflicts_total{code="precondition_failed",'
        'route="/v1/conversations/{conversation_id}"}'
    ) in metrics


async def test_patch_fields(client: httpx.AsyncClient) -> None:
    conv = await create_conversation(client, title="old", metadata={"k": "v"})
    url = f"/v1/conversations/{conv['id']}"
    r = await client.patch(url, json={"metadata": {"n": 2}}, headers={"If-Match": '"1"'})
    assert (r.json()["title"], r.json()["metadata"]) == ("old", {"n": 2})
    r = await client.patch(url, json={"title": None}, headers={"If-Match": '"2"'})
    assert (r.json()["title"], r.json()["metadata"]) == (None, {"n": 2})
    assert_problem(
        await client.patch(url, json={"colour": "red"}, headers={"If-Match": '"3"'}),
        422,
        "validation_error",
    )


async def test_deleted_conversation_is_404_everywhere(client: httpx.AsyncClient) -> None:
    conv = await create_conversation(client)
    cid = conv["id"]
    url = f"/v1/conversations/{cid}"
    await append(client, cid, "bye")
    assert (await client.delete(url, headers={"If-Match": '"2"'})).status_code == 200
    assert_problem(await client.get(url), 404, "not_found")
    assert_problem(await client.get(url, params={"since_version": 0}), 404, "not_found")
    assert_problem(await client.patch(url, json={}, headers={"If-Match": "*"}), 404, "not_found")
    assert_problem(await client.delete(url, headers={"If-Match": '"3"'}), 404, "not_found")
    assert_problem(await append(client, cid, "ghost"), 404, "not_found")
    assert_problem(await client.post(f"{url}/verify"), 404, "not_found")
    assert_problem(await client.get("/v1/conversations/no-such-id"), 404, "not_found")
    listed = (await client.get("/v1/conversations")).json()["data"]
    assert cid not in [c["id"] for c in listed]


async def test_list_is_paginated_with_after_and_bounded(client: httpx.AsyncClient) -> None:
    made = [(await create_conversation(client, title=f"c{i}"))["id"] for i in range(5)]
    seen: list[str] = []
    after: str | None = None
    for _ in range(5):
        params: dict[str, str | int] = {"limit": 2}
        if after:
            params["after"] = after
        page = (await client.get("/v1/conversations", params=params)).json()
        assert page["object"] == "list"
        assert len(page["data"]) <= 2
        seen += [c["id"] for c in page["data"]]
        assert page["data"][0]["object"] == "conversation"
        assert (page["first_id"], page["last_id"]) == (
            page["data"][0]["id"],
            page["data"][-1]["id"],
        )
        after = page["last_id"]
        if not page["has_more"]:
            break
    assert seen == list(reversed(made))  # newest first, each exactly once
    assert_problem(
        await client.get("/v1/conversations", params={"limit": 0}), 422, "validation_error"
    )
    body = assert_problem(
        await client.get("/v1/conversations", params={"limit": 201}), 422, "validation_error"
    )
    assert body["limit"] == 200
    assert_problem(
        await client.get("/v1/conversations", params={"after": "no-such-id"}), 400, "bad_request"
    )


async def test_message_validation(client: httpx.AsyncClient) -> None:
    conv = await create_conversation(client)
    cid = conv["id"]
    assert_problem(await append(client, cid, "x", role="wizard"), 422, "validation_error")
    assert_problem(
        await client.post(f"/v1/conversations/{cid}/messages", json={"messages": []}),
        422,
        "validation_error",
    )
    assert_problem(
        await client.post(
            f"/v1/conversations/{cid}/messages", json={"messages": [{"role": "user", "content": 5}]}
        ),
        422,
        "validation_error",
    )
    assert (await client.get(f"/v1/conversations/{cid}")).json()["version"] == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_limits_are_configurable_and_named(
    make_settings: Callable[..., Settings],
    db_url: str,
) -> None:
    store = StoreSettings(
        max_message_chars=10, max_messages_per_append=2, max_title_chars=5, max_metadata_bytes=20
    )
    async with asgi_client(create_app(make_settings(database_url=db_url, store=store))) as c:
        body = assert_problem(
            await c.post("/v1/conversations", json={"title": "too long"}), 422, "validation_error"
        )
        assert (body["limit"], body["limit_name"]) == (5, "max_title_chars")
        body = assert_problem(
            await c.post("/v1/conversations", json={"metadata": {"k": "x" * 30}}),
            413,
            "payload_too_large",
        )
        assert (body["limit"], body["limit_name"]) == (20, "max_metadata_bytes")
        cid = (await create_conversation(c, title="ok"))["id"]
        body = assert_problem(await append(c, cid, "x" * 11), 413, "payload_too_large")
        assert (body["limit"], body["limit_name"]) == (10, "max_message_chars")
        assert "max_message_chars" in str(body["detail"])
        body = assert_problem(await append(c, cid, "a", "b", "c"), 413, "payload_too_large")
        assert (body["limit"], body["limit_name"]) == (2, "max_messages_per_append")
        assert (await append(c, cid, "x" * 10, "y")).status_code == 201
        body = assert_problem(
            await c.patch(
                f"/v1/conversations/{cid}", json={"title": "long!!"}, headers={"If-Match": '"2"'}
            ),
            422,
            "validation_error",
        )
        assert body["limit_name"] == "max_title_chars"


async def test_ids_that_cannot_exist_never_reach_sql(client: httpx.AsyncClient) -> None:
    cid = (await create_conversation(client))["id"]
    for path in (
        "/v1/conversations/x%00y",
        f"/v1/conversations/{cid}/items/x%00y",
        "/v1/conversations/" + "x" * 65,
    ):
        assert_problem(await client.get(path), 422, "validation_error")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "conversation": "a\x00"}
    assert_problem(await client.post("/v1/chat/completions", json=body), 422, "validation_error")
