"""Request bodies, header parsing and JSON rendering for ``/v1/conversations``.

Representations (DESIGN §3), OpenAI's Conversations API shapes with Keel's extensions:

- conversation: ``{id, object: "conversation", created_at, metadata, title, version,
  updated_at}`` (times in Unix seconds)
- item: ``{id, type: "message", role, content: [{type, text}], status, seq, created_at}``;
  a tombstone (delta sync only): ``{id, type: "message", seq, deleted: true}``
- list: ``{object: "list", data, first_id, last_id, has_more}``
- deleted: ``{id, object: "conversation.deleted", deleted: true, version}``
- legacy ``.../messages`` append: ``{id, version, updated_at, message_count, messages}``
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.errors import BadRequest
from app.store.conversation_models import (
    Appended,
    Conversation,
    IntegrityReport,
    ItemPage,
    Message,
    NewMessage,
    Page,
    Precondition,
    TextPart,
    new_message,
)
from app.values import VERSION_MAX, JsonObject, Text, Version


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPartIn(_Body):
    type: Literal["input_text", "output_text"]
    text: Text
    # OpenAI's output_text parts carry annotations; Keel stores none, so only [] is accepted.
    annotations: list[Any] = Field(default_factory=list, max_length=0)


class ItemIn(_Body):
    """A message item, as the SDK sends it: content is a string or a list of text parts."""

    type: Literal["message"] = "message"
    role: Text = Field(max_length=32)
    content: Text | Annotated[list[TextPartIn], Field(min_length=1)]
    status: Literal["completed"] | None = None


class CreateConversationBody(_Body):
    title: Text | None = None
    metadata: JsonObject | None = None
    items: list[ItemIn] | None = None


class CreateItemsBody(_Body):
    items: list[ItemIn] = Field(min_length=1)
    expected_version: Version | None = None


class UpdateConversationBody(_Body):
    """PATCH: only the fields sent change; ``metadata`` replaces the whole object."""

    title: Text | None = None
    metadata: JsonObject | None = None
    expected_version: Version | None = None


class DeleteConversationBody(_Body):
    expected_version: Version | None = None


class MessageIn(_Body):
    role: Text = Field(max_length=32)
    content: Text


class AppendMessagesBody(_Body):
    messages: list[MessageIn] = Field(min_length=1)
    expected_version: Version | None = None


# -- headers --

_STRONG_TAG = re.compile(r'"(\d{1,18})"')
_ANY_TAG = re.compile(r'(?:W/)?"([^"]*)"')


def etag(version: int) -> str:
    return f'"{version}"'


def precondition(if_match: str | None, expected_version: int | None) -> Precondition:
    """``If-Match`` (strong comparison: weak tags never match) plus a body version."""
    if if_match is None:
        return Precondition.of(None, expected_version=expected_version)
    items = [p.strip() for p in if_match.split(",") if p.strip()]
    if items == ["*"]:
        return Precondition.of(None, expected_version=expected_version, any_version=True)
    versions: set[int] = set()
    for item in items:
        strong = _STRONG_TAG.fullmatch(item)
        if strong:
            version = int(strong.group(1))
            if version <= VERSION_MAX:  # a larger tag matches no version and reaches no SQL
                versions.add(version)
        elif not _ANY_TAG.fullmatch(item):
            raise BadRequest('If-Match must be "*" or a list of entity tags like "3".')
    if not items:
        raise BadRequest('If-Match must be "*" or a list of entity tags like "3".')
    return Precondition.of(versions, expected_version=expected_version)


def none_match(if_none_match: str | None, version: int) -> bool:
    """True when ``If-None-Match`` matches the current version (weak comparison) -> 304."""
    if if_none_match is None:
        return False
    for item in (p.strip() for p in if_none_match.split(",")):
        if item == "*" or item.removeprefix("W/") == etag(version):
            return True
    return False


# -- page cursors --


def page_after(after: str | None, what: str) -> str | None:
    """An ``after`` cursor (an id this API returned), refused before it reaches SQL when it
    cannot be one (PostgreSQL rejects a NUL in text with an error, not "no row")."""
    if after is not None and (len(after) > 64 or not after.isprintable()):
        raise BadRequest(f"after is not the id of {what}.")
    return after


# -- items in --


def new_messages(items: list[ItemIn]) -> list[NewMessage]:
    return [
        NewMessage(i.role, i.content)
        if isinstance(i.content, str)
        else new_message(i.role, [TextPart(p.type, p.text) for p in i.content])
        for i in items
    ]


# -- rendering --


def _unix(t: datetime) -> int:
    return int(t.timestamp())


def conversation_json(c: Conversation) -> dict[str, Any]:
    return {
        "id": c.id,
        "object": "conversation",
        "created_at": _unix(c.created_at),
        "metadata": c.metadata,
        "title": c.title,
        "version": c.version,
        "updated_at": _unix(c.updated_at),
    }


def _part_json(p: TextPart) -> dict[str, Any]:
    if p.type == "output_text":
        return {"type": p.type, "text": p.text, "annotations": []}
    return {"type": p.type, "text": p.text}


def item_json(m: Message) -> dict[str, Any]:
    if m.deleted:
        return {"id": m.id, "type": "message", "seq": m.seq, "deleted": True}
    return {
        "id": m.id,
        "type": "message",
        "role": m.role,
        "content": [_part_json(p) for p in m.content_parts()],
        "status": "completed",
        "seq": m.seq,
        "created_at": _unix(m.created_at),
    }


def list_json(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def items_json(page: ItemPage) -> dict[str, Any]:
    out = list_json([item_json(m) for m in page.items], page.has_more)
    if page.since_version is not None:  # delta sync: where this picks up from
        out["version"] = page.conversation.version
        out["from_version"] = page.since_version
    return out


def delta_json(head: Conversation, since_version: int, items: ItemPage) -> dict[str, Any]:
    changed = {"title": head.title, "metadata": head.metadata}
    return {
        **conversation_json(head),
        "from_version": since_version,
        "changed": changed if head.fields_version > since_version else {},
        "items": items_json(items),
    }


def deleted_json(c: Conversation) -> dict[str, Any]:
    return {"id": c.id, "object": "conversation.deleted", "deleted": True, "version": c.version}


def page_json(p: Page) -> dict[str, Any]:
    return list_json([conversation_json(c) for c in p.items], p.has_more)


def message_json(m: Message) -> dict[str, Any]:
    """The legacy ``.../messages`` shape."""
    return {
        "id": m.id,
        "seq": m.seq,
        "role": m.role,
        "content": m.content,
        "created_at": m.created_at.isoformat(),
    }


def appended_json(a: Appended) -> dict[str, Any]:
    c = a.conversation
    return {
        "id": c.id,
        "version": c.version,
        "updated_at": c.updated_at.isoformat(),
        "message_count": c.message_count,
        "messages": [message_json(m) for m in a.messages],
    }


def report_json(r: IntegrityReport) -> dict[str, Any]:
    return {
        "id": r.conversation_id,
        "version": r.version,
        "ok": r.ok,
        "messages_checked": r.messages_checked,
        "corrupted": [{"id": i, "seq": s} for i, s in r.corrupted],
        "missing_seqs": r.missing_seqs,
    }


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
