"""What a chat turn leaves behind: the conversation append and the idempotency record.

Both happen only after the answer is complete, in one write transaction: the new user
message(s), the assistant reply (one version bump) and the stored response for the
``Idempotency-Key``. A failed, cancelled or truncated request writes nothing and releases its
key so the client can retry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import ValidationFailed
from app.store.conversation_models import NewMessage
from app.store.conversations import ConversationService
from app.store.database import Database
from app.store.idempotency import Idempotency, Lease, StoredResponse

log = logging.getLogger("keel.chat.records")

MAX_STORED_STREAM_BYTES = 8 * 1024 * 1024  # an answer larger than this is not replayable


@dataclass
class ChatRecords:
    db: Database
    conversations: ConversationService
    idempotency: Idempotency

    async def check_conversation(self, conversation_id: str) -> None:
        """Fail before spending an upstream call on a conversation that does not exist."""
        async with self.db.read() as conn:
            await self.conversations.head(conn, conversation_id)

    async def record(
        self,
        lease: Lease,
        *,
        conversation_id: str | None,
        new_turns: Sequence[NewMessage],
        reply: str | None,
        stored: StoredResponse,
    ) -> None:
        """The conversation append and the key's response, in one write transaction."""
        if conversation_id is None and not lease.keyed:
            return

        async def append(conn: AsyncConnection) -> StoredResponse:
            if conversation_id is not None:
                turns = [*new_turns, NewMessage("assistant", reply or "")]
                await self.conversations.append(conn, conversation_id, turns)
            return stored

        await lease.write(append)


def new_user_turns(messages: Sequence[dict[str, Any]]) -> list[NewMessage]:
    """The trailing user messages: what this request adds to a conversation that already
    holds the history before them."""
    turns: list[NewMessage] = []
    for message in reversed(messages):
        if message.get("role") != "user":
            break
        turns.append(NewMessage("user", _text(message.get("content"))))
    if not turns:
        raise ValidationFailed(
            "With conversation_id, messages must end with at least one user message.",
            extra={"errors": [{"field": "body.messages", "message": "must end with a user turn"}]},
        )
    return list(reversed(turns))


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multi-part content: keep its text parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def completion_text(body: bytes) -> str:
    try:
        data = json.loads(body)
        return str(data["choices"][0]["message"].get("content") or "")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""


class StreamTranscript:
    """Collects the relayed events (for replay) and the assistant's text (for the record)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.raw: list[bytes] = []
        self.size = 0

    def add(self, event: bytes) -> None:
        if self.size <= MAX_STORED_STREAM_BYTES:
            self.raw.append(event)
            self.size += len(event)
        if not event.startswith(b"data: {"):
            return
        try:
            choice = json.loads(event[6:])["choices"][0]
            piece = choice.get("delta", {}).get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return
        if isinstance(piece, str):
            self.parts.append(piece)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def replayable(self) -> bool:
        return self.size <= MAX_STORED_STREAM_BYTES

    def body(self) -> bytes:
        return b"".join(self.raw)
