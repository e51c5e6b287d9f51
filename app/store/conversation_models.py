"""What the conversation service takes and returns: plain frozen records, no SQL, no HTTP.

Versions: a conversation is created at version 1 and every mutation (update, DELETE, one append
of any number of messages, one item deletion) adds exactly 1. Each message (an *item* in the
Conversations API) remembers the version that added it, and the one that deleted it, and
carries a ``seq`` that starts at 1 and has no gaps, which is what delta sync reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
"""Roles a stored message may have (the OpenAI chat roles)."""


TEXT_PART_TYPES = frozenset({"input_text", "output_text"})


@dataclass(frozen=True, slots=True)
class TextPart:
    """One ``{type, text}`` content part (``input_text`` or ``output_text``)."""

    type: str
    text: str


def default_part_type(role: str) -> str:
    """The part type a plain string stands for: what the model wrote is ``output_text``."""
    return "output_text" if role == "assistant" else "input_text"


def new_message(role: str, parts: Sequence[TextPart]) -> NewMessage:
    """An item from its parts, stored as plain text when one part of the role's type says it
    all (so it reads back, and checksums, exactly like a plain-string message)."""
    if len(parts) == 1 and parts[0].type == default_part_type(role):
        return NewMessage(role, parts[0].text)
    return NewMessage(role, "".join(p.text for p in parts), tuple(parts))


@dataclass(frozen=True, slots=True)
class NewMessage:
    role: str
    content: str
    # Set when the item's content parts are more than the text (several, or another type).
    parts: tuple[TextPart, ...] | None = None


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    seq: int
    role: str
    content: str  # the text; the concatenated parts when ``parts`` is set
    created_at: datetime
    parts: tuple[TextPart, ...] | None = None
    version: int = 0  # the conversation version that added it
    deleted_version: int | None = None  # set on a tombstone

    @property
    def deleted(self) -> bool:
        return self.deleted_version is not None

    def content_parts(self) -> list[TextPart]:
        if self.parts is not None:
            return list(self.parts)
        return [TextPart(default_part_type(self.role), self.content)]


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation's head: everything but its messages."""

    id: str
    title: str | None
    metadata: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime
    message_count: int
    fields_version: int  # the version at which title/metadata last changed (delta sync)


@dataclass(frozen=True, slots=True)
class Appended:
    """The result of one append: the new head and only the messages it added."""

    conversation: Conversation
    messages: list[Message]


@dataclass(frozen=True, slots=True)
class ItemPage:
    """One page of a conversation's items, in the order asked for.

    With ``since_version`` set (delta sync) it holds the items added after that version and
    tombstones (``Message.deleted``) for those deleted after it; otherwise live items only.
    """

    conversation: Conversation
    items: list[Message]
    has_more: bool
    since_version: int | None = None


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Conversation]
    has_more: bool


@dataclass(frozen=True, slots=True)
class IntegrityReport:
    conversation_id: str
    version: int
    messages_checked: int
    corrupted: list[tuple[str, int]]  # (message id, seq)
    missing_seqs: list[int]

    @property
    def ok(self) -> bool:
        return not self.corrupted and not self.missing_seqs


@dataclass(frozen=True, slots=True)
class Precondition:
    """The versions a write may apply to.

    ``if_match`` comes from the ``If-Match`` header: a set of acceptable versions, or ``ANY``
    for ``*`` (any existing conversation). A stale ``If-Match`` is 412. ``expected_version``
    comes from the body; stale is 409. Both may be given; both must hold.
    """

    if_match: frozenset[int] | None = None
    if_match_any: bool = False
    expected_version: int | None = None

    @property
    def given(self) -> bool:
        return self.if_match is not None or self.if_match_any or self.expected_version is not None

    def allowed_versions(self) -> frozenset[int] | None:
        """Versions the write may apply to, for the compare-and-set; None means any."""
        sets: list[frozenset[int]] = []
        if self.if_match is not None:
            sets.append(self.if_match)
        if self.expected_version is not None:
            sets.append(frozenset({self.expected_version}))
        if not sets:
            return None
        out = sets[0]
        for s in sets[1:]:
            out &= s
        return out

    @classmethod
    def of(
        cls,
        if_match: Iterable[int] | None = None,
        *,
        expected_version: int | None = None,
        any_version: bool = False,
    ) -> Precondition:
        return cls(
            frozenset(if_match) if if_match is not None else None, any_version, expected_version
        )


@dataclass(frozen=True, slots=True)
class FieldChanges:
    """A PATCH: only the fields present are changed (``title`` may be set to None)."""

    title: str | None = None
    metadata: dict[str, Any] | None = None
    set_title: bool = False
    set_metadata: bool = False
