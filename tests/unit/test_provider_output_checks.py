"""The HTTP provider never passes on unchecked output: a 200 that is not a chat completion, an
in-band error in a stream (first or later event) and an oversized Retry-After (respx)."""

from __future__ import annotations

import httpx
import pytest
import respx

from app.providers.openai_http import OpenAIHTTPProvider
from app.providers.upstream_checks import (
    carries_content,
    ends_stream,
    split_events,
    stream_event_failure,
)
from app.resilience.clock import MonotonicClock
from app.resilience.deadline import Deadline
from app.resilience.failures import UpstreamFailure
from app.settings import ProviderSettings

BASE = "http://upstream.test/v1"
URL = f"{BASE}/chat/completions"
CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
DONE = b"data: [DONE]\n\n"


def _provider() -> OpenAIHTTPProvider:
    settings = ProviderSettings(base_url=BASE, models=["m"], http_transport="httpx")
    return OpenAIHTTPProvider("cloud", settings, max_retry_after_s=60.0)


def _deadline() -> Deadline:
    return Deadline.after(5, MonotonicClock())


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>502 from the proxy</body></html>",
        b'{"id": "x"}',
        b'{"choices": "nope"}',
        b"[1, 2]",
        b"\xff\xfe",
    ],
)
@respx.mock
async def test_a_200_that_is_not_a_chat_completion_is_a_retryable_failure(body: bytes) -> None:
    respx.post(URL).mock(
        return_value=httpx.Response(200, content=body, headers={"content-type": "text/html"})
    )
    provider = _provider()
    with pytest.raises(UpstreamFailure) as caught:
        await provider.complete({"messages": []}, "m", _deadline())
    assert caught.value.reason == "bad_response"
    assert caught.value.retryable
    await provider.aclose()


@respx.mock
async def test_a_200_carrying_an_error_object_keeps_its_status() -> None:
    respx.post(URL).mock(
        return_value=httpx.Response(
            200, content=b'{"error": {"message": "secret text", "type": "rate_limit_exceeded"}}'
        )
    )
    provider = _provider()
    with pytest.raises(UpstreamFailure) as caught:
        await provider.complete({"messages": []}, "m", _deadline())
    assert caught.value.status_code == 429
    assert "secret" not in str(caught.value)
    await provider.aclose()


@respx.mock
async def test_a_valid_completion_passes_as_json() -> None:
    body = b'{"id":"x","object":"chat.completion","choices":[]}'
    respx.post(URL).mock(
        return_value=httpx.Response(200, content=body, headers={"content-type": "text/plain"})
    )
    provider = _provider()
    done = await provider.complete({"messages": []}, "m", _deadline())
    assert done.body == body
    assert done.content_type == "application/json"
    await provider.aclose()


async def _events(content: bytes) -> list[bytes]:
    provider = _provider()
    with respx.mock:
        respx.post(URL).mock(
            return_value=httpx.Response(
                200, content=content, headers={"content-type": "text/event-stream"}
            )
        )
        stream = await provider.open_stream({"messages": []}, "m", _deadline())
        out: list[bytes] = []
        try:
            async for events in stream.events(5.0):
                out.extend(split_events(events))  # a read may carry several events
        finally:
            await stream.aclose()
            await provider.aclose()
    return out


@pytest.mark.parametrize(
    "error",
    [
        b'event: error\ndata: {"error": {"message": "boom"}}\n\n',
        b'data: {"error": {"message": "boom", "type": "server_error"}}\n\n',
        b'data: {"error": "boom"}\n\n',
        b"event: error\ndata: not json at all\n\n",
    ],
)
@pytest.mark.parametrize("position", ["first", "mid"])
async def test_an_in_band_stream_error_becomes_a_failure(error: bytes, position: str) -> None:
    before = b"" if position == "first" else CHUNK
    with pytest.raises(UpstreamFailure) as caught:
        await _events(before + error + DONE)
    failure = caught.value
    assert failure.reason == "stream_error"
    assert failure.committed is (position == "mid")
    assert failure.retryable is (position == "first")
    assert "boom" not in str(failure)


async def test_content_that_mentions_error_is_relayed() -> None:
    chunk = (
        b'data: {"choices":[{"delta":{"content":"the \\"error\\" key"}}],"x":{"error":null}}\n\n'
    )
    events = await _events(chunk + DONE)
    assert events == [chunk, DONE]


def test_stream_event_failure_ignores_ordinary_events() -> None:
    assert stream_event_failure(CHUNK.rstrip(b"\n"), committed=True) is None
    assert stream_event_failure(b": keep-alive", committed=True) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [("99999999", 60.0), ("Fri, 31 Dec 9999 23:59:59 GMT", 60.0), ("7", 7.0)],
)
@respx.mock
async def test_retry_after_is_capped_by_keels_limit(header: str, expected: float) -> None:
    respx.post(URL).mock(
        return_value=httpx.Response(429, content=b"{}", headers={"Retry-After": header})
    )
    provider = _provider()
    with pytest.raises(UpstreamFailure) as caught:
        await provider.complete({"messages": []}, "m", _deadline())
    assert caught.value.retry_after == expected
    await provider.aclose()


@respx.mock
async def test_embeddings_are_checked_for_their_own_shape() -> None:
    respx.post(f"{BASE}/embeddings").mock(
        side_effect=[
            httpx.Response(200, content=b'{"object":"list","data":[]}'),
            httpx.Response(200, content=b"<html>not json</html>"),
        ]
    )
    provider = _provider()
    done = await provider.relay("embeddings", {"input": "x"}, "m", _deadline())
    assert done.body == b'{"object":"list","data":[]}'
    with pytest.raises(UpstreamFailure) as caught:
        await provider.relay("embeddings", {"input": "x"}, "m", _deadline())
    assert caught.value.reason == "bad_response"
    await provider.aclose()


@pytest.mark.parametrize(
    ("event", "content"),
    [
        (b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}', False),
        (b'data: {"choices":[],"prompt_filter_results":[]}', False),
        (CHUNK.rstrip(b"\n"), True),
        (b'data: {"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}', True),
        (b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}', True),
        (b'data: {"choices":[{"text":"hi"}]}', True),  # legacy completions
        (b"data: [DONE]", True),
        (b"data: not json", True),
    ],
)
def test_which_events_carry_content(event: bytes, content: bool) -> None:
    from app.providers.upstream_checks import carries_content

    assert carries_content(event) is content


def test_groups_of_events_are_read_at_event_starts_only() -> None:
    done = b"data: [DONE]\n\n"
    content = b'data: {"choices":[{"delta":{"content":"data: [DONE]"}}]}\n\n'
    role = b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n'
    assert ends_stream(done)
    assert ends_stream(content + done)
    assert not ends_stream(content)  # the marker inside JSON text is not the end
    assert split_events(role + content + done) == [role, content, done]
    assert not carries_content(role)
    assert carries_content(role + content)
