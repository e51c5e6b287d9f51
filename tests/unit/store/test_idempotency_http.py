"""Idempotency-Key format, scopes and request fingerprints."""

from __future__ import annotations

import pytest

from app.api.idempotency import caller_of, parse_key, request_fingerprint, scope_of
from app.errors import BadRequest

BODY = b'{"messages": [{"role": "user", "content": "hi"}], "expected_version": 2}'


@pytest.mark.parametrize(
    "key", ["a", "~" * 255, "550e8400-e29b-41d4-a716-446655440000", "!#$%&'()*+,-./:;<=>?@[]^_`{|}"]
)
def test_visible_ascii_keys_are_accepted(key: str) -> None:
    assert parse_key(key) == key


@pytest.mark.parametrize("key", ["", " ", "a b", "x" * 256, "caf\u00e9", "a\tb", "\x7f"])
def test_other_keys_are_bad_requests(key: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_key(key)
    assert "Idempotency-Key" in err.value.detail


def test_caller_is_a_hash_of_the_token_or_anonymous() -> None:
    assert caller_of(None) == "anonymous"
    assert caller_of("Basic abc") == "anonymous"
    a, b = caller_of("Bearer token-a"), caller_of("bearer token-b")
    assert a.startswith("token:")
    assert a != b
    assert "token-a" not in a


def test_scope_is_method_route_caller_and_bounded() -> None:
    assert scope_of("post", "/v1/x/{id}", "anonymous") == "POST /v1/x/{id} anonymous"
    long = scope_of("POST", "/" + "r" * 300, "anonymous")
    assert len(long) <= 255
    assert long.startswith("sha256:")


def test_fingerprint_is_canonical_over_json_bodies() -> None:
    fp = request_fingerprint("POST", "/v1/c/1/messages", "", BODY)
    reordered = b'{"expected_version":2,"messages":[{"content":"hi","role":"user"}]}'
    assert request_fingerprint("post", "/v1/c/1/messages", "", reordered) == fp
    assert request_fingerprint("POST", "/v1/c/1/messages", "dry_run=true", BODY) == fp


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "if_match"),
    [
        ("PATCH", "/v1/c/1/messages", "", BODY, None),
        ("POST", "/v1/c/2/messages", "", BODY, None),
        ("POST", "/v1/c/1/messages", "a=1", BODY, None),
        ("POST", "/v1/c/1/messages", "", BODY.replace(b"hi", b"ho"), None),
        ("POST", "/v1/c/1/messages", "", BODY, '"2"'),
        ("POST", "/v1/c/1/messages", "", b"not json", None),
    ],
)
def test_any_other_difference_is_another_request(
    method: str, path: str, query: str, body: bytes, if_match: str | None
) -> None:
    fp = request_fingerprint("POST", "/v1/c/1/messages", "", BODY)
    assert request_fingerprint(method, path, query, body, if_match) != fp
