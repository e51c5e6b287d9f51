"""The conversation service: versions, preconditions, limits, checksums and delta sync.

Every method takes the connection of a transaction its caller owns (``Database.write()`` for
mutations, ``Database.read()`` for reads and dry runs), so a mutation can commit together with
an idempotency key or, for the chat endpoint, with a completion::

    async with db.write() as conn:
        appended = await conversations.append(conn, conversation_id, [
            NewMessage("user", prompt), NewMessage("assistant", answer),
        ])
        await idempotency.complete(conn, claim, response)

``dry_run=True`` takes the same decisions (404, 412, 409, 428, limits) against the current row
and returns the would-be result without writing anything.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import (
    DataCorrupted,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    PreconditionRequired,
    ValidationFailed,
    VersionConflict,
)
from app.observability.metrics import Metrics
from app.observability.timeline import Timeline
from app.settings import StoreSettings
from app.store import conversation_repository as repo
from app.store.checksums import canonical_json, message_checksum
from app.store.conversation_models import (
    ROLES,
    Appended,
    Conversation,
    ConversationWithMessages,
    Delta,
    FieldChanges,
    IntegrityReport,
    Message,
    NewMessage,
    Page,
    Precondition,
)
from app.store.timeutil import utcnow

log = logging.getLogger("keel.store")


class ConversationService:
    def __init__(
        self,
        settings: StoreSettings,
        metrics: Metrics,
        timeline: Timeline | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.timeline = timeline
        self.clock = clock

    # -- validation (pure; the chat endpoint calls validate_messages before claiming a key) --

    def validate_messages(self, messages: Sequence[NewMessage]) -> None:
        if not messages:
            raise ValidationFailed("At least one message is required.")
        limit = self.settings.max_messages_per_append
        if len(messages) > limit:
            raise _too_large(
                f"{len(messages)} messages in one append", "max_messages_per_append", limit
            )
        for i, m in enumerate(messages):
            if m.role not in ROLES:
                raise ValidationFailed(f"messages[{i}].role must be one of {sorted(ROLES)}.")
            if len(m.content) > self.settings.max_message_chars:
                raise _too_large(
                    f"messages[{i}].content has {len(m.content)} characters",
                    "max_message_chars",
                    self.settings.max_message_chars,
                )

    def _validate_fields(self, title: str | None, metadata: dict[str, Any] | None) -> None:
        if title is not None and len(title) > self.settings.max_title_chars:
            raise ValidationFailed(
                f"title has {len(title)} characters; the limit (max_title_chars) is "
                f"{self.settings.max_title_chars}.",
                extra={"limit": self.settings.max_title_chars, "limit_name": "max_title_chars"},
            )
        if metadata is not None:
            size = len(canonical_json(metadata))
            if size > self.settings.max_metadata_bytes:
                raise _too_large(
                    f"metadata is {size} bytes as JSON",
                    "max_metadata_bytes",
                    self.settings.max_metadata_bytes,
                )

    # -- mutations --

    async def create(
        self,
        conn: AsyncConnection,
        *,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> ConversationWithMessages:
        metadata = {} if metadata is None else metadata
        self._validate_fields(title, metadata)
        now = self.clock()
        conversation = Conversation(str(uuid.uuid4()), title, metadata, 1, now, now, 0, 1)
        if not dry_run:
            await repo.insert_conversation(
                conn, id=conversation.id, title=title, metadata=metadata, now=now
            )
        return ConversationWithMessages(conversation, [])

    async def update(
        self,
        conn: AsyncConnection,
        conversation_id: str,
        changes: FieldChanges,
        precondition: Precondition,
        *,
        dry_run: bool = False,
    ) -> Conversation:
        """PATCH: title and/or metadata (replaced whole). Requires a precondition (428)."""
        await self._require(conn, conversation_id, precondition)
        self._validate_fields(changes.title, changes.metadata if changes.set_metadata else None)
        fields: dict[str, Any] = {}
        if changes.set_title:
            fields["title"] = changes.title
        if changes.set_metadata:
            fields["metadata"] = changes.metadata if changes.metadata is not None else {}
        now = self.clock()
        if dry_run:
            cur = await self._current(conn, conversation_id, precondition)
            return _replace(
                cur,
                version=cur.version + 1,
                updated_at=now,
                fields_version=cur.version + 1 if fields else cur.fields_version,
                **fields,
            )
        new = await repo.bump(
            conn, conversation_id, allowed=precondition.allowed_versions(), now=now, fields=fields
        )
        return new if new is not None else await self._refused(conn, conversation_id, precondition)

    async def delete(
        self,
        conn: AsyncConnection,
        conversation_id: str,
        precondition: Precondition,
        *,
        dry_run: bool = False,
    ) -> Conversation:
        """Soft delete (one version bump); afterwards the conversation is 404 everywhere."""
        await self._require(conn, conversation_id, precondition)
        now = self.clock()
        if dry_run:
            cur = await self._current(conn, conversation_id, precondition)
            return _replace(cur, version=cur.version + 1, updated_at=now)
        new = await repo.bump(
            conn, conversation_id, allowed=precondition.allowed_versions(), now=now, delete=True
        )
        return new if new is not None else await self._refused(conn, conversation_id, precondition)

    async def append(
        self,
        conn: AsyncConnection,
        conversation_id: str,
        messages: Sequence[NewMessage],
        precondition: Precondition | None = None,
        *,
        dry_run: bool = False,
    ) -> Appended:
        """Append messages atomically: one version bump, consecutive seqs, one checksum each.

        No precondition is needed; when one is given it must hold. Runs inside the caller's
        transaction, so a chat completion commits its user and assistant turns together.
        """
        self.validate_messages(messages)
        precondition = precondition or Precondition()
        now = self.clock()
        head: Conversation | None
        if dry_run:
            cur = await self._current(conn, conversation_id, precondition)
            head = _replace(
                cur,
                version=cur.version + 1,
                updated_at=now,
                message_count=cur.message_count + len(messages),
            )
        else:
            head = await repo.bump(
                conn,
                conversation_id,
                allowed=precondition.allowed_versions(),
                now=now,
                n_messages=len(messages),
            )
            if head is None:
                head = await self._refused(conn, conversation_id, precondition)
        first_seq = head.message_count - len(messages) + 1
        added = [
            Message(str(uuid.uuid4()), first_seq + i, m.role, m.content, now)
            for i, m in enumerate(messages)
        ]
        if not dry_run:
            await repo.insert_messages(
                conn,
                [
                    {
                        "id": m.id,
                        "conversation_id": conversation_id,
                        "seq": m.seq,
                        "role": m.role,
                        "content": m.content,
                        "created_at": now,
                        "version": head.version,
                        "checksum": message_checksum(conversation_id, m.seq, m.role, m.content),
                    }
                    for m in added
                ],
            )
        return Appended(head, added)

    # -- reads --

    async def head(self, conn: AsyncConnection, conversation_id: str) -> Conversation:
        found = await repo.head(conn, conversation_id)
        if found is None:
            raise NotFound("No such conversation.")
        return found

    async def get(
        self, conn: AsyncConnection, conversation_id: str, *, head: Conversation | None = None
    ) -> ConversationWithMessages:
        """The whole conversation, every message verified (500 data_corrupted otherwise)."""
        head = head if head is not None else await self.head(conn, conversation_id)
        stored = await repo.messages(conn, conversation_id, max_seq=head.message_count)
        return ConversationWithMessages(head, self._verified(head, stored, first_seq=1))

    async def delta(
        self,
        conn: AsyncConnection,
        conversation_id: str,
        since_version: int,
        *,
        head: Conversation | None = None,
    ) -> Delta:
        """What changed after ``since_version``: fields if they changed, appended messages."""
        head = head if head is not None else await self.head(conn, conversation_id)
        if since_version > head.version:
            raise VersionConflict(
                f"since_version {since_version} is ahead of the conversation's version.",
                current_version=head.version,
            )
        stored = await repo.messages(
            conn, conversation_id, after_version=since_version, max_seq=head.message_count
        )
        first = head.message_count - len(stored) + 1
        return Delta(
            head,
            since_version,
            head.fields_version > since_version,
            self._verified(head, stored, first_seq=first),
        )

    async def page(
        self, conn: AsyncConnection, *, limit: int, cursor: tuple[datetime, str] | None = None
    ) -> Page:
        if not 1 <= limit <= self.settings.page_limit_max:
            raise ValidationFailed(
                f"limit must be between 1 and {self.settings.page_limit_max}.",
                extra={"limit": self.settings.page_limit_max, "limit_name": "page_limit_max"},
            )
        items = await repo.page(conn, limit=limit + 1, after=cursor)
        more = len(items) > limit
        items = items[:limit]
        return Page(items, (items[-1].created_at, items[-1].id) if more else None)

    async def verify(self, conn: AsyncConnection, conversation_id: str) -> IntegrityReport:
        """Check every message's checksum and that seqs run 1..n with no gap; never raises."""
        head = await self.head(conn, conversation_id)
        stored = await repo.messages(conn, conversation_id, max_seq=head.message_count)
        bad = [(m.id, m.seq) for m, checksum in stored if not _intact(conversation_id, m, checksum)]
        seqs = {m.seq for m, _ in stored}
        missing = [s for s in range(1, head.message_count + 1) if s not in seqs][:1000]
        self._report_corruption(conversation_id, bad, missing)
        return IntegrityReport(conversation_id, head.version, len(stored), bad, missing)

    # -- helpers --

    def _verified(
        self, head: Conversation, stored: list[repo.StoredMessage], *, first_seq: int
    ) -> list[Message]:
        """Messages whose checksums hold and whose seqs run on from ``first_seq``, else 500."""
        bad = [(m.id, m.seq) for m, checksum in stored if not _intact(head.id, m, checksum)]
        seqs = [m.seq for m, _ in stored]
        expected = range(first_seq, head.message_count + 1)
        missing = [] if seqs == list(expected) else sorted(set(expected) - set(seqs))[:1000]
        if bad or missing:
            self._report_corruption(head.id, bad, missing)
            raise DataCorrupted(
                "Stored messages of this conversation failed their integrity "
                "check, so none are returned. POST .../verify reports which."
            )
        return [m for m, _ in stored]

    def _report_corruption(
        self, conversation_id: str, bad: list[tuple[str, int]], missing: list[int]
    ) -> None:
        if not bad and not missing:
            return
        self.metrics.data_corruption.labels(kind="message").inc(max(1, len(bad)))
        log.error(
            "conversation failed its integrity check",
            extra={
                "conversation_id": conversation_id,
                "corrupted_message_ids": [i for i, _ in bad],
                "corrupted_seqs": [s for _, s in bad],
                "missing_seqs": missing[:50],
            },
        )
        if self.timeline is not None:
            self.timeline.record(
                f"conversation:{conversation_id}",
                "ok",
                "corrupted",
                "message_checksum_mismatch" if bad else "message_missing",
            )

    async def _require(
        self, conn: AsyncConnection, conversation_id: str, precondition: Precondition
    ) -> None:
        if not precondition.given:
            head = await self.head(conn, conversation_id)
            raise PreconditionRequired(
                'Send If-Match: "<version>" or a body expected_version.',
                current_version=head.version,
            )

    async def _current(
        self, conn: AsyncConnection, conversation_id: str, precondition: Precondition
    ) -> Conversation:
        head = await self.head(conn, conversation_id)
        _check(precondition, head.version)
        return head

    async def _refused(
        self, conn: AsyncConnection, conversation_id: str, precondition: Precondition
    ) -> Conversation:
        """The compare-and-set matched nothing: say why (404, 412 or 409)."""
        head = await self.head(conn, conversation_id)
        _check(precondition, head.version)
        raise VersionConflict(
            "The conversation changed concurrently.", current_version=head.version
        )


def _check(precondition: Precondition, current: int) -> None:
    if precondition.if_match is not None and current not in precondition.if_match:
        raise PreconditionFailed(
            "If-Match does not match the conversation's current version.", current_version=current
        )
    if precondition.expected_version is not None and precondition.expected_version != current:
        raise VersionConflict(
            "expected_version is not the conversation's current version.", current_version=current
        )


def _intact(conversation_id: str, m: Message, checksum: str) -> bool:
    return message_checksum(conversation_id, m.seq, m.role, m.content) == checksum


def _too_large(what: str, name: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{what}; the limit ({name}) is {limit}.", extra={"limit": limit, "limit_name": name}
    )


def _replace(c: Conversation, **changes: Any) -> Conversation:
    return replace(c, **changes)
