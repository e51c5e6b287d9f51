"""Every SQL statement about conversations and messages (SQLAlchemy Core).

Writes are compare-and-set: ``UPDATE conversations SET version = version + 1 ... WHERE id = :id
AND deleted_at IS NULL [AND version = :v | IN (:allowed)] RETURNING ...``. On PostgreSQL the
UPDATE takes the row lock, so concurrent writers queue on it and re-check the WHERE clause
against the committed row (a stale one matches nothing); on SQLite writers are serialised by
``Database.write()``. The same statement hands out the next ``seq`` range, so seqs are gap-free
without reading the conversation first. An append is two statements: that UPDATE and the
message INSERT. The write statements go through ``Prepared`` (fast on SQLite, see
``sqlite_fastpath.py``); reads go through SQLAlchemy.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import and_, bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.checksums import message_checksum
from app.store.conversation_models import Conversation, Message, TextPart
from app.store.sqlite_fastpath import Prepared
from app.store.tables import conversations as C
from app.store.tables import messages as M
from app.store.timeutil import as_utc

_HEAD = (
    C.c.id,
    C.c.title,
    C.c.metadata,
    C.c.version,
    C.c.next_seq,
    C.c.created_at,
    C.c.updated_at,
    C.c.fields_version,
)
_MESSAGE = (
    M.c.id,
    M.c.seq,
    M.c.role,
    M.c.content,
    M.c.created_at,
    M.c.checksum,
    M.c.parts,
    M.c.version,
    M.c.deleted_version,
)

StoredMessage = tuple[Message, str]
"""A message as read, with the checksum stored beside it (verified by the service)."""

VersionCheck = Literal["none", "one", "many"]


def _conversation(row: Sequence[Any]) -> Conversation:  # the _HEAD columns, in order
    cid, title, metadata, version, next_seq, created_at, updated_at, fields_version = row
    return Conversation(
        cid,
        title,
        metadata,
        version,
        as_utc(created_at),
        as_utc(updated_at),
        next_seq - 1,
        fields_version,
    )


def _message(row: Sequence[Any]) -> StoredMessage:  # the _MESSAGE columns, in order
    mid, seq, role, content, created_at, checksum, parts, version, deleted_version = row
    if parts is not None:
        parts = tuple(TextPart(str(p.get("type")), str(p.get("text"))) for p in parts)
        content = "".join(p.text for p in parts)
    message = Message(mid, seq, role, content, as_utc(created_at), parts, version, deleted_version)
    return message, checksum


_INSERT_CONVERSATION = Prepared(insert(C), column_keys=[c.key for c in C.c])
_INSERT_MESSAGE = Prepared(insert(M), column_keys=[c.key for c in M.c])
_HEAD_BY_ID = select(*_HEAD).where(C.c.id == bindparam("p_id"), C.c.deleted_at.is_(None))


async def insert_conversation(
    conn: AsyncConnection,
    *,
    id: str,
    title: str | None,
    metadata: dict[str, Any],
    now: datetime,
    n_messages: int = 0,
) -> None:
    await _INSERT_CONVERSATION.execute(
        conn,
        {
            "id": id,
            "title": title,
            "metadata": metadata,
            "version": 1,
            "next_seq": 1 + n_messages,
            "created_at": now,
            "updated_at": now,
            "deleted_at": None,
            "fields_version": 1,
        },
    )


async def head(conn: AsyncConnection, conversation_id: str) -> Conversation | None:
    """The live (not deleted) conversation's head, or None."""
    row = (await conn.execute(_HEAD_BY_ID, {"p_id": conversation_id})).first()
    return _conversation(row) if row is not None else None


@functools.cache
def _bump_statement(
    messages: bool, fields: tuple[str, ...], delete: bool, check: VersionCheck
) -> Prepared:
    # Built once per shape: constructing a statement costs more than running it on SQLite.
    values: dict[str, Any] = {"version": C.c.version + 1, "updated_at": bindparam("p_now")}
    if messages:
        values["next_seq"] = C.c.next_seq + bindparam("p_n")
    for name in fields:
        values[name] = bindparam(f"p_{name}", type_=C.c[name].type)
    if fields:
        values["fields_version"] = C.c.version + 1
    if delete:
        values["deleted_at"] = bindparam("p_now")
    stmt = update(C).where(C.c.id == bindparam("p_id"), C.c.deleted_at.is_(None))
    if check == "one":
        stmt = stmt.where(C.c.version == bindparam("p_version"))
    elif check == "many":
        stmt = stmt.where(C.c.version.in_(bindparam("p_allowed", expanding=True)))
    return Prepared(stmt.values(values).returning(*_HEAD), _HEAD)


async def bump(
    conn: AsyncConnection,
    conversation_id: str,
    *,
    allowed: frozenset[int] | None,
    now: datetime,
    n_messages: int = 0,
    fields: dict[str, Any] | None = None,
    delete: bool = False,
) -> Conversation | None:
    """Add 1 to the version (and reserve ``n_messages`` seqs) if the precondition holds.

    Returns the new head (``next_seq`` already advanced), or None when the conversation is
    missing, deleted, or at a version outside ``allowed``; the caller reads why.
    """
    fields = fields or {}
    params: dict[str, Any] = {"p_id": conversation_id, "p_now": now, "p_n": n_messages}
    params.update({f"p_{k}": v for k, v in fields.items()})
    check: VersionCheck = "none"
    if allowed is not None and len(allowed) == 1:
        check, params["p_version"] = "one", next(iter(allowed))
    elif allowed is not None:
        check, params["p_allowed"] = "many", sorted(allowed)
    stmt = _bump_statement(n_messages > 0, tuple(sorted(fields)), delete, check)
    if check == "many":  # expanding IN () is not for the fast path; rare (If-Match lists)
        row = (await conn.execute(stmt.stmt, params)).first()
        return _conversation(row) if row is not None else None
    rows = await stmt.fetch(conn, params)
    return _conversation(rows[0]) if rows else None


