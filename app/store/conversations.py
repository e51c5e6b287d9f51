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

Messages are the items of the Conversations API. Deleting one leaves a tombstone row (same seq,
``deleted_version`` set), so seqs stay gap-free and delta sync can report the deletion.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import (
    BadRequest,
    NotFound,
    PreconditionFailed,
    PreconditionRequired,
    VersionConflict,
)
from app.observability.metrics import Metrics
from app.observability.timeline import Timeline
from app.settings import StoreSettings
from app.store import conversation_repository as repo
from app.store import limits
from app.store.conversation_models import (
    Appended,
    Conversation,
    FieldChanges,
    IntegrityReport,
    ItemPage,
    Message,
    NewMessage,
    Page,
    Precondition,
)
from app.store.integrity import Integrity, intact
from app.store.timeutil import utcnow


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
        self.integrity = Integrity(metrics, timeline)

    # -- validation (pure; the chat endpoint calls validate_messages before claiming a key) --

    def validate_messages(self, messages: Sequence[NewMessage]) -> None:
        limits.check_messages(self.settings, messages)

    def _validate_fields(self, title: str | None, metadata: dict[str, Any] | None) -> None:
        limits.check_fields(self.settings, title, metadata)

    def _check_limit(self, limit: int) -> None:
        limits.check_page_limit(self.settings, limit)

    # -- mutations --

    async def create(
        self,
        conn: AsyncConnection,
        *,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        messages: Sequence[NewMessage] = (),
        dry_run: bool = False,
    ) -> Appended:
        """A new conversation at version 1, with its first items (seq 1..n) if given."""
        metadata = {} if metadata is None else metadata
        self._validate_fields(title, metadata)
        if messages:
            self.validate_messages(messages)
        now = self.clock()
        conversation = Conversation(
            str(uuid.uuid4()), title, metadata, 1, now, now, len(messages), 1
        )
        added = _new_items(messages, first_seq=1, version=1, now=now)
        if not dry_run:
            await repo.insert_conversation(
                conn,
                id=conversation.id,
                title=title,
                metadata=metadata,
                now=now,
                n_messages=len(messages),
            )
            if added:
                await repo.insert_messages(conn, conversation.id, added)
        return Appended(conversation, added)

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
        added = _new_items(messages, first_seq=first_seq, version=head.version, now=now)
        if not dry_run:
            await repo.insert_messages(conn, conversation_id, added)
        return Appended(head, added)

    async def delete_item(
        self,
        conn: AsyncConnection,
        conversation_id: str,
        item_id: str,
        precondition: Precondition | None = None,
        *,
        dry_run: bool = False,
    ) -> Conversation:
        """Delete one item (one version bump) leaving a tombstone; a precondition is optional,
        as for appends (deleting an item overwrites nobody's change)."""
        precondition = precondition or Precondition()
        cur = await self._current(conn, conversation_id, precondition)
        if await repo.item(conn, conversation_id, item_id) is None:
            raise NotFound("No such item in this conversation.")
        now = self.clock()
        if dry_run:
            return _replace(cur, version=cur.version + 1, updated_at=now)
        head = await repo.bump(
            conn, conversation_id, allowed=precondition.allowed_versions(), now=now
        )
        if head is None:
            head = await self._refused(conn, conversation_id, precondition)
        # A concurrent delete of the same item may have committed since the check above.
        if not await repo.delete_item(
            conn, conversation_id, item_id, version=head.version, now=now
        ):
            raise NotFound("No such item in this conversation.")
        return head

    # -- reads --

    async def head(self, conn: AsyncConnection, conversation_id: str) -> Conversation:
        found = await repo.head(conn, conversation_id)
        if found is None:
            raise NotFound("No such conversation.")
        return found

    async def item(self, conn: AsyncConnection, conversation_id: str, item_id: str) -> Message:
        """One live item, its checksum verified."""
        await self.head(conn, conversation_id)
        stored = await repo.item(conn, conversation_id, item_id)
        if stored is None:
            raise NotFound("No such item in this conversation.")
        return self.integrity.verified(conversation_id, [stored])[0]

    async def items(
        self,
        conn: AsyncConnection,
        conversation_id: str,
        *,
        limit: int,
        descending: bool = True,
        after: str | None = None,
        since_version: int | None = None,
        head: Conversation | None = None,
    ) -> ItemPage:
        """A page of items (``after`` is the id of the last item of the previous page), or with
        ``since_version`` the changes after that version, tombstones included. Reads at most
        ``limit + 1`` rows, every one's checksum verified."""
        self._check_limit(limit)
        head = head if head is not None else await self.head(conn, conversation_id)
        if since_version is not None and since_version > head.version:
            raise VersionConflict(
                f"since_version {since_version} is ahead of the conversation's version.",
                current_version=head.version,
            )
        after_seq = None
        if after is not None:
            after_seq = await repo.item_seq(conn, conversation_id, after)
            if after_seq is None:
                raise BadRequest("after is not the id of an item of this conversation.")
        stored = await repo.items_page(
            conn,
            conversation_id,
            max_seq=head.message_count,
            limit=limit + 1,
            descending=descending,
            after_seq=after_seq,
            since_version=since_version,
        )
        items = self.integrity.verified(conversation_id, stored[:limit])
        return ItemPage(head, items, len(stored) > limit, since_version)

    async def page(self, conn: AsyncConnection, *, limit: int, after: str | None = None) -> Page:
        """Live conversations, newest first; ``after`` is the last id of the previous page."""
        self._check_limit(limit)
        cursor = None
        if after is not None:
            created = await repo.created_at_of(conn, after)
            if created is None:
                raise BadRequest("after is not the id of a conversation.")
            cursor = (created, after)
        items = await repo.page(conn, limit=limit + 1, after=cursor)
        return Page(items[:limit], len(items) > limit)

    async def verify(self, conn: AsyncConnection, conversation_id: str) -> IntegrityReport:
        """Check every item's checksum (tombstones too) and that seqs run 1..n with no gap;
        never raises for corruption."""
        head = await self.head(conn, conversation_id)
        stored = await repo.messages(conn, conversation_id, max_seq=head.message_count)
        bad = [(m.id, m.seq) for m, checksum in stored if not intact(conversation_id, m, checksum)]
        seqs = {m.seq for m, _ in stored}
        missing = [s for s in range(1, head.message_count + 1) if s not in seqs][:1000]
        self.integrity.report(conversation_id, bad, missing)
        return IntegrityReport(conversation_id, head.version, len(stored), bad, missing)

    # -- helpers --

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


def _new_items(
    messages: Sequence[NewMessage], *, first_seq: int, version: int, now: datetime
) -> list[Message]:
    return [
        Message(str(uuid.uuid4()), first_seq + i, m.role, m.content, now, m.parts, version)
        for i, m in enumerate(messages)
    ]


def _replace(c: Conversation, **changes: Any) -> Conversation:
    return replace(c, **changes)
