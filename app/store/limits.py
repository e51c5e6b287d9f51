"""The store's size limits (``[store]`` settings): each refusal names the limit it hit.

Pure checks, run before any transaction: the chat endpoint checks its turns before it claims
an idempotency key or calls a provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.errors import PayloadTooLarge, ValidationFailed
from app.settings import StoreSettings
from app.store.checksums import canonical_json
from app.store.conversation_models import ROLES, TEXT_PART_TYPES, NewMessage


def check_messages(settings: StoreSettings, messages: Sequence[NewMessage]) -> None:
    if not messages:
        raise ValidationFailed("At least one message is required.")
    limit = settings.max_messages_per_append
    if len(messages) > limit:
        raise _too_large(
            f"{len(messages)} messages in one append", "max_messages_per_append", limit
        )
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise ValidationFailed(f"messages[{i}].role must be one of {sorted(ROLES)}.")
        if any(p.type not in TEXT_PART_TYPES for p in m.parts or ()):
            raise ValidationFailed(
                f"messages[{i}].content parts must be of type {sorted(TEXT_PART_TYPES)}."
            )
        if len(m.content) > settings.max_message_chars:
            raise _too_large(
                f"messages[{i}].content has {len(m.content)} characters",
                "max_message_chars",
                settings.max_message_chars,
            )


def check_fields(settings: StoreSettings, title: str | None, metadata: Any) -> None:
    if title is not None and len(title) > settings.max_title_chars:
        raise ValidationFailed(
            f"title has {len(title)} characters; the limit (max_title_chars) is "
            f"{settings.max_title_chars}.",
            extra={"limit": settings.max_title_chars, "limit_name": "max_title_chars"},
        )
    if metadata is not None:
        size = len(canonical_json(metadata))
        if size > settings.max_metadata_bytes:
            raise _too_large(
                f"metadata is {size} bytes as JSON",
                "max_metadata_bytes",
                settings.max_metadata_bytes,
            )


def check_page_limit(settings: StoreSettings, limit: int) -> None:
    if not 1 <= limit <= settings.page_limit_max:
        raise ValidationFailed(
            f"limit must be between 1 and {settings.page_limit_max}.",
            extra={"limit": settings.page_limit_max, "limit_name": "page_limit_max"},
        )


def _too_large(what: str, name: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{what}; the limit ({name}) is {limit}.", extra={"limit": limit, "limit_name": name}
    )
