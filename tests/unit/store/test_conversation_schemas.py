"""HTTP details of the conversations API: If-Match, If-None-Match, item input and output."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from app.api.conversation_schemas import (
    CreateItemsBody,
    item_json,
    new_messages,
    none_match,
    precondition,
)
from app.errors import BadRequest
from app.store.conversation_models import Message, NewMessage, TextPart


def test_if_match_parsing() -> None:
    assert precondition(None, None).given is False
    assert precondition('"3"', None).allowed_versions() == frozenset({3})
    assert precondition('"3", "5"', None).allowed_versions() == frozenset({3, 5})
    assert precondition('W/"3"', None).allowed_versions() == frozenset()  # strong comparison
    star = precondition("*", None)
    assert star.given
    assert star.if_match_any
    assert star.allowed_versions() is None
    assert precondition('"3"', 4).allowed_versions() == frozenset()  # both must hold
    assert precondition(None, 4).allowed_versions() == frozenset({4})
    for bad in ("3", "", '"abc', ","):
        with pytest.raises(BadRequest):
            precondition(bad, None)


def test_if_none_match() -> None:
    for header in ('"2"', 'W/"2"', "*", '"1", "2"'):
        assert none_match(header, 2)
    for missing in ('"1"', None):
        assert not none_match(missing, 2)


def test_items_in_plain_or_parts() -> None:
    body = CreateItemsBody.model_validate(
        {
            "items": [
                {"role": "user", "content": "plain"},
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "a"}],
                },
                {
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "b", "annotations": []}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "c"},
                        {"type": "input_text", "text": "d"},
                    ],
                },
                {"role": "user", "content": [{"type": "output_text", "text": "e"}]},
            ]
        }
    )
    got = new_messages(body.items)
    # One part of the role's own type is stored as plain text (same row, same checksum).
    assert got[:3] == [
        NewMessage("user", "plain"),
        NewMessage("user", "a"),
        NewMessage("assistant", "b"),
    ]
    assert got[3] == NewMessage(
        "user", "cd", (TextPart("input_text", "c"), TextPart("input_text", "d"))
    )
    assert got[4].parts == (TextPart("output_text", "e"),)


@pytest.mark.parametrize(
    "item",
    [
        {"role": "user", "content": []},
        {"role": "user", "content": [{"type": "input_image", "image_url": "x"}]},
        {"type": "function_call", "role": "user", "content": "x"},
        {"role": "user", "content": "x", "id": "msg_1"},
        {
            "role": "assistant",
            "content": [{"type": "output_text", "text": "x", "annotations": [{}]}],
        },
    ],
)
def test_items_refused(item: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CreateItemsBody.model_validate({"items": [item]})


def test_item_rendering() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    plain = Message("i1", 1, "assistant", "hi", at)
    assert item_json(plain) == {
        "id": "i1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "hi", "annotations": []}],
        "status": "completed",
        "seq": 1,
        "created_at": int(at.timestamp()),
    }
    tomb = Message("i2", 2, "user", "x", at, None, 3, 4)
    assert item_json(tomb) == {"id": "i2", "type": "message", "seq": 2, "deleted": True}
