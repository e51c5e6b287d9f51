"""Every SQL statement about idempotency keys (SQLAlchemy Core).

A row is keyed by (key, scope) and owned by the random ``owner`` token of the request that
claimed it; completing and taking over are compare-and-set on that token, so a request whose
lease was taken over can never complete. A completed row carries ``response_checksum``, a
SHA-256 over the key, scope and the stored response, checked before the response is replayed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.checksums import canonical_json
from app.store.sqlite_fastpath import Prepared
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
    response_checksum: str | None = None

    def response_intact(self, *, key: str, scope: str) -> bool:
        """Whether the stored response still matches its checksum.

        Rows completed before the checksum column existed (NULL) cannot be checked and pass.
        """
        if self.response_checksum is None:
            return True
        try:
            expected = response_checksum(
                key=key,
                scope=scope,
                status_code=self.status_code,
                body=self.response_body,
                headers=self.response_headers,
            )
        except (TypeError, ValueError):  # headers that no longer encode: damaged JSON
            return False
        return expected == self.response_checksum


def response_checksum(
    *,
    key: str,
    scope: str,
    status_code: int | None,
    body: bytes | None,
    headers: dict[str, str] | None,
) -> str:
    """Binds the response to its key and scope, so a row copied under another key fails too."""
    head = canonical_json(
        {"headers": headers or {}, "key": key, "scope": scope, "status": status_code}
    )
    digest = hashlib.sha256(head)
    digest.update(b"\n")
    digest.update(body or b"")
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ClaimStamp:
    """What a fresh in_progress claim writes."""

    fingerprint: str
    owner: str
    now: datetime
    expires_at: datetime
    lease_expires_at: datetime

    def values(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "state": IN_PROGRESS,
            "owner": self.owner,
            "status_code": None,
            "response_body": None,
            "response_headers": None,
            "response_checksum": None,
            "created_at": self.now,
            "expires_at": self.expires_at,
            "lease_expires_at": self.lease_expires_at,
        }


_COLUMNS = [c.key for c in K.c]
_INSERT = {
    # ON CONFLICT DO NOTHING: on PostgreSQL a concurrent uncommitted insert of the same key
    # makes this wait for that transaction, so a twin sees the outcome instead of racing it.
    "sqlite": Prepared(
        sqlite.insert(K).on_conflict_do_nothing(index_elements=[K.c.key, K.c.scope]),
        column_keys=_COLUMNS,
    ),
    "postgresql": Prepared(
        postgresql.insert(K).on_conflict_do_nothing(index_elements=[K.c.key, K.c.scope]),
        column_keys=_COLUMNS,
    ),
}
_ROW = (
    K.c.fingerprint,
    K.c.state,
    K.c.owner,
    K.c.status_code,
    K.c.response_body,
    K.c.response_headers,
    K.c.expires_at,
    K.c.lease_expires_at,
    K.c.response_checksum,
)
_GET = Prepared(
    select(*_ROW).where(K.c.key == bindparam("p_key"), K.c.scope == bindparam("p_scope")), _ROW
)
_COMPLETE = Prepared(
    update(K)
    .where(
        K.c.key == bindparam("p_key"),
        K.c.scope == bindparam("p_scope"),
        K.c.owner == bindparam("p_owner"),
        K.c.state == IN_PROGRESS,
    )
    .values(
        state=COMPLETED,
        status_code=bindparam("p_status", type_=K.c.status_code.type),
        response_body=bindparam("p_body", type_=K.c.response_body.type),
        response_headers=bindparam("p_headers", type_=K.c.response_headers.type),
        response_checksum=bindparam("p_checksum", type_=K.c.response_checksum.type),
        lease_expires_at=None,
    )
)


async def try_insert(conn: AsyncConnection, *, key: str, scope: str, stamp: ClaimStamp) -> bool:
    """Insert an in_progress row unless (key, scope) exists; True when inserted."""
    statement = _INSERT["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    return await statement.execute(conn, {"key": key, "scope": scope, **stamp.values()}) == 1


async def get(conn: AsyncConnection, *, key: str, scope: str) -> KeyRow | None:
    rows = await _GET.fetch(conn, {"p_key": key, "p_scope": scope})
    if not rows:
        return None
    fingerprint, state, owner, status, body, headers, expires_at, lease_expires_at, checksum = rows[
        0
    ]
    return KeyRow(
        fingerprint,
        state,
        owner,
        status,
        bytes(body) if body is not None else None,
        headers,
        as_utc(expires_at),
        as_utc(lease_expires_at) if lease_expires_at is not None else None,
        checksum,
    )


async def take_over(
    conn: AsyncConnection, *, key: str, scope: str, previous_owner: str, stamp: ClaimStamp
) -> bool:
    """Replace an expired row or a stale in_progress claim, if nobody else did first."""
    result = await conn.execute(
        update(K)
        .where(K.c.key == key, K.c.scope == scope, K.c.owner == previous_owner)
        .values(stamp.values())
    )
    return result.rowcount == 1


async def complete(
    conn: AsyncConnection,
    *,
    key: str,
    scope: str,
    owner: str,
    status_code: int,
    body: bytes,
    headers: dict[str, str],
) -> bool:
    changed = await _COMPLETE.execute(
        conn,
        {
            "p_key": key,
            "p_scope": scope,
            "p_owner": owner,
            "p_status": status_code,
            "p_body": body,
            "p_headers": headers,
            "p_checksum": response_checksum(
                key=key, scope=scope, status_code=status_code, body=body, headers=headers
            ),
        },
    )
    return changed == 1


async def release(conn: AsyncConnection, *, key: str, scope: str, owner: str) -> bool:
    result = await conn.execute(
        delete(K).where(
            K.c.key == key, K.c.scope == scope, K.c.owner == owner, K.c.state == IN_PROGRESS
        )
    )
    return result.rowcount == 1


async def delete_expired(conn: AsyncConnection, *, now: datetime, limit: int) -> int:
    """Delete up to ``limit`` rows whose ``expires_at`` has passed (oldest first).

    The outer ``expires_at`` condition is what makes this safe against a concurrent takeover:
    when the DELETE waits on a row lock, PostgreSQL re-checks only the outer statement's own
    conditions against the committed row, not the IN-subquery's snapshot. Without it, a key
    re-claimed (fresh ``expires_at``) while the sweeper waited was deleted, and the client's
    retry ran its effect a second time.
    """
    batch = (
        select(K.c.key, K.c.scope)
        .where(K.c.expires_at <= now)
        .order_by(K.c.expires_at)
        .limit(limit)
    )
    result = await conn.execute(
        delete(K).where(tuple_(K.c.key, K.c.scope).in_(batch), K.c.expires_at <= now)
    )
    return int(result.rowcount)
