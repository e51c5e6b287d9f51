"""Concurrent writers: optimistic concurrency, gap-free seqs, one effect per idempotency key
(SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from tests.integration.store.conftest import (
    append,
    create_conversation,
    messages_of,
    metric_value,
)


async def test_concurrent_patches_with_the_same_if_match(client: httpx.AsyncClient) -> None:
    conv = await create_conversation(client)
    url = f"/v1/conversations/{conv['id']}"
    responses = await asyncio.gather(
        *[
            client.patch(url, json={"title": f"t{i}"}, headers={"If-Match": '"1"'})
            for i in range(20)
        ]
    )
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 412: 19}, statuses
    for r in responses:
        if r.status_code == 412:
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "precondition_failed"
            assert r.json()["current_version"] == 2
    winner = next(r for r in responses if r.status_code == 200).json()
    final = (await client.get(url)).json()
    assert (final["version"], final["title"]) == (2, winner["title"])


async def test_concurrent_appends_are_sequential_without_gaps(client: httpx.AsyncClient) -> None:
    conv = await create_conversation(client)
    cid = conv["id"]
    responses = await asyncio.gather(
        *[append(client, cid, f"m{i}", headers={"Idempotency-Key": f"key-{i}"}) for i in range(50)]
    )
    assert all(r.status_code == 201 for r in responses), [r.text for r in responses][:3]
    versions = sorted(r.json()["version"] for r in responses)
    assert versions == list(range(2, 52))  # each append bumped the version once
    seqs = sorted(r.json()["messages"][0]["seq"] for r in responses)
    assert seqs == list(range(1, 51))
    assert (await client.get(f"/v1/conversations/{cid}")).json()["version"] == 51
    stored = await messages_of(client, cid)
    assert [m["seq"] for m in stored] == list(range(1, 51))
    assert sorted(m["content"] for m in stored) == sorted(f"m{i}" for i in range(50))
    by_seq = {r.json()["messages"][0]["seq"]: r.json()["messages"][0]["content"] for r in responses}
    assert by_seq == {m["seq"]: m["content"] for m in stored}


async def test_concurrent_appends_with_one_key_have_one_effect(client: httpx.AsyncClient) -> None:
    conv = await create_conversation(client)
    cid = conv["id"]
    headers = {"Idempotency-Key": "the-same-key"}
    responses = await asyncio.gather(
        *[append(client, cid, "once", headers=headers) for _ in range(20)]
    )
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, [r.text for r in responses]
    originals = [
        r
        for r in responses
        if r.status_code == 201 and r.headers.get("idempotent-replayed") != "true"
    ]
    replays = [r for r in responses if r.headers.get("idempotent-replayed") == "true"]
    assert len(originals) == 1
    for r in replays:
        assert r.status_code == 201
        assert r.content == originals[0].content
    for r in responses:
        if r.status_code == 409:
            assert r.json()["code"] == "idempotency_in_progress"
    assert [m["content"] for m in await messages_of(client, cid)] == ["once"]
    assert (await client.get(f"/v1/conversations/{cid}")).json()["version"] == 2
    metrics = (await client.get("/metrics")).text
    replayed = metric_value(
        metrics,
        'keel_idempotent_replays_total{route="/v1/conversations/{conversation_id}/messages"}',
    )
    assert replayed == len(replays)


async def test_concurrent_creates_with_one_key_create_one(client: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(
        *[
            client.post(
                "/v1/conversations", json={"title": "one"}, headers={"Idempotency-Key": "create-1"}
            )
            for _ in range(10)
        ]
    )
    ids = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(ids) == 1
    listed = (await client.get("/v1/conversations")).json()["data"]
    assert [c["id"] for c in listed] == list(ids)
