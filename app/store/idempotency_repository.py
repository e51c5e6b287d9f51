"""Every SQL statement about idempotency keys (SQLAlchemy Core).

A row is keyed by (key, scope) and owned by the random ``owner`` token of the request that
claimed it; completing and taking over are compare-and-set on that token, so a request whose
lease was taken over can never complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.tables import idempotency_keys as K
from app.store.timeutil import as_utc

IN_PROGRESS = "in_progress"
COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class KeyRow:
    fingerprint: str
    state: str
    owner: str
    status_code: int | None
    response_body: bytes | None
    response_headers: dict[str, str] | None
    expires_at: datetime
    lease_expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class ClaimStamp:
    """What a fresh in_progress claim writes."""

    fingerprint: str
    owner: str
    now: datetime
    expires_at: datetime
    lease_expires_at: datetime

    def values(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "state": IN_PROGRESS, "owner": self.owner,
                "status_code": None, "response_body": None, "response_headers": None,
                "created_at": self.now, "expires_at": self.expires_at,
                "lease_expires_at": self.lease_expires_at}


async def try_insert(conn: AsyncConnection, *, key: str, scope: str, stamp: ClaimStamp) -> bool:
    """Insert an in_progress row unless (key, scope) exists; True when inserted.

    On PostgreSQL a concurrent uncommitted insert of the same key makes this wait for that
    transaction, so a twin request sees the committed outcome instead of racing it.
    """
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    values = {"key": key, "scope": scope, **stamp.values()}
    stmt = dialect.insert(K).values(values).on_conflict_do_nothing(
        index_elements=[K.c.key, K.c.scope])
    result = await conn.execute(stmt)
    return result.rowcount == 1


async def get(conn: AsyncConnection, *, key: str, scope: str) -> KeyRow | None:
    row = (await conn.execute(
        select(K.c.fingerprint, K.c.state, K.c.owner, K.c.status_code, K.c.response_body,
               K.c.response_headers, K.c.expires_at, K.c.lease_expires_at)
        .where(K.c.key == key, K.c.scope == scope)
    )).first()
    if row is None:
        return None
    return KeyRow(
        row.fingerprint, row.state, row.owner, row.status_code,
        bytes(row.response_body) if row.response_body is not None else None,
        row.response_headers, as_utc(row.expires_at),
        as_utc(row.lease_expires_at) if row.lease_expires_at is not None else None,
    )


async def take_over(
    conn: AsyncConnection, *, key: str, scope: str, previous_owner: str, stamp: ClaimStamp
) -> bool:
    """Replace an expired row or a stale in_progress claim, if nobody else did first."""
    result = await conn.execute(
        update(K).where(K.c.key == key, K.c.scope == scope, K.c.owner == previous_owner)
        .values(stamp.values()))
    return result.rowcount == 1


async def complete(
    conn: AsyncConnection, *, key: str, scope: str, owner: str, status_code: int, body: bytes,
    headers: dict[str, str],
) -> bool:
    result = await conn.execute(
        update(K).where(K.c.key == key, K.c.scope == scope, K.c.owner == owner,
                        K.c.state == IN_PROGRESS)
        .values(state=COMPLETED, status_code=status_code, response_body=body,
                response_headers=headers, lease_expires_at=None))
    return result.rowcount == 1


async def release(conn: AsyncConnection, *, key: str, scope: str, owner: str) -> bool:
    result = await conn.execute(
        delete(K).where(K.c.key == key, K.c.scope == scope, K.c.owner == owner,
                        K.c.state == IN_PROGRESS))
    return result.rowcount == 1


async def delete_expired(conn: AsyncConnection, *, now: datetime, limit: int) -> int:
    """Delete up to ``limit`` rows whose ``expires_at`` has passed (oldest first)."""
    batch = (select(K.c.key, K.c.scope).where(K.c.expires_at <= now)
             .order_by(K.c.expires_at).limit(limit))
    result = await conn.execute(delete(K).where(tuple_(K.c.key, K.c.scope).in_(batch)))
    return int(result.rowcount)
