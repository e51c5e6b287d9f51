"""Message checksums bind content, role, seq and conversation, and are stable."""

from __future__ import annotations

import hashlib

from app.store.checksums import canonical_json, message_checksum


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_checksum_is_sha256_of_the_canonical_encoding() -> None:
    expected = hashlib.sha256(
        b'{"content":"hi","conversation_id":"c1","role":"user","seq":1}'
    ).hexdigest()
    assert message_checksum("c1", 1, "user", "hi") == expected


def test_every_covered_field_changes_the_checksum() -> None:
    base = message_checksum("c1", 1, "user", "hi")
    variants = [
        message_checksum("c2", 1, "user", "hi"),
        message_checksum("c1", 2, "user", "hi"),
        message_checksum("c1", 1, "assistant", "hi"),
        message_checksum("c1", 1, "user", "hi "),
    ]
    assert base not in variants
    assert len(set(variants)) == len(variants)
