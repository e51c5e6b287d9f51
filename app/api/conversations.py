"""``/v1/conversations``: parse, call the conversation service, render (ETags, statuses).

The routes and shapes are OpenAI's Conversations API (the SDK's ``client.conversations`` and
``client.conversations.items``), with Keel's versions, preconditions, idempotency keys, dry
runs and delta sync as extensions; ``PATCH`` and ``.../messages`` remain from Keel's older API.

Mutations run through ``_mutate``: one write transaction holding the idempotency key (when the
request has one) and the effect, or, for ``?dry_run=true``, a read transaction in which the
service takes the same decisions and nothing is written, counted or stored.

A mutation's headers and ``dry_run`` are read by one dependency (``get_conversation_write`` in
``deps.py``) rather than as FastAPI parameters: each declared header/query parameter costs
measurable CPU on the append hot path (about a fifth of it, see docs/store.md);
``openapi_extra`` still documents them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncConnection

from app.api import conversation_schemas as s
from app.api.deps import ConversationStoreDep as StoreDep
from app.api.deps import ConversationWrite as _Write
from app.api.deps import ConversationWriteDep as WriteDep
from app.api.idempotency import (
    KEY_HEADER,
    json_stored,
    to_response,
)
from app.errors import PreconditionFailed, VersionConflict
from app.store.conversation_models import FieldChanges, NewMessage
from app.store.idempotency import StoredResponse
from app.values import ID_MAX, ID_PATTERN, Version

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])

DRY_RUN_HEADER = "X-Keel-Dry-Run"
JSON = "application/json"


IfNoneMatch = Annotated[str | None, Header()]
Order = Literal["asc", "desc"]
# Ids are UUIDs; anything that cannot be one is refused before SQL (PostgreSQL answers a NUL in
# text with an error, not with "no row").
Id = Annotated[str, Path(max_length=ID_MAX, pattern=ID_PATTERN)]
Effect = Callable[[AsyncConnection, bool], Awaitable[StoredResponse]]


def _documented(*headers: str) -> dict[str, Any]:
    described = {
        KEY_HEADER: "1-255 visible ASCII characters; a retry with the same key and request "
        "replays the stored response (header Idempotent-Replayed: true)",
        "If-Match": 'the version you read, as "<version>"; stale: 412',
    }
    params: list[dict[str, Any]] = [
        {
            "name": h,
            "in": "header",
            "required": False,
            "description": described[h],
            "schema": {"type": "string"},
        }
        for h in headers
    ]
    params.append(
        {
            "name": "dry_run",
            "in": "query",
            "required": False,
            "description": "validate and answer without changing anything",
            "schema": {"type": "boolean", "default": False},
        }
    )
    return {"parameters": params}


async def _mutate(w: _Write, effect: Effect) -> Response:
    store = w.store
    try:
        if w.dry_run:
            async with store.db.read() as conn:
                stored = await store.idempotency.peek(conn, w.key) if w.key is not None else None
                if stored is None:
                    stored = await effect(conn, True)
            return to_response(stored, {DRY_RUN_HEADER: "true"})
        stored = await store.idempotency.once(
            w.key, lambda lease: lease.write(lambda conn: effect(conn, False))
        )
        return to_response(stored)
    except (VersionConflict, PreconditionFailed) as exc:
        if not w.dry_run:
            store.metrics.version_conflicts.labels(route=w.route, code=exc.code).inc()
        raise


def _json(payload: object, version: int) -> Response:
    return Response(s.dumps(payload), media_type=JSON, headers={"ETag": s.etag(version)})


@router.post("", status_code=201, openapi_extra=_documented(KEY_HEADER))
async def create_conversation(body: s.CreateConversationBody, w: WriteDep) -> Response:
    messages = s.new_messages(body.items or [])
    if messages:
        w.store.conversations.validate_messages(messages)  # before any transaction

    async def effect(conn: AsyncConnection, dry: bool) -> StoredResponse:
        made = await w.store.conversations.create(
            conn, title=body.title, metadata=body.metadata, messages=messages, dry_run=dry
        )
        c = made.conversation
        headers = {"etag": s.etag(c.version)}
        if not dry:
            headers["location"] = f"/v1/conversations/{c.id}"
        return json_stored(200 if dry else 201, s.conversation_json(c), headers)

    return await _mutate(w, effect)


@router.get("")
async def list_conversations(
    store: StoreDep, limit: int = 50, after: str | None = None
) -> Response:
    """Keel's list (OpenAI has none): newest first, ``after`` the last id of a page."""
    async with store.db.read() as conn:
        page = await store.conversations.page(
            conn, limit=limit, after=s.page_after(after, "a conversation")
        )
    return Response(s.dumps(s.page_json(page)), media_type=JSON)


@router.get("/{conversation_id}")
async def get_conversation(
    conversation_id: Id,
    store: StoreDep,
    if_none_match: IfNoneMatch = None,
    since_version: Annotated[Version | None, Query()] = None,
    limit: int = 20,
    order: Order = "desc",
) -> Response:
    """The conversation; with ``since_version`` also what changed since (a first page of
    item changes, continued by ``GET .../items?since_version=``)."""
    async with store.db.read() as conn:
        head = await store.conversations.head(conn, conversation_id)
        if s.none_match(if_none_match, head.version):
            return Response(status_code=304, headers={"ETag": s.etag(head.version)})
        if since_version is None:
            return _json(s.conversation_json(head), head.version)
        items = await store.conversations.items(
            conn,
            conversation_id,
            limit=limit,
            descending=order == "desc",
            since_version=since_version,
            head=head,
        )
    return _json(s.delta_json(head, since_version, items), head.version)


