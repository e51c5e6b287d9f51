"""``Idempotency.once``, the one idempotency path: what the work's lease does in each case
(SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import IdempotencyInProgress
from app.observability.metrics import Metrics
from app.settings import StoreSettings
from app.store.database import Database
from app.store.idempotency import Claim, Idempotency, IdempotencyRequest, Lease, StoredResponse

OK = StoredResponse(201, b"made", {"content-type": "text/plain"})


def request(key: str = "k") -> IdempotencyRequest:
    return IdempotencyRequest(key, "POST /x anonymous", "f" * 64, "/x")


@pytest.fixture
def idem(migrated_db: Database) -> Idempotency:
    return Idempotency(migrated_db, StoreSettings(idempotency_lease_s=30), Metrics())


async def test_a_replay_ends_the_work_before_it_runs_again(idem: Idempotency) -> None:
    runs: list[str] = []

    async def work(lease: Lease) -> StoredResponse:
        await lease.hold()
        runs.append("ran")
        return await lease.record(OK)

    first = await idem.once(request(), work)
    again = await idem.once(request(), work)
    assert runs == ["ran"]
    assert (first.replayed, again.replayed) == (False, True)
    assert again.body == b"made"


async def test_write_claims_inside_the_effects_transaction(idem: Idempotency) -> None:
    effects: list[str] = []

    async def effect(conn: AsyncConnection) -> StoredResponse:
        effects.append("wrote")
        return OK

    for _ in range(2):
        got = await idem.once(request(), lambda lease: lease.write(effect))
    assert effects == ["wrote"]
    assert isinstance(got, StoredResponse)
    assert got.replayed


async def test_a_failed_effect_stores_nothing_and_frees_the_key(idem: Idempotency) -> None:
    async def fail(conn: AsyncConnection) -> StoredResponse:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await idem.once(request(), lambda lease: lease.write(fail))
    assert isinstance(await idem.begin(request()), Claim)  # free again


async def test_work_that_returns_without_completing_frees_the_key(idem: Idempotency) -> None:
    async def cancelled(lease: Lease) -> str:
        await lease.hold()
        return "client left"

    assert await idem.once(request(), cancelled) == "client left"
    assert isinstance(await idem.begin(request()), Claim)


async def test_a_handed_off_lease_keeps_the_key_until_its_holder_settles(
    idem: Idempotency,
) -> None:
    kept: list[Lease] = []

    async def stream(lease: Lease) -> str:
        await lease.hold()
        kept.append(lease.hand_off())
        return "streaming"

    assert await idem.once(request(), stream) == "streaming"
    with pytest.raises(IdempotencyInProgress):
        await idem.begin(request())  # the stream still holds it
    await kept[0].record(OK)
    replay = await idem.once(request(), stream)
    assert isinstance(replay, StoredResponse)
    assert replay.body == b"made"


async def test_without_a_key_the_lease_claims_nothing(idem: Idempotency) -> None:
    async def work(lease: Lease) -> StoredResponse:
        await lease.hold()  # no key: nothing to hold
        assert not lease.keyed
        return await lease.record(OK)  # no key: nothing to record either

    assert await idem.once(None, work) is OK
