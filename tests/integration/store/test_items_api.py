"""Items over HTTP beyond what the SDK tests show: preconditions and races on item deletion,
a deleted item as a page cursor, limits (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx

from tests.integration.store.conftest import append, create_conversation
from tests.integration.test_foundation import assert_problem


async def test_item_delete_preconditions_and_races(client: httpx.AsyncClient) -> None:
    cid = (await create_conversation(client))["id"]
    items = f"/v1/conversations/{cid}/items"
    added = (await append(client, cid, "a", "b")).json()["messages"]  # v2
    url = f"{items}/{added[0]['id']}"
    body = assert_problem(
        await client.delete(url, headers={"If-Match": '"1"'}), 412, "precondition_failed"
    )
    assert body["current_version"] == 2
    stale = await client.request("DELETE", url, json={"expected_version": 1})
    assert assert_problem(stale, 409, "version_conflict")["current_version"] == 2

    results = await asyncio.gather(*[client.delete(url) for _ in range(6)])
    assert Counter(r.status_code for r in results) == {200: 1, 404: 5}
    conv = (await client.get(f"/v1/conversations/{cid}")).json()
    assert conv["version"] == 3  # the losers' version bumps rolled back
    assert_problem(await client.get(url), 404, "not_found")
    assert_problem(await client.delete(f"{items}/no-such-item"), 404, "not_found")
    assert (await client.get(f"/v1/conversations/{cid}")).json()["version"] == 3


async def test_a_deleted_item_still_works_as_a_cursor(client: httpx.AsyncClient) -> None:
    cid = (await create_conversation(client))["id"]
    items = f"/v1/conversations/{cid}/items"
    added = (await append(client, cid, "a", "b", "c", "d")).json()["messages"]
    page = (await client.get(items, params={"order": "asc", "limit": 2})).json()
    assert (await client.delete(f"{items}/{page['last_id']}")).status_code == 200
    rest = (await client.get(items, params={"order": "asc", "after": page["last_id"]})).json()
    assert [i["id"] for i in rest["data"]] == [added[2]["id"], added[3]["id"]]
    other = (await create_conversation(client))["id"]
    wrong = await client.get(f"/v1/conversations/{other}/items", params={"after": added[0]["id"]})
    assert_problem(wrong, 400, "bad_request")  # another conversation's item is no cursor


async def test_item_bodies_are_checked(client: httpx.AsyncClient) -> None:
    cid = (await create_conversation(client))["id"]
    items = f"/v1/conversations/{cid}/items"
    many = [{"role": "user", "content": "x"}] * 101
    body = assert_problem(await client.post(items, json={"items": many}), 413, "payload_too_large")
    assert body["limit_name"] == "max_messages_per_append"
    bad: dict[str, Any]
    for bad in (
        {"items": []},
        {"items": [{"role": "wizard", "content": "x"}]},
        {"items": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
        {"items": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]},
    ):
        assert_problem(await client.post(items, json=bad), 422, "validation_error")
    assert_problem(
        await client.post("/v1/conversations", json={"items": many}), 413, "payload_too_large"
    )
    assert_problem(await client.get(items, params={"order": "sideways"}), 422, "validation_error")
    assert_problem(await client.get(items, params={"limit": 0}), 422, "validation_error")
    assert (await client.get(f"/v1/conversations/{cid}")).json()["version"] == 1
