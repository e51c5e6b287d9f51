"""Idempotency-Key over HTTP: replay byte-for-byte, reuse, key format, scopes, what is not
stored, expiry and the sweeper (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from app.api.idempotency import request_fingerprint, scope_of
from app.main import create_app
from app.observability.metrics import Metrics
from app.settings import Settings, StoreSettings
from app.store.database import Database
from app.store.idempotency import Claim, Idempotency, IdempotencyRequest
from app.store.tables import idempotency_keys
from app.store.timeutil import utcnow
from tests.conftest import asgi_client
from tests.integration.store.conftest import (
    append,
    create_conversation,
    messages_of,
    metric_value,
)
from tests.integration.test_foundation import TOKEN, assert_problem

ROUTE = "/v1/conversations/{conversation_id}/messages"


async def _key_rows(db: Database) -> int:
    async with db.read() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(idempotency_keys))).scalar_one()
        )


async def test_replay_is_byte_for_byte(client: httpx.AsyncClient) -> None:
    cid = (await create_conversation(client))["id"]
    key = {"Idempotency-Key": "a1"}
    first = await append(client, cid, "hi", headers=key)
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    second = await append(client, cid, "hi", headers=key)
    assert second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert second.headers["etag"] == first.headers["etag"]
    assert second.headers["content-type"] == first.headers["content-type"]
    # Key order and whitespace in the JSON body do not make it another request.
    third = await client.post(
        f"/v1/conversations/{cid}/messages",
        headers={**key, "Content-Type": "application/json"},
        content=b'{ "messages" : [ {"content": "hi", "role": "user"} ] }',
    )
    assert third.headers["idempotent-replayed"] == "true"
    assert third.content == first.content
    conv = (await client.get(f"/v1/conversations/{cid}")).json()
    assert (conv["version"], len(await messages_of(client, cid))) == (2, 1)
    metrics = (await client.get("/metrics")).text
    assert metric_value(metrics, f'keel_idempotent_replays_total{{route="{ROUTE}"}}') == 2


async def test_same_key_different_request_is_422(client: httpx.AsyncClient) -> None:
    cid = (await create_conversation(client))["id"]
    other = (await create_conversation(client))["id"]
    key = {"Idempotency-Key": "k"}
    assert (await append(client, cid, "one", headers=key)).status_code == 201
    assert_problem(await append(client, cid, "two", headers=key), 422, "idempotency_key_reused")
    assert_problem(
        await append(client, other, "one", headers=key), 422, "idempotency_key_reused"
    )  # same route template, another path
    assert_problem(
        await client.post(
            f"/v1/conversations/{cid}/messages?x=1",
            headers=key,
            json={"messages": [{"role": "user", "content": "one"}]},
        ),
        422,
        "idempotency_key_reused",
    )
    # The same key on another route is another key.
    assert (await client.post("/v1/conversations", json={}, headers=key)).status_code == 201
    assert len(await messages_of(client, cid)) == 1


@pytest.mark.parametrize("key", ["", " ", "a b", "x" * 256, "caf\u00e9", "tab\there"])
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_malformed_key_is_400(client: httpx.AsyncClient, key: str) -> None:
    cid = (await create_conversation(client))["id"]
    resp = await client.post(
        f"/v1/conversations/{cid}/messages",
        json={"messages": [{"role": "user", "content": "x"}]},
        headers=[(b"Idempotency-Key", key.encode("latin-1"))],
    )
    body = assert_problem(resp, 400, "bad_request")
    assert "Idempotency-Key" in str(body["detail"])
    assert (await client.get(f"/v1/conversations/{cid}")).json()["version"] == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_longest_key_is_fine(client: httpx.AsyncClient) -> None:
    cid = (await create_conversation(client))["id"]
    key = {"Idempotency-Key": "~" * 255}
    assert (await append(client, cid, "x", headers=key)).status_code == 201
    assert (await append(client, cid, "x", headers=key)).headers["idempotent-replayed"] == "true"


async def test_failures_are_not_stored(client: httpx.AsyncClient, store_db: Database) -> None:
    cid = (await create_conversation(client))["id"]
    key = {"Idempotency-Key": "retry-me"}
    bad = await client.post(
        f"/v1/conversations/{cid}/messages", headers=key, json={"messages": [{"role": "user"}]}
    )
    assert_problem(bad, 422, "validation_error")
    stale = await append(client, cid, "x", headers={**key, "If-Match": '"9"'})
    assert_problem(stale, 412, "precondition_failed")
    assert await _key_rows(store_db) == 0
    # A corrected request under the same key now runs (it was never stored as failed).
    assert (await append(client, cid, "x", headers={**key, "If-Match": '"1"'})).status_code == 201
    assert await _key_rows(store_db) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_keys_are_scoped_by_caller(
    make_settings: Callable[..., Settings], db_url: str
) -> None:
    app = create_app(make_settings(database_url=db_url, api_token=TOKEN))
    async with asgi_client(app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        cid = (await create_conversation(c))["id"]
        assert (await append(c, cid, "x", headers={"Idempotency-Key": "k"})).status_code == 201
        again = await append(c, cid, "x", headers={"Idempotency-Key": "k"})
        assert again.headers["idempotent-replayed"] == "true"
    app2 = create_app(make_settings(database_url=db_url, api_token="another-token-0123456789"))
    async with asgi_client(app2, headers={"Authorization": "Bearer another-token-0123456789"}) as c:
        # Another caller (token) using the same key is not replayed someone else's response.
        fresh = await append(c, cid, "x", headers={"Idempotency-Key": "k"})
        assert fresh.status_code == 201
        assert "idempotent-replayed" not in fresh.headers
        assert fresh.json()["version"] == 3


async def test_expired_keys_are_swept_and_can_be_reused(
    client: httpx.AsyncClient,
    store_db: Database,
    settings: Settings,
) -> None:
    cid = (await create_conversation(client))["id"]
    for i in range(7):
        assert (
            await append(client, cid, f"m{i}", headers={"Idempotency-Key": f"k{i}"})
        ).status_code == 201
    metrics = Metrics()
    small = settings.store.model_copy(update={"sweep_batch": 3})
    idempotency = Idempotency(store_db, small, metrics)
    assert await idempotency.sweep(now=utcnow()) == 0  # nothing has expired yet
    later = utcnow() + timedelta(seconds=settings.store.idempotency_ttl_s + 1)
    assert await idempotency.sweep(now=later) == 7  # in batches of 3: 3 + 3 + 1
    assert await _key_rows(store_db) == 0
    assert metric_value(metrics.render().decode(), "keel_idempotency_keys_swept_total") == 7
    # The key is free again: the same request runs anew (a new message, a new version).
    again = await append(client, cid, "m0", headers={"Idempotency-Key": "k0"})
    assert "idempotent-replayed" not in again.headers
    assert again.json()["version"] == 9


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_sweeper_runs_in_the_lifespan(
    make_settings: Callable[..., Settings], db_url: str
) -> None:
    store = StoreSettings(idempotency_ttl_s=0.001, sweep_interval_s=0.01)
    app: FastAPI = create_app(make_settings(database_url=db_url, store=store))
    async with asgi_client(app) as c:
        cid = (await create_conversation(c))["id"]
        assert (await append(c, cid, "x", headers={"Idempotency-Key": "k"})).status_code == 201
        text = ""
        for _ in range(200):  # the sweeper's own interval, not an expiry wait: <= 2 s
            text = (await c.get("/metrics")).text
            if metric_value(text, "keel_idempotency_keys_swept_total") >= 1:
                break
            await asyncio.sleep(0.01)
        assert metric_value(text, "keel_idempotency_keys_swept_total") == 1


async def test_a_key_held_by_a_running_request_is_409(
    client: httpx.AsyncClient,
    store_db: Database,
    settings: Settings,
) -> None:
    cid = (await create_conversation(client))["id"]
    path = f"/v1/conversations/{cid}/messages"
    body = b'{"messages":[{"role":"user","content":"slow"}]}'
    held = IdempotencyRequest(
        "busy",
        scope_of("POST", ROUTE, "anonymous"),
        request_fingerprint("POST", path, "", body),
        ROUTE,
    )
    # Another request (a replica, or a chat-style claim) holds the key within its lease.
    assert isinstance(await Idempotency(store_db, settings.store, Metrics()).begin(held), Claim)
    resp = await client.post(
        path, content=body, headers={"Idempotency-Key": "busy", "Content-Type": "application/json"}
    )
    problem = assert_problem(resp, 409, "idempotency_in_progress")
    assert problem["retryable"] is True
    assert int(resp.headers["retry-after"]) >= 1
    assert (await client.get(f"/v1/conversations/{cid}")).json()["version"] == 1
