"""Delta sync: ``GET /v1/conversations/{id}?since_version=N`` (SQLite and PostgreSQL)."""

from __future__ import annotations

import httpx

from tests.integration.store.conftest import append, create_conversation
from tests.integration.test_foundation import assert_problem


async def test_delta_after_one_append_is_small(client: httpx.AsyncClient) -> None:
    cid = (await create_conversation(client, title="long chat"))["id"]
    for i in range(0, 200, 50):  # 200 messages of ordinary length, in four appends
        batch = [f"message {n}: " + "lorem ipsum dolor sit amet " * 4 for n in range(i, i + 50)]
        assert (await append(client, cid, *batch)).status_code == 201
    before = (await client.get(f"/v1/conversations/{cid}")).json()["version"]
    assert (await append(client, cid, "the newest message", role="assistant")).status_code == 201
    full = await client.get(f"/v1/conversations/{cid}")
    delta = await client.get(f"/v1/conversations/{cid}", params={"since_version": before})
    assert delta.status_code == 200
    assert len(delta.content) < 0.05 * len(full.content), (len(delta.content), len(full.content))
    body = delta.json()
    assert (body["id"], body["version"], body["from_version"]) == (cid, before + 1, before)
    assert body["changed"] == {}
    assert [(m["seq"], m["role"], m["content"]) for m in body["messages"]] == [
        (201, "assistant", "the newest message")
    ]
    assert delta.headers["etag"] == f'"{before + 1}"'


async def test_delta_reports_changed_fields_and_all_later_messages(
    client: httpx.AsyncClient,
) -> None:
    cid = (await create_conversation(client, title="a", metadata={"x": 1}))["id"]
    url = f"/v1/conversations/{cid}"
    await append(client, cid, "m1")  # v2
    await append(client, cid, "m2", "m3")  # v3
    nothing = (await client.get(url, params={"since_version": 3})).json()
    assert (nothing["changed"], nothing["messages"]) == ({}, [])
    await client.patch(url, json={"title": "b"}, headers={"If-Match": '"3"'})  # v4
    await append(client, cid, "m4")  # v5
    since2 = (await client.get(url, params={"since_version": 2})).json()
    assert since2["changed"] == {"title": "b", "metadata": {"x": 1}}
    assert [m["content"] for m in since2["messages"]] == ["m2", "m3", "m4"]
    since4 = (await client.get(url, params={"since_version": 4})).json()
    assert since4["changed"] == {}
    assert [m["content"] for m in since4["messages"]] == ["m4"]
    since0 = (await client.get(url, params={"since_version": 0})).json()
    assert since0["changed"] == {"title": "b", "metadata": {"x": 1}}
    assert [m["seq"] for m in since0["messages"]] == [1, 2, 3, 4]


async def test_delta_from_the_future_is_409(client: httpx.AsyncClient) -> None:
    cid = (await create_conversation(client))["id"]
    url = f"/v1/conversations/{cid}"
    body = assert_problem(
        await client.get(url, params={"since_version": 9}), 409, "version_conflict"
    )
    assert body["current_version"] == 1
    assert_problem(await client.get(url, params={"since_version": -1}), 422, "validation_error")
