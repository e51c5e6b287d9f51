"""Request bodies, header parsing and JSON rendering for ``/v1/conversations``.

Representations (DESIGN §3):

- conversation: ``{id, title, metadata, version, created_at, updated_at, messages: [...]}``
- summary (list, PATCH, DELETE): the same without ``messages``, plus ``message_count``
- message: ``{id, seq, role, content, created_at}``
- delta: ``{id, version, from_version, updated_at, changed: {title?, metadata?}, messages}``
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.api.values import JsonObject, Text, Version, valid_text
from app.errors import BadRequest
from app.store.conversation_models import (
    Appended,
    Conversation,
    Delta,
    IntegrityReport,
    Message,
    Page,
    Precondition,
)
from app.store.timeutil import as_utc


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateConversationBody(_Body):
    title: Text | None = None
    metadata: JsonObject = Field(default_factory=dict)


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
            versions.add(int(strong.group(1)))
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


# -- cursors --


def encode_cursor(cursor: tuple[datetime, str] | None) -> str | None:
    if cursor is None:
        return None
    raw = json.dumps([cursor[0].isoformat(), cursor[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_MAX_CURSOR_CHARS = 256


def decode_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    if cursor is None:
        return None
    try:
        # Bounded before decoding: a crafted cursor could nest JSON deep enough to recurse.
        if len(cursor) > _MAX_CURSOR_CHARS:
            raise ValueError("cursor length")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, cid = json.loads(raw)
        if not isinstance(cid, str) or not isinstance(created, str):
            raise ValueError("cursor fields")
        # Converting an extreme date (year 1 or 9999 with an offset) to UTC overflows.
        return as_utc(datetime.fromisoformat(created)), valid_text(cid)
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error):
        raise BadRequest("cursor is not a cursor this API returned.") from None


# -- rendering --


def message_json(m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "seq": m.seq,
        "role": m.role,
        "content": m.content,
        "created_at": m.created_at.isoformat(),
    }


def summary_json(c: Conversation) -> dict[str, Any]:
    return {
        "id": c.id,
        "title": c.title,
        "metadata": c.metadata,
        "version": c.version,
        "created_at": c.created_at.isoformat(),
        "updated_at": c.updated_at.isoformat(),
        "message_count": c.message_count,
    }


def conversation_json(c: Conversation, messages: list[Message]) -> dict[str, Any]:
    return {
        "id": c.id,
        "title": c.title,
        "metadata": c.metadata,
        "version": c.version,
        "created_at": c.created_at.isoformat(),
        "updated_at": c.updated_at.isoformat(),
        "messages": [message_json(m) for m in messages],
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


def delta_json(d: Delta) -> dict[str, Any]:
    c = d.conversation
    changed = {"title": c.title, "metadata": c.metadata} if d.fields_changed else {}
    return {
        "id": c.id,
        "version": c.version,
        "from_version": d.from_version,
        "updated_at": c.updated_at.isoformat(),
        "changed": changed,
        "messages": [message_json(m) for m in d.messages],
    }


def deleted_json(c: Conversation) -> dict[str, Any]:
    return {"id": c.id, "version": c.version, "deleted": True}


def page_json(p: Page) -> dict[str, Any]:
    return {"data": [summary_json(c) for c in p.items], "next_cursor": encode_cursor(p.next_cursor)}


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
