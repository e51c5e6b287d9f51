"""``?dry_run=true``: the same decisions as the real request, and no side effect at all: the
store's rows, /metrics and the timeline stay byte-identical (SQLite and PostgreSQL)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from app.store.database import Database
from tests.integration.store.conftest import append, create_conversation, dump_tables
from tests.integration.test_foundation import assert_problem

DRY = {"dry_run": "true"}


async def _snapshot(client: httpx.AsyncClient, app: FastAPI, db: Database) -> tuple[str, ...]:
    timeline = repr((await client.get("/v1/diagnostics")).json()["transitions"])
    metrics = (await client.get("/metrics")).text  # scrapes do not count themselves
    # Reading the timeline is a request too: leave its own series out. The readiness gauges
    # measure the world outside (free disk, background checks), which moves on its own.
    volatile = ('"/v1/diagnostics"', "keel_storage_free_bytes", "keel_readiness_")
    metrics = "\n".join(x for x in metrics.splitlines() if not any(v in x for v in volatile))
    return await dump_tables(db), metrics, timeline


async def test_dry_runs_change_nothing(
    client: httpx.AsyncClient, app: FastAPI, store_db: Database
) -> None:
    cid = (await create_conversation(client, title="t"))["id"]
    url = f"/v1/conversations/{cid}"
    first = await append(client, cid, "first", headers={"Idempotency-Key": "done"})  # version 2
    first_id = first.json()["messages"][0]["id"]
    gone = (await create_conversation(client))["id"]
    await client.delete(f"/v1/conversations/{gone}", headers={"If-Match": '"1"'})
    before = await _snapshot(client, app, store_db)

    created = await client.post(
        "/v1/conversations", params=DRY, json={"title": "new"}, headers={"Idempotency-Key": "fresh"}
    )
    assert created.status_code == 200
    assert created.headers["x-keel-dry-run"] == "true"
    assert (created.json()["title"], created.json()["version"]) == ("new", 1)

    patched = await client.patch(
        url, params=DRY, json={"title": "u"}, headers={"If-Match": '"2"', "Idempotency-Key": "p"}
    )
    assert (patched.status_code, patched.json()["version"], patched.json()["title"]) == (
        200,
        3,
        "u",
    )
    assert patched.headers["etag"] == '"3"'
    assert_problem(
        await client.patch(url, params=DRY, json={"title": "u"}, headers={"If-Match": '"1"'}),
        412,
        "precondition_failed",
    )
    assert_problem(
        await client.patch(url, params=DRY, json={"title": "u", "expected_version": 1}),
        409,
        "version_conflict",
    )
    assert_problem(
        await client.patch(url, params=DRY, json={"title": "u"}), 428, "precondition_required"
    )
    deleted = await client.delete(url, params=DRY, headers={"If-Match": '"2"'})
    assert deleted.json() == {
        "id": cid,
        "object": "conversation.deleted",
        "deleted": True,
        "version": 3,
    }
    # The Conversations API's mutations too.
    updated = await client.post(url, params=DRY, json={"metadata": {"m": 1}, "expected_version": 2})
    assert (updated.json()["metadata"], updated.json()["version"]) == ({"m": 1}, 3)
    with_items = await client.post(
        "/v1/conversations", params=DRY, json={"items": [{"role": "user", "content": "hi"}]}
    )
    assert with_items.status_code == 200
    items = await client.post(
        f"{url}/items", params=DRY, json={"items": [{"role": "user", "content": "x"}]}
    )
    assert (items.status_code, items.json()["data"][0]["seq"]) == (200, 2)
    dropped = await client.delete(f"{url}/items/{first_id}", params=DRY)
    assert (dropped.status_code, dropped.json()["version"]) == (200, 3)
    assert_problem(await client.delete(f"{url}/items/nope", params=DRY), 404, "not_found")

    would = await client.post(
        f"{url}/messages",
        params=DRY,
        headers={"Idempotency-Key": "n"},
        json={
            "messages": [
                {"role": "user", "content": "second"},
                {"role": "assistant", "content": "third"},
            ]
        },
    )
    assert would.status_code == 200
    assert would.json()["version"] == 3
    assert [(m["seq"], m["content"]) for m in would.json()["messages"]] == [
        (2, "second"),
        (3, "third"),
    ]
    assert await _snapshot(client, app, store_db) == before

    # Dry runs that meet a stored key answer what a real retry would get, uncounted.
    replay = await append(client, cid, "first", headers={"Idempotency-Key": "done"})
    assert replay.headers["idempotent-replayed"] == "true"  # a real retry, counted
    before = await _snapshot(client, app, store_db)

    dry_replay = await client.post(
        f"{url}/messages",
        params=DRY,
        headers={"Idempotency-Key": "done"},
        json={"messages": [{"role": "user", "content": "first"}]},
    )
    assert dry_replay.headers["idempotent-replayed"] == "true"
    assert dry_replay.content == replay.content
    assert_problem(
        await client.post(
            f"{url}/messages",
            params=DRY,
            headers={"Idempotency-Key": "done"},
            json={"messages": [{"role": "user", "content": "other"}]},
        ),
        422,
        "idempotency_key_reused",
    )
    assert_problem(
        await client.post(
            f"/v1/conversations/{gone}/messages",
            params=DRY,
            json={"messages": [{"role": "user", "content": "x"}]},
        ),
        404,
        "not_found",
    )
    assert_problem(
        await client.post(
            f"{url}/messages",
            params=DRY,
            json={"messages": [{"role": "user", "content": "x" * 100_001}]},
        ),
        413,
        "payload_too_large",
    )
    assert_problem(
        await client.patch(url, params=DRY, json={"title": "u"}, headers={"If-Match": '"1"'}),
        412,
        "precondition_failed",
    )

    assert await _snapshot(client, app, store_db) == before
    # Not a dry run (and so metered like any request): a malformed flag is refused.
    assert_problem(
        await client.patch(url, params={"dry_run": "yes"}, json={}, headers={"If-Match": '"2"'}),
        422,
        "validation_error",
    )

    # The dry run predicted what the real request then does.
    real = await client.post(
        f"{url}/messages",
        headers={"Idempotency-Key": "n"},
        json={
            "messages": [
                {"role": "user", "content": "second"},
                {"role": "assistant", "content": "third"},
            ]
        },
    )
    assert real.status_code == 201
    assert [(m["seq"], m["content"]) for m in real.json()["messages"]] == [
        (2, "second"),
        (3, "third"),
    ]
    assert real.json()["version"] == would.json()["version"]