def _row(conversation_id: str, m: Message) -> dict[str, Any]:
    parts = None if m.parts is None else [(p.type, p.text) for p in m.parts]
    return {
        "id": m.id,
        "conversation_id": conversation_id,
        "seq": m.seq,
        "role": m.role,
        "content": "" if parts is not None else m.content,  # then the parts hold the text
        "parts": None if parts is None else [{"type": t, "text": x} for t, x in parts],
        "created_at": m.created_at,
        "version": m.version,
        "checksum": message_checksum(conversation_id, m.seq, m.role, m.content, parts),
        "deleted_at": None,
        "deleted_version": None,
    }


async def insert_messages(
    conn: AsyncConnection, conversation_id: str, messages: Sequence[Message]
) -> None:
    """New items, each with the checksum of what it is (``checksums.py``)."""
    rows = [_row(conversation_id, m) for m in messages]
    if len(rows) == 1:
        await _INSERT_MESSAGE.execute(conn, rows[0])
    else:
        await _INSERT_MESSAGE.execute_many(conn, rows)


async def messages(
    conn: AsyncConnection,
    conversation_id: str,
    *,
    max_seq: int,
) -> list[StoredMessage]:
    """Every message up to ``max_seq``, tombstones included (``/verify``). ``max_seq`` is the
    head's count: PostgreSQL's READ COMMITTED may show an append that committed after the
    head was read."""
    stmt = select(*_MESSAGE).where(M.c.conversation_id == conversation_id, M.c.seq <= max_seq)
    return [_message(r) for r in (await conn.execute(stmt.order_by(M.c.seq))).all()]


async def item_seq(conn: AsyncConnection, conversation_id: str, item_id: str) -> int | None:
    """The seq of an item of this conversation (tombstones included: a page cursor may have
    been deleted since the client read it)."""
    stmt = select(M.c.seq).where(M.c.id == item_id, M.c.conversation_id == conversation_id)
    return (await conn.execute(stmt)).scalar_one_or_none()


async def item(conn: AsyncConnection, conversation_id: str, item_id: str) -> StoredMessage | None:
    """A live item of this conversation, or None."""
    stmt = select(*_MESSAGE).where(
        M.c.id == item_id, M.c.conversation_id == conversation_id, M.c.deleted_at.is_(None)
    )
    row = (await conn.execute(stmt)).first()
    return _message(row) if row is not None else None


async def items_page(
    conn: AsyncConnection,
    conversation_id: str,
    *,
    max_seq: int,
    limit: int,
    descending: bool,
    after_seq: int | None = None,
    since_version: int | None = None,
) -> list[StoredMessage]:
    """At most ``limit`` items in seq order, keyset-paginated on the unique (conversation_id,
    seq) index: the database reads a page, not the conversation.

    Without ``since_version`` only live items; with it, the items added after that version
    and the tombstones of those deleted after it (delta sync)."""
    stmt = select(*_MESSAGE).where(M.c.conversation_id == conversation_id, M.c.seq <= max_seq)
    if since_version is None:
        stmt = stmt.where(M.c.deleted_at.is_(None))
    else:
        stmt = stmt.where(or_(M.c.version > since_version, M.c.deleted_version > since_version))
    if after_seq is not None:
        stmt = stmt.where(M.c.seq < after_seq if descending else M.c.seq > after_seq)
    order = M.c.seq.desc() if descending else M.c.seq.asc()
    return [_message(r) for r in (await conn.execute(stmt.order_by(order).limit(limit))).all()]


async def delete_item(
    conn: AsyncConnection, conversation_id: str, item_id: str, *, version: int, now: datetime
) -> bool:
    """Mark a live item deleted at ``version``; False when it is not (or no longer) live."""
    stmt = (
        update(M)
        .where(M.c.id == item_id, M.c.conversation_id == conversation_id, M.c.deleted_at.is_(None))
        .values(deleted_at=now, deleted_version=version)
    )
    return bool((await conn.execute(stmt)).rowcount)


async def created_at_of(conn: AsyncConnection, conversation_id: str) -> datetime | None:
    """When a conversation was made (deleted ones too): the key of a list cursor."""
    stmt = select(C.c.created_at).where(C.c.id == conversation_id)
    value = (await conn.execute(stmt)).scalar_one_or_none()
    return as_utc(value) if value is not None else None


async def page(
    conn: AsyncConnection, *, limit: int, after: tuple[datetime, str] | None
) -> list[Conversation]:
    """Live conversations, newest first, keyset-paginated on (created_at, id)."""
    stmt = select(*_HEAD).where(C.c.deleted_at.is_(None))
    if after is not None:
        created, cid = after
        stmt = stmt.where(
            or_(C.c.created_at < created, and_(C.c.created_at == created, C.c.id < cid))
        )
    stmt = stmt.order_by(C.c.created_at.desc(), C.c.id.desc()).limit(limit)
    return [_conversation(r) for r in (await conn.execute(stmt)).all()]
