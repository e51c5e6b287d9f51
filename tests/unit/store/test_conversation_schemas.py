"""HTTP details of the conversations API: If-Match, If-None-Match, cursors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.api.conversation_schemas import decode_cursor, encode_cursor, none_match, precondition
from app.errors import BadRequest


def test_if_match_parsing() -> None:
    assert precondition(None, None).given is False
    assert precondition('"3"', None).allowed_versions() == {3}
    assert precondition('"3", "5"', None).allowed_versions() == {3, 5}
    assert precondition('W/"3"', None).allowed_versions() == frozenset()  # strong comparison
    star = precondition("*", None)
    assert star.given
    assert star.if_match_any
    assert star.allowed_versions() is None
    assert precondition('"3"', 4).allowed_versions() == frozenset()  # both must hold
    assert precondition(None, 4).allowed_versions() == {4}
    for bad in ("3", "", '"abc', ","):
        with pytest.raises(BadRequest):
            precondition(bad, None)


def test_if_none_match() -> None:
    for header in ('"2"', 'W/"2"', "*", '"1", "2"'):
        assert none_match(header, 2)
    for header in ('"1"', None):
        assert not none_match(header, 2)


def test_cursor_round_trip_and_garbage() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert decode_cursor(encode_cursor((at, "abc"))) == (at, "abc")
    assert encode_cursor(None) is None
    assert decode_cursor(None) is None
    for bad in ("!!", "bm90IGpzb24", encode_cursor((at, "x"))[:-3] + "AAA"):  # type: ignore[index]
        with pytest.raises(BadRequest):
            decode_cursor(bad)
