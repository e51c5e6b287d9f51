"""Idempotency keys for any mutating endpoint: conversations, chat completions, downloads.

A request is identified by ``IdempotencyRequest(key, scope, fingerprint, route)``: the client's
key; the scope (method + route template + caller) the key lives in; and a SHA-256 fingerprint of
the canonical request, so the same key with a different request is refused (422). Build one
with ``IdempotencyKeyDep`` (``app/api/deps.py``) in a FastAPI endpoint.

The one path: ``await idempotency.once(key, work)``, used by chat, conversations and lifecycle
alike. ``work`` gets a ``Lease`` and does what its request does; the lease is how it touches
the key:

- ``await lease.write(effect)``: run ``effect(conn)`` (a store write returning the response)
  in one batched write transaction (``Database.write_batched``) together with the key: claimed
  there unless the work ``hold``s it already, and completed with the response. The key row and
  the effect commit or roll back together. Conversations use only this.
- ``await lease.hold()``: claim the key now, with a lease, before work that happens outside the
  store (an upstream call, starting a download); a twin request meanwhile gets 409
  ``idempotency_in_progress``. ``lease.write(effect)`` or ``lease.record(response)`` then
  completes it. A claim older than its lease (its holder crashed) is taken over by the next
  request with the same key.
- ``lease.hand_off()``: the work returns while something it started (a stream) still owns the
  key; that holder calls ``write``/``record`` or ``abandon`` itself.

A replay (the key already has a response) ends the work early: ``once`` returns the stored
response instead of the work's result. When the work raises, is cancelled, or returns without
completing a held key, the claim is abandoned so the client can retry; failures are never
stored. Without a key the lease claims nothing and ``write`` is a plain batched write.

Validate the request before ``once`` (validation failures are never stored). A dry run calls
``peek`` (read-only). ``begin``/``claim``/``complete``/``abandon`` are the primitives ``once``
is made of.

Rows expire ``idempotency_ttl_s`` after the claim; ``sweep`` deletes expired rows in bounded
batches and the lifespan runs it every ``sweep_interval_s``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import DataCorrupted, IdempotencyInProgress, IdempotencyKeyReused
from app.observability.metrics import Metrics
from app.settings import StoreSettings
from app.store import idempotency_repository as repo
from app.store.database import Database
from app.store.timeutil import utcnow

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


def json_response(
    status_code: int, payload: Any, headers: dict[str, str] | None = None
) -> StoredResponse:
    """A JSON response ready to be stored under a key."""
    body = (
        b""
        if payload is None
        else json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    )
    out = {"content-type": "application/json"} if payload is not None else {}
    out.update(headers or {})
    return StoredResponse(status_code, body, out)


@dataclass(frozen=True, slots=True)
class Claim:
    """This request holds the key; ``owner`` is its compare-and-set token."""

    request: IdempotencyRequest
    owner: str


Effect = Callable[[AsyncConnection], Awaitable[StoredResponse]]
T = TypeVar("T")


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

    async def once(
        self,
        key: IdempotencyRequest | None,
        work: Callable[[Lease], Awaitable[T]],
        *,
        lease_s: float | None = None,
    ) -> T | StoredResponse:
        """Run ``work`` at most once per key: the stored response for a replay, else its result.

        ``lease_s``: how long a ``hold`` keeps twins out (default ``idempotency_lease_s``); set
        it at least as long as the work may take.
        """
        lease = Lease(self, key, lease_s)
        try:
            result = await work(lease)
        except _Replay as replay:
            return replay.stored
        except BaseException:
            await lease.abandon()
            raise
        if not lease.handed_off:
            await lease.abandon()  # held but never completed: free the key for a retry
        return result

    def lease(self, key: IdempotencyRequest | None) -> Lease:
        """A lease outside ``once`` (``lease(None)``: a plain batched write)."""
        return Lease(self, key, None)

    # -- the primitives ``once`` is made of --

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
        self.count(request, got)
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

    def count(self, request: IdempotencyRequest, got: Claim | StoredResponse) -> None:
        # After the commit: a batch that rolled back and re-ran must not count twice.
        if isinstance(got, StoredResponse) and got.replayed:
            self.metrics.idempotent_replays.labels(route=request.route).inc()

    async def _release(self, claim: Claim) -> None:
        req = claim.request
        async with self.db.write() as conn:
            await repo.release(conn, key=req.key, scope=req.scope, owner=claim.owner)


class _Replay(Exception):  # control flow inside ``once``, never seen outside
    def __init__(self, stored: StoredResponse) -> None:
        self.stored = stored


class Lease:
    """How ``once``'s work touches the key (see the module docstring)."""

    def __init__(
        self, idempotency: Idempotency, key: IdempotencyRequest | None, lease_s: float | None
    ) -> None:
        self._idem = idempotency
        self.key = key
        self._lease_s = lease_s
        self._claim: Claim | None = None
        self.settled = key is None
        self.handed_off = False

    @property
    def keyed(self) -> bool:
        return self.key is not None

    async def hold(self) -> None:
        """Claim the key now (before work outside the store); a replay ends the work."""
        if self.key is None or self._claim is not None:
            return
        got = await self._idem.begin(self.key, lease_s=self._lease_s)
        if isinstance(got, StoredResponse):
            self.settled = True
            raise _Replay(got)
        self._claim = got

    async def write(self, effect: Effect) -> StoredResponse:
        """``effect`` and the key's response in one committed write transaction."""
        idem = self._idem
        key, held = self.key, self._claim
        if key is None:
            return await idem.db.write_batched(effect)

        async def job(conn: AsyncConnection) -> StoredResponse:
            claim = held
            if claim is None:
                got = await idem.claim(conn, key)
                if not isinstance(got, Claim):
                    return got  # a replay: nothing else runs
                claim = got
            response = await effect(conn)
            await idem.complete(conn, claim, response)
            return response

        response = await idem.db.write_batched(job)
        self.settled = True
        if held is None:
            idem.count(key, response)  # after the commit: a re-run batch must not count twice
            if response.replayed:
                raise _Replay(response)
        return response

    async def record(self, response: StoredResponse) -> StoredResponse:
        """Complete the key with ``response`` (no other write); without a key, nothing."""
        if self.key is None:
            return response

        async def same(conn: AsyncConnection) -> StoredResponse:
            return response

        return await self.write(same)

    def hand_off(self) -> Lease:
        self.handed_off = True
        return self

    async def abandon(self) -> None:
        if self._claim is not None and not self.settled:
            self.settled = True
            await self._idem.abandon(self._claim)


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
