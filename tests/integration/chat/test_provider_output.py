"""Provider output is checked before it is relayed (real sockets): a 200 that is not a chat
completion is 502 upstream_error, an in-band stream error before any content falls back to the
next target, one after content ends the stream with Keel's own error event, and a provider's
Retry-After is capped by Keel's limit."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from app.settings import Settings
from tests.fakes.servers import ServerThread
from tests.fakes.upstream import MARKER, FakeUpstream
from tests.integration.chat.conftest import chat_body, provider


@pytest.fixture
def second() -> Iterator[FakeUpstream]:
    with FakeUpstream(seed=99) as fake:
        yield fake


def _events(text: str) -> list[str]:
    return [e for e in text.split("\n\n") if e.strip()]


@pytest.mark.parametrize("ok_body", [b"<html>proxy says hi</html>", b'{"object": "list"}'])
def test_a_200_that_is_not_a_completion_is_upstream_error(
    keel: ServerThread, upstream: FakeUpstream, ok_body: bytes
) -> None:
    upstream.faults.ok_body = ok_body + MARKER.encode()
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        resp = c.post("/v1/chat/completions", json=chat_body())
    assert resp.status_code == 502, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["code"] == "upstream_error"
    assert MARKER not in resp.text
    assert "proxy says hi" not in resp.text


@pytest.mark.parametrize("role_first", [False, True])
@pytest.mark.parametrize("style", ["event", "data"])
def test_an_error_before_any_content_falls_back(
    chat_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServerThread],
    upstream: FakeUpstream,
    second: FakeUpstream,
    style: str,
    role_first: bool,
) -> None:
    """Also after a role-only first delta (OpenAI's habit): no content reached the client."""
    upstream.faults.stream_error_at = 0
    upstream.faults.stream_error_style = style
    upstream.faults.role_chunk_first = role_first
    second.faults.role_chunk_first = role_first
    keel = serve(
        chat_settings(
            providers={
                "cloud": provider(upstream.base_url),
                "backup": provider(second.base_url),
            },
            routes={"chat": ["cloud/small", "backup/small"]},
        )
    )
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        resp = c.post("/v1/chat/completions", json=chat_body(stream=True))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-keel-target"] == "backup/small"
    assert upstream.calls == 3  # retried on its own target first (max_attempts)
    assert resp.text.rstrip().endswith("data: [DONE]")
    assert "event: error" not in resp.text
    assert MARKER not in resp.text
    assert resp.text.count('"role"') == (1 if role_first else 0)  # the backup's, once


def test_a_role_only_first_delta_is_relayed_in_order(
    keel: ServerThread, upstream: FakeUpstream
) -> None:
    upstream.faults.role_chunk_first = True
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        resp = c.post("/v1/chat/completions", json=chat_body(stream=True))
    events = _events(resp.text)
    assert '"role": "assistant"' in events[0]
    assert '"content": "echo: "' in events[1]
    assert events[-1] == "data: [DONE]"


@pytest.mark.parametrize("style", ["event", "data"])
def test_an_error_mid_stream_is_keels_own_error_event(
    keel: ServerThread, upstream: FakeUpstream, style: str
) -> None:
    upstream.faults.chunks = 3
    upstream.faults.stream_error_at = 2
    upstream.faults.stream_error_style = style
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        resp = c.post("/v1/chat/completions", json=chat_body(stream=True))
    assert resp.status_code == 200
    events = _events(resp.text)
    assert len([e for e in events if e.startswith("data: {")]) == 2
    assert "[DONE]" not in resp.text
    assert events[-1].startswith("event: error\ndata: ")
    problem = json.loads(events[-1].split("data: ", 1)[1])
    assert problem["code"] == "upstream_error"
    assert "error" in problem  # the SDKs raise on it
    assert MARKER not in resp.text
    assert upstream.calls == 1


def test_a_provider_retry_after_is_capped(
    chat_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServerThread],
    upstream: FakeUpstream,
) -> None:
    upstream.faults.statuses.append(429)
    upstream.faults.retry_after = "86400"
    keel = serve(chat_settings(resilience={"max_throttle_s": 20}))
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        resp = c.post("/v1/chat/completions", json=chat_body(), headers={"X-Request-Timeout": "2"})
    assert resp.status_code == 429, resp.text
    assert resp.headers["retry-after"] == "20"
    assert resp.json()["retry_after"] == 20
