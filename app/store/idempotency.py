"""Idempotency keys for any mutating endpoint: conversations, chat completions, downloads.

A request is identified by ``IdempotencyRequest(key, scope, fingerprint, route)``: the client's
key; the scope (method + route template + caller) the key lives in; and a SHA-256 fingerprint of
the canonical request, so the same key with a different request is refused (422). Build one
with ``app.api.idempotency.IdempotencyKeyDep`` in a FastAPI endpoint.

Two ways to use it:

(a) The effect is a store write. ``run(request, effect)`` claims the key, runs ``effect(conn)``
    and records its response in ONE write transaction, so the key row and the effect commit
    together; an exception rolls both back (failures are never stored, a retry re-executes)::

        response = await idempotency.run(key, lambda conn: do_write_and_render(conn))

(b) The effect takes long and happens outside the store (a chat completion calling an upstream).
    ``begin`` commits an ``in_progress`` claim with a lease; a twin request meanwhile gets 409
    ``idempotency_in_progress``; ``complete(conn, ...)`` records the response inside the
    caller's write transaction (with its conversation append); ``abandon`` (or ``held``)
    deletes the claim when the work fails so the client can retry. A claim older than its
    lease (its holder crashed) is taken over by the next request with the same key::

        got = await idempotency.begin(key)
        if isinstance(got, StoredResponse):
            return to_response(got)              # replayed: no upstream call
        async with idempotency.held(got) as claim:  # abandons on error or cancellation
            answer = await call_upstream()
            response = json_stored(200, render(answer))
            async with db.write() as conn:
                await conversations.append(conn, conversation_id, [user_turn, assistant_turn])
                await idempotency.complete(conn, claim, response)
        return to_response(response)

    (``to_response`` and ``json_stored`` are in ``app/api/idempotency.py``.)

Rules: validate the request before ``begin``/``run`` (validation failures are never stored);
only a completed response is stored, so an error rolls back (a) or is abandoned (b) and a
retry runs again; ``run`` and ``begin`` open their own transactions, so never call them inside
``db.write()`` (on SQLite that would wait for itself); inside a transaction of your own use
``claim(conn, ...)`` + ``complete(conn, ...)``. A dry run calls ``peek`` (read-only).

Rows expire ``idempotency_ttl_s`` after the claim; ``sweep`` deletes expired rows in bounded
batches and the lifespan runs it every ``sweep_interval_s``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import DataCorrupted, IdempotencyInProgress, IdempotencyKeyReused
from app.observability.metrics import Metrics
from app.settings import StoreSettings
from app.store import idempotency_repository as repo
from app.store.database import Database
from app.store.timeutil import utcnow
from app.store.write_batch import WriteBatcher

log = logging.getLogger("keel.store.idempotency")

_CLAIM_ATTEMPTS = 3
_MAX_BATCHES_PER_SWEEP = 100


@dataclass(frozen=True, slots=True)
class IdempotencyRequest:
    key: str
    scope: str  # "<METHOD> <route template> <caller>"
    fingerprint: str  # sha256 hex of the canonical request
    route: str  # route template, the label of keel_idempotent_replays_total


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as stored under a key and replayed byte-for-byte."""

    status_code: int
    body: bytes
    headers: dict[str, str]  # lower-case names, e.g. content-type, etag, location
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Claim:
    """This request holds the key; ``owner`` is its compare-and-set token."""

    request: IdempotencyRequest
    owner: str


Effect = Callable[[AsyncConnection], Awaitable[StoredResponse]]