@router.post("/{conversation_id}", openapi_extra=_documented(KEY_HEADER, "If-Match"))
@router.patch("/{conversation_id}", openapi_extra=_documented(KEY_HEADER, "If-Match"))
async def update_conversation(
    conversation_id: Id, body: s.UpdateConversationBody, w: WriteDep
) -> Response:
    """POST is OpenAI's update (the SDK's ``conversations.update``); PATCH is Keel's older
    spelling of the same thing."""
    pre = s.precondition(w.if_match, body.expected_version)
    sent = body.model_fields_set
    changes = FieldChanges(
        title=body.title,
        metadata=body.metadata,
        set_title="title" in sent,
        set_metadata="metadata" in sent,
    )

    async def effect(conn: AsyncConnection, dry: bool) -> StoredResponse:
        c = await w.store.conversations.update(conn, conversation_id, changes, pre, dry_run=dry)
        return json_stored(200, s.conversation_json(c), {"etag": s.etag(c.version)})

    return await _mutate(w, effect)


@router.delete("/{conversation_id}", openapi_extra=_documented(KEY_HEADER, "If-Match"))
async def delete_conversation(
    conversation_id: Id, w: WriteDep, body: s.DeleteConversationBody | None = None
) -> Response:
    pre = s.precondition(w.if_match, body.expected_version if body else None)

    async def effect(conn: AsyncConnection, dry: bool) -> StoredResponse:
        c = await w.store.conversations.delete(conn, conversation_id, pre, dry_run=dry)
        return json_stored(200, s.deleted_json(c), {"etag": s.etag(c.version)})

    return await _mutate(w, effect)


@router.post(
    "/{conversation_id}/items", status_code=201, openapi_extra=_documented(KEY_HEADER, "If-Match")
)
async def create_items(conversation_id: Id, body: s.CreateItemsBody, w: WriteDep) -> Response:
    """Append items: one version, one transaction. ``include`` is accepted and ignored (it
    asks for data only non-message items have)."""
    pre = s.precondition(w.if_match, body.expected_version)
    messages = s.new_messages(body.items)
    w.store.conversations.validate_messages(messages)  # before any transaction

    async def effect(conn: AsyncConnection, dry: bool) -> StoredResponse:
        added = await w.store.conversations.append(
            conn, conversation_id, messages, pre, dry_run=dry
        )
        return json_stored(
            200 if dry else 201,
            s.list_json([s.item_json(m) for m in added.messages], False),
            {"etag": s.etag(added.conversation.version)},
        )

    return await _mutate(w, effect)


@router.get("/{conversation_id}/items")
async def list_items(
    conversation_id: Id,
    store: StoreDep,
    limit: int = 20,
    order: Order = "desc",
    after: str | None = None,
    since_version: Annotated[Version | None, Query()] = None,
) -> Response:
    """A page of items, read as a page from the database; ``since_version`` makes it a
    delta (added items and tombstones of deleted ones)."""
    async with store.db.read() as conn:
        page = await store.conversations.items(
            conn,
            conversation_id,
            limit=limit,
            descending=order == "desc",
            after=s.page_after(after, "an item of this conversation"),
            since_version=since_version,
        )
    return _json(s.items_json(page), page.conversation.version)


@router.get("/{conversation_id}/items/{item_id}")
async def get_item(conversation_id: Id, item_id: Id, store: StoreDep) -> Response:
    async with store.db.read() as conn:
        item = await store.conversations.item(conn, conversation_id, item_id)
    return Response(s.dumps(s.item_json(item)), media_type=JSON)


@router.delete(
    "/{conversation_id}/items/{item_id}", openapi_extra=_documented(KEY_HEADER, "If-Match")
)
async def delete_item(
    conversation_id: Id,
    item_id: Id,
    w: WriteDep,
    body: s.DeleteConversationBody | None = None,
) -> Response:
    """Delete an item (a tombstone stays for delta sync); answers the conversation, as
    OpenAI's API does. A precondition is optional, as for appends."""
    pre = s.precondition(w.if_match, body.expected_version if body else None)

    async def effect(conn: AsyncConnection, dry: bool) -> StoredResponse:
        c = await w.store.conversations.delete_item(
            conn, conversation_id, item_id, pre, dry_run=dry
        )
        return json_stored(200, s.conversation_json(c), {"etag": s.etag(c.version)})

    return await _mutate(w, effect)


@router.post(
    "/{conversation_id}/messages",
    status_code=201,
    openapi_extra=_documented(KEY_HEADER, "If-Match"),
)
async def append_messages(conversation_id: Id, body: s.AppendMessagesBody, w: WriteDep) -> Response:
    pre = s.precondition(w.if_match, body.expected_version)
    messages = [NewMessage(m.role, m.content) for m in body.messages]
    w.store.conversations.validate_messages(messages)  # before any transaction

    async def effect(conn: AsyncConnection, dry: bool) -> StoredResponse:
        added = await w.store.conversations.append(
            conn, conversation_id, messages, pre, dry_run=dry
        )
        return json_stored(
            200 if dry else 201,
            s.appended_json(added),
            {"etag": s.etag(added.conversation.version)},
        )

    return await _mutate(w, effect)


@router.post("/{conversation_id}/verify")
async def verify_conversation(conversation_id: Id, store: StoreDep) -> Response:
    """Integrity report: every checksum and the seq sequence; 200 even when corrupted."""
    async with store.db.read() as conn:
        report = await store.conversations.verify(conn, conversation_id)
    return _json(s.report_json(report), report.version)
