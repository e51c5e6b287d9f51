"""Delta sync: ``GET /v1/conversations/{id}/items?since_version=N`` and the conversation with
``since_version``: what was added, and tombstones for what was deleted (SQLite and
PostgreSQL)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.integration.store.conftest import append, create_conversation
from tests.integration.test_foundation import assert_problem


def _texts(page: dict[str, Any]) -> list[str]:
    return ["".join(p["text"] for p in i["content"]) for i in page["data"]]


async def test_delta_after_one_append_is_small(client: httpx.AsyncClient) -> None:
    cid = (await create_conversation(client, title="long chat"))["id"]
    for i in range(0, 200, 50):  # 200 messages of ordinary length, in four appends
        batch = [f"message {n}: " + "lorem ipsum dolor sit amet " * 4 for n in range(i, i + 50)]
        assert (await append(client, cid, *batch)).status_code == 201
    before = (await client.get(f"/v1/conversations/{cid}")).json()["version"]
    assert (await append(client, cid, "the newest message", role="assistant")).status_code == 201
    items = f"/v1/conversations/{cid}/items"
    full = await client.get(items, params={"limit": 200})
    delta = await client.get(items, params={"since_version": before})
    assert delta.status_code == 200
    assert len(delta.content) < 0.05 * len(full.content), (len(delta.content), len(full.content))
    body = delta.json()
    assert (body["version"], body["from_version"], body["has_more"]) == (before + 1, before, False)
    assert [(i["seq"], i["role"]) for i in body["data"]] == [(201, "assistant")]
    assert _texts(body) == ["the newest message"]
    assert delta.headers["etag"] == f'"{before + 1}"'

    conv = await client.get(f"/v1/conversations/{cid}", params={"since_version": before})
    assert conv.json()["changed"] == {}
    assert conv.json()["items"]["data"] == body["data"]


async def test_delta_reports_changed_fields_and_all_later_items(
    client: httpx.AsyncClient,
) -> None:
    cid = (await create_conversation(client, title="a", metadata={"x": 1}))["id"]
    url = f"/v1/conversations/{cid}"
    await append(client, cid, "m1")  # v2
    await append(client, cid, "m2", "m3")  # v3
    nothing = (await client.get(url, params={"since_version": 3})).json()
    assert (nothing["changed"], nothing["items"]["data"]) == ({}, [])
    await client.patch(url, json={"title": "b"}, headers={"If-Match": '"3"'})  # v4
    await append(client, cid, "m4")  # v5
    since2 = (await client.get(url, params={"since_version": 2, "order": "asc"})).json()
    assert (since2["object"], since2["version"], since2["from_version"]) == ("conversation", 5, 2)
    assert since2["changed"] == {"title": "b", "metadata": {"x": 1}}
    assert _texts(since2["items"]) == ["m2", "m3", "m4"]
    since4 = (await client.get(url, params={"since_version": 4})).json()
    assert since4["changed"] == {}
    assert _texts(since4["items"]) == ["m4"]
    since0 = (await client.get(url, params={"since_version": 0, "order": "asc"})).json()
    assert since0["changed"] == {"title": "b", "metadata": {"x": 1}}
    assert [i["seq"] for i in since0["items"]["data"]] == [1, 2, 3, 4]


async def test_delta_after_a_delete_shows_a_tombstone(client: httpx.AsyncClient) -> None:
    cid = (await create_conversation(client))["id"]
    items = f"/v1/conversations/{cid}/items"
    added = (await append(client, cid, "keep", "drop", "later")).json()["messages"]  # v2
    synced = 2
    gone = await client.delete(f"{items}/{added[1]['id']}")  # v3
    assert gone.status_code == 200
    assert (gone.json()["object"], gone.json()["version"]) == ("conversation", 3)
    await append(client, cid, "new")  # v4

    delta = (await client.get(items, params={"since_version": synced, "order": "asc"})).json()
    assert delta["data"][0] == {"id": added[1]["id"], "type": "message", "seq": 2, "deleted": True}
    assert [(i["seq"], i.get("deleted", False)) for i in delta["data"]] == [(2, True), (4, False)]
    # Never existed (a page of live items skips tombstones; a delta before it existed too).
    assert all("deleted" not in i for i in (await client.get(items)).json()["data"])
    assert (await client.get(items, params={"since_version": 3})).json()["data"][0]["seq"] == 4
    # An item added and deleted after the client's version still shows as a tombstone.
    since0 = (await client.get(items, params={"since_version": 0, "order": "asc"})).json()
    assert [i["seq"] for i in since0["data"]] == [1, 2, 3, 4]
    assert since0["data"][1]["deleted"] is True
    # Paged like any list, tombstones included.
    first = (await client.get(items, params={"since_version": 0, "limit": 2})).json()
    assert (first["has_more"], [i["seq"] for i in first["data"]]) == (True, [4, 3])
    rest = (
        await client.get(items, params={"since_version": 0, "limit": 2, "after": first["last_id"]})
    ).json()
    assert (rest["has_more"], [i["seq"] for i in rest["data"]]) == (False, [2, 1])


async def test_delta_from_the_future_is_409(client: httpx.AsyncClient) -> None:
    cid = (await create_conversation(client))["id"]
    url = f"/v1/conversations/{cid}"
    body = assert_problem(
        await client.get(url, params={"since_version": 9}), 409, "version_conflict"
    )
    assert body["current_version"] == 1
    body = assert_problem(
        await client.get(f"{url}/items", params={"since_version": 9}), 409, "version_conflict"
    )
    assert body["current_version"] == 1
    assert_problem(await client.get(url, params={"since_version": -1}), 422, "validation_error")
