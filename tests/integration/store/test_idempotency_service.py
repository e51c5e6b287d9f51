"""The reusable idempotency layer as the chat endpoint uses it: a claim committed before a long
call outside the store, completed together with the conversation append, abandoned on failure,
taken over after its lease; clocks injected, no sleeping (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import IdempotencyInProgress, IdempotencyKeyReused
from app.observability.metrics import Metrics
from app.settings import StoreSettings
from app.store.conversation_models import NewMessage
from app.store.conversations import ConversationService
from app.store.database import Database
from app.store.idempotency import Claim, Idempotency, IdempotencyRequest, Lease, StoredResponse
from app.store.timeutil import utcnow

ROUTE = "/v1/chat/completions"


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def request(key: str = "k", fingerprint: str = "f" * 64) -> IdempotencyRequest:
    return IdempotencyRequest(key, f"POST {ROUTE} anonymous", fingerprint, ROUTE)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def idem(migrated_db: Database, clock: Clock, metrics: Metrics) -> Idempotency:
    settings = StoreSettings(idempotency_lease_s=30, idempotency_ttl_s=3600)
    return Idempotency(migrated_db, settings, metrics, clock=clock)


async def chat_endpoint(
    idem: Idempotency,
    db: Database,
    service: ConversationService,
    req: IdempotencyRequest,
    conversation_id: str,
    upstream_calls: list[str],
    fail: bool = False,
) -> StoredResponse:
    """The shape of the chat turn: upstream outside the store, append + complete inside."""

    async def work(lease: Lease) -> StoredResponse:
        await lease.hold()  # a replay ends here: the upstream is not called
        upstream_calls.append(req.key)
        await asyncio.sleep(0)  # the upstream call
        if fail:
            raise RuntimeError("upstream failed")
        answer = f"answer {len(upstream_calls)}"
        body = f'{{"content": "{answer}"}}'.encode()
        response = StoredResponse(200, body, {"content-type": "application/json"})

        async def append(conn: AsyncConnection) -> StoredResponse:
            turns = [NewMessage("user", "question"), NewMessage("assistant", answer)]
            await service.append(conn, conversation_id, turns)
            return response

        return await lease.write(append)

    return await idem.once(req, work)


async def test_chat_flow_appends_atomically_and_replays_without_upstream(
    idem: Idempotency,
    migrated_db: Database,
    metrics: Metrics,
) -> None:
    service = ConversationService(StoreSettings(), metrics)
    async with migrated_db.write() as conn:
        cid = (await service.create(conn)).conversation.id
    calls: list[str] = []
    first = await chat_endpoint(idem, migrated_db, service, request(), cid, calls)
    again = await chat_endpoint(idem, migrated_db, service, request(), cid, calls)
    assert calls == ["k"]
    assert again.replayed
    assert not first.replayed
    assert (again.status_code, again.body, again.headers) == (200, first.body, first.headers)
    async with migrated_db.read() as conn:
        full = await service.items(conn, cid, limit=10, descending=False)
    assert full.conversation.version == 2  # user + assistant: one version bump
    assert [(m.seq, m.role) for m in full.items] == [(1, "user"), (2, "assistant")]
    assert metrics.idempotent_replays.labels(route=ROUTE)._value.get() == 1


async def test_failed_work_is_abandoned_so_the_client_can_retry(
    idem: Idempotency,
    migrated_db: Database,
) -> None:
    service = ConversationService(StoreSettings(), Metrics())
    async with migrated_db.write() as conn:
        cid = (await service.create(conn)).conversation.id
    calls: list[str] = []
    with pytest.raises(RuntimeError):
        await chat_endpoint(idem, migrated_db, service, request(), cid, calls, fail=True)
    ok = await chat_endpoint(idem, migrated_db, service, request(), cid, calls)
    assert not ok.replayed
    assert calls == ["k", "k"]


async def test_in_progress_and_reused_keys(idem: Idempotency) -> None:
    claim = await idem.begin(request())
    assert isinstance(claim, Claim)
    with pytest.raises(IdempotencyInProgress) as running:
        await idem.begin(request())
    assert running.value.retry_after is not None
    with pytest.raises(IdempotencyKeyReused):
        await idem.begin(request(fingerprint="0" * 64))
    other_key = await idem.begin(request(key="other"))
    assert isinstance(other_key, Claim)


async def test_cancellation_abandons_the_claim(idem: Idempotency) -> None:
    started = asyncio.Event()

    async def work(lease: Lease) -> None:
        await lease.hold()
        started.set()
        await asyncio.Event().wait()  # a long upstream call, then a client disconnect

    task = asyncio.create_task(idem.once(request(), work))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert isinstance(await idem.begin(request()), Claim)


async def test_a_stale_claim_is_taken_over_and_its_holder_cannot_complete(
    idem: Idempotency,
    migrated_db: Database,
    clock: Clock,
) -> None:
    crashed = await idem.begin(request())
    assert isinstance(crashed, Claim)
    clock.advance(29)
    with pytest.raises(IdempotencyInProgress):
        await idem.begin(request())
    clock.advance(2)  # past the 30 s lease: its holder is presumed dead
    successor = await idem.begin(request())
    assert isinstance(successor, Claim)
    assert successor.owner != crashed.owner
    late = StoredResponse(200, b"late", {})
    with pytest.raises(IdempotencyInProgress):
        async with migrated_db.write() as conn:
            await idem.complete(conn, crashed, late)
    async with migrated_db.write() as conn:
        await idem.complete(conn, successor, StoredResponse(201, b"winner", {"etag": '"2"'}))
    replay = await idem.begin(request())
    assert isinstance(replay, StoredResponse)
    assert (replay.status_code, replay.body, replay.headers) == (201, b"winner", {"etag": '"2"'})
    # Abandoning a completed claim changes nothing.
    await idem.abandon(successor)
    assert isinstance(await idem.begin(request()), StoredResponse)


async def test_an_expired_key_is_a_new_key(
    idem: Idempotency, migrated_db: Database, clock: Clock
) -> None:
    claim = await idem.begin(request())
    assert isinstance(claim, Claim)
    async with migrated_db.write() as conn:
        await idem.complete(conn, claim, StoredResponse(200, b"old", {}))
    clock.advance(3601)  # past the TTL, not yet swept
    fresh = await idem.begin(request(fingerprint="1" * 64))
    assert isinstance(fresh, Claim)


async def test_peek_answers_without_claiming_or_counting(
    idem: Idempotency,
    migrated_db: Database,
    metrics: Metrics,
) -> None:
    async with migrated_db.read() as conn:
        assert await idem.peek(conn, request()) is None
    claim = await idem.begin(request())
    assert isinstance(claim, Claim)
    async with migrated_db.read() as conn:
        with pytest.raises(IdempotencyInProgress):
            await idem.peek(conn, request())
    async with migrated_db.write() as conn:
        await idem.complete(conn, claim, StoredResponse(200, b"body", {}))
    async with migrated_db.read() as conn:
        seen = await idem.peek(conn, request())
        with pytest.raises(IdempotencyKeyReused):
            await idem.peek(conn, request(fingerprint="2" * 64))
    assert seen is not None
    assert (seen.body, seen.replayed) == (b"body", True)
    assert metrics.idempotent_replays.labels(route=ROUTE)._value.get() == 0


async def test_concurrent_begins_claim_once(idem: Idempotency) -> None:
    results = await asyncio.gather(
        *[idem.begin(request()) for _ in range(10)], return_exceptions=True
    )
    claims = [r for r in results if isinstance(r, Claim)]
    assert len(claims) == 1
    assert all(isinstance(r, IdempotencyInProgress) for r in results if r is not claims[0])