class Idempotency:
    def __init__(
        self,
        db: Database,
        settings: StoreSettings,
        metrics: Metrics,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.writes = WriteBatcher(db)

    # -- (a) effect inside one store transaction --

    async def run(self, request: IdempotencyRequest | None, effect: Effect) -> StoredResponse:
        """Run ``effect`` in one write transaction together with the key (if any).

        The transaction may be shared with other queued writes (group commit on SQLite, see
        ``write_batch.py``), so ``effect`` may run twice: keep side effects other than the
        store's out of it. Returns after the commit.
        """
        if request is None:
            return await self.writes.run(effect)

        async def job(conn: AsyncConnection) -> StoredResponse:
            got = await self.claim(conn, request)
            if isinstance(got, StoredResponse):
                return got
            response = await effect(conn)
            await self.complete(conn, got, response)
            return response

        response = await self.writes.run(job)
        self._count(request, response)
        return response

    # -- (b) long effects outside the store --

    async def begin(
        self, request: IdempotencyRequest, *, lease_s: float | None = None
    ) -> Claim | StoredResponse:
        """Commit an ``in_progress`` claim, or return the stored response to replay.

        Raises ``IdempotencyKeyReused`` (422) for a different request under the same key and
        ``IdempotencyInProgress`` (409) while another request holds an unexpired lease. Set
        ``lease_s`` at least as long as the work may take (default ``idempotency_lease_s``).
        """
        async with self.db.write() as conn:
            got = await self.claim(conn, request, lease_s=lease_s)
        self._count(request, got)
        return got

    async def complete(self, conn: AsyncConnection, claim: Claim, response: StoredResponse) -> None:
        """Record the response in the caller's write transaction (commits with the effect).

        Raises ``IdempotencyInProgress`` if the claim was lost (its lease expired and another
        request took the key over); the caller's transaction then rolls back its effect.
        """
        req = claim.request
        done = await repo.complete(
            conn,
            key=req.key,
            scope=req.scope,
            owner=claim.owner,
            status_code=response.status_code,
            body=response.body,
            headers=response.headers,
        )
        if not done:
            raise IdempotencyInProgress(
                "Another request with this idempotency key took over after this one's lease "
                "expired.",
                retry_after=1,
            )

    async def abandon(self, claim: Claim) -> None:
        """Delete an uncompleted claim so the client can retry; a no-op once completed.

        Shielded: it finishes even when the caller is being cancelled (client disconnect).
        """
        await asyncio.shield(self._release(claim))

    @asynccontextmanager
    async def held(self, claim: Claim) -> AsyncIterator[Claim]:
        """Abandon ``claim`` if the block raises or is cancelled."""
        try:
            yield claim
        except BaseException:
            await self.abandon(claim)
            raise

    # -- shared --

    async def claim(
        self, conn: AsyncConnection, request: IdempotencyRequest, *, lease_s: float | None = None
    ) -> Claim | StoredResponse:
        """Claim the key inside ``conn``'s transaction (committed when it commits)."""
        ttl = timedelta(seconds=self.settings.idempotency_ttl_s)
        lease = timedelta(seconds=lease_s or self.settings.idempotency_lease_s)
        for _ in range(_CLAIM_ATTEMPTS):
            now = self.clock()
            owner = secrets.token_hex(16)
            stamp = repo.ClaimStamp(request.fingerprint, owner, now, now + ttl, now + lease)
            if await repo.try_insert(conn, key=request.key, scope=request.scope, stamp=stamp):
                return Claim(request, owner)
            row = await repo.get(conn, key=request.key, scope=request.scope)
            if row is None:
                continue  # abandoned or swept between the two statements
            try:
                stored = _decide(row, request, now)
            except DataCorrupted:
                self.metrics.data_corruption.labels(kind="idempotent_response").inc()
                log.error(
                    "stored idempotent response failed its checksum",
                    extra={"route": request.route, "scope": request.scope},
                )
                raise
            if stored is not None:
                return stored
            if await repo.take_over(
                conn, key=request.key, scope=request.scope, previous_owner=row.owner, stamp=stamp
            ):
                log.info("idempotency key taken over", extra={"route": request.route})
                return Claim(request, owner)
        raise IdempotencyInProgress(
            "Another request with this idempotency key is running.", retry_after=1
        )

    async def peek(
        self, conn: AsyncConnection, request: IdempotencyRequest
    ) -> StoredResponse | None:
        """What ``claim`` would answer, read-only and uncounted (for dry runs).

        Returns the response that would be replayed, or None when the request would run.
        """
        row = await repo.get(conn, key=request.key, scope=request.scope)
        return None if row is None else _decide(row, request, self.clock())

    async def sweep(self, *, now: datetime | None = None) -> int:
        """Delete expired keys in batches of ``sweep_batch``, one short transaction each."""
        now = self.clock() if now is None else now
        batch = self.settings.sweep_batch
        total = 0
        for _ in range(_MAX_BATCHES_PER_SWEEP):
            async with self.db.write() as conn:
                n = await repo.delete_expired(conn, now=now, limit=batch)
            total += n
            if n < batch:
                break
        if total:
            self.metrics.idempotency_swept.inc(total)
            log.info("swept expired idempotency keys", extra={"count": total})
        return total

    async def sweep_forever(self) -> None:
        """The sweeper task: ``sweep`` every ``sweep_interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                await self.sweep()
            except Exception as exc:  # keep sweeping; the store may be back next time
                log.warning("idempotency sweep failed", exc_info=exc)

    async def aclose(self) -> None:
        await self.writes.aclose()

    def _count(self, request: IdempotencyRequest, got: Claim | StoredResponse) -> None:
        # After the commit: a batch that rolled back and re-ran must not count twice.
        if isinstance(got, StoredResponse) and got.replayed:
            self.metrics.idempotent_replays.labels(route=request.route).inc()

    async def _release(self, claim: Claim) -> None:
        req = claim.request
        async with self.db.write() as conn:
            await repo.release(conn, key=req.key, scope=req.scope, owner=claim.owner)


def _decide(row: repo.KeyRow, request: IdempotencyRequest, now: datetime) -> StoredResponse | None:
    """Replay (a StoredResponse), refuse (raise), or None: the row may be taken over."""
    if row.expires_at <= now:
        return None
    if row.fingerprint != request.fingerprint:
        raise IdempotencyKeyReused(
            "This idempotency key was already used for a different request; use a new key."
        )
    if row.state == repo.IN_PROGRESS:
        if row.lease_expires_at is not None and row.lease_expires_at > now:
            raise IdempotencyInProgress(
                "A request with this idempotency key is still running; retry shortly.",
                retry_after=1,
            )
        return None
    if row.status_code is None or row.response_body is None:
        return None  # a completed row without a response cannot be replayed; run again
    if not row.response_intact(key=request.key, scope=request.scope):
        # Never replay bytes that changed behind Keel's back, and never run the effect again
        # either: it already happened once. The key stays refused until it expires.
        raise DataCorrupted(
            "The response stored under this idempotency key failed its integrity check."
        )
    return StoredResponse(
        row.status_code, row.response_body, dict(row.response_headers or {}), replayed=True
    )
