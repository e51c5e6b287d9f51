"""Message checksums: SHA-256 over a canonical encoding of what a message *is*.

The encoding is JSON with sorted keys, no whitespace and UTF-8 (``ensure_ascii=False``), over
``{conversation_id, seq, role, content}``, where ``content`` is the text, or the list of
``{type, text}`` parts for an item stored with parts (so rows written before parts existed keep
their checksums). Binding the conversation id and seq means a row moved
to another conversation or position fails its check as surely as edited content does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any


def canonical_json(value: Any) -> bytes:
    """The one canonical JSON encoding used for checksums and request fingerprints."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def message_checksum(
    conversation_id: str,
    seq: int,
    role: str,
    content: str,
    parts: Sequence[tuple[str, str]] | None = None,
) -> str:
    body: Any = content if parts is None else [{"type": t, "text": x} for t, x in parts]
    payload = {"content": body, "conversation_id": conversation_id, "role": role, "seq": seq}
    return hashlib.sha256(canonical_json(payload)).hexdigest()
