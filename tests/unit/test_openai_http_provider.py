"""Narrow tests of the HTTP provider's mapping, with respx instead of a server."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from app.providers.openai_http import OpenAIHTTPProvider
from app.resilience.clock import MonotonicClock
from app.resilience.deadline import Deadline
from app.resilience.failures import UpstreamFailure
from app.settings import ProviderSettings

BASE = "http://upstream.test/v1"


def _provider() -> OpenAIHTTPProvider:
    # respx patches httpx's own transport, so these narrow tests pin it.
    settings = ProviderSettings(base_url=BASE, models=["m"], http_transport="httpx")
    return OpenAIHTTPProvider("cloud", settings)


def _deadline() -> Deadline:
    return Deadline.after(5, MonotonicClock())


@respx.mock
async def test_success_relays_bytes_and_rewrites_model() -> None:
    route = respx.post(f"{BASE}/chat/completions").mock(
        return_value=httpx.Response(200, content=b'{"id":"x","choices":[]}')
    )
    provider = _provider()
    done = await provider.complete({"model": "route", "messages": []}, "m", _deadline())
    assert done.body == b'{"id":"x","choices":[]}'
    assert b'"model":"m"' in route.calls.last.request.content
    await provider.aclose()


@pytest.mark.parametrize(
    ("status", "retryable", "caller"),
    [
        (400, False, True),
        (401, False, True),
        (404, False, True),
        (408, True, False),
        (429, True, False),
        (500, True, False),
        (502, True, False),
        (503, True, False),
        (504, True, False),
        (501, False, False),
    ],
)
@respx.mock
async def test_status_mapping(status: int, retryable: bool, caller: bool) -> None:
    respx.post(f"{BASE}/chat/completions").mock(
        return_value=httpx.Response(status, headers={"Retry-After": "7"}, json={"e": "x"})
    )
    provider = _provider()
    with pytest.raises(UpstreamFailure) as info:
        await provider.complete({"messages": []}, "m", _deadline())
    assert info.value.status_code == status
    assert info.value.retryable is retryable
    assert info.value.caller_error is caller
    assert info.value.retry_after == 7
    await provider.aclose()


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (httpx.ConnectError("x"), "connect"),
        (httpx.ReadTimeout("x"), "timeout"),
        (httpx.RemoteProtocolError("x"), "reset"),
        (httpx.ReadError("x"), "reset"),
    ],
)
@respx.mock
async def test_transport_errors_are_retryable_failures(exc: Exception, reason: str) -> None:
    respx.post(f"{BASE}/chat/completions").mock(side_effect=exc)
    provider = _provider()
    with pytest.raises(UpstreamFailure) as info:
        await provider.complete({"messages": []}, "m", _deadline())
    assert info.value.reason == reason
    assert info.value.retryable
    await provider.aclose()


async def _stream_failure(content: bytes) -> tuple[list[bytes], UpstreamFailure]:
    """What a stream of ``content`` relays (item by item) before the failure it ends with."""
    respx.post(f"{BASE}/chat/completions").mock(
        return_value=httpx.Response(
            200, content=content, headers={"content-type": "text/event-stream"}
        )
    )
    provider = _provider()
    stream = await provider.open_stream({"messages": []}, "m", _deadline())
    seen: list[bytes] = []

    async def drain() -> None:
        async for event in stream.events(5):
            seen.append(event)

    with pytest.raises(UpstreamFailure) as info:
        await drain()
    await stream.aclose()
    await provider.aclose()
    return seen, info.value


@respx.mock
async def test_stream_without_done_is_a_committed_failure() -> None:
    seen, failure = await _stream_failure(b'data: {"a":1}\n\ndata: {"a":2}\n\n')
    # What arrived in one read is relayed as one item, events whole.
    assert seen == [b'data: {"a":1}\n\ndata: {"a":2}\n\n']
    assert failure.committed
    assert failure.reason == "stream_truncated"


@respx.mock
async def test_api_key_comes_from_env_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUD_KEY_T", "sk-secret")
    cfg = ProviderSettings(base_url=BASE, api_key_env="CLOUD_KEY_T", http_transport="httpx")
    assert "sk-secret" not in cfg.model_dump_json()
    provider = OpenAIHTTPProvider("cloud", cfg)
    monkeypatch.delenv("CLOUD_KEY_T")  # read once, when the client was built
    route = respx.post(f"{BASE}/chat/completions").mock(
        return_value=httpx.Response(200, content=b'{"id":"x","choices":[]}')
    )
    await provider.complete({"messages": []}, "m", _deadline())
    assert route.calls.last.request.headers["authorization"] == "Bearer sk-secret"
    await provider.aclose()


@respx.mock
async def test_a_body_orjson_refuses_still_goes_as_json() -> None:
    route = respx.post(f"{BASE}/chat/completions").mock(
        return_value=httpx.Response(200, content=b'{"id":"x","choices":[]}')
    )
    provider = _provider()
    body = {"messages": [{"role": "user", "content": "caf\u00e9 \ud800"}], "seed": 2**63 - 1}
    await provider.complete(body, "m", _deadline())
    sent = json.loads(route.calls.last.request.content)
    assert sent["messages"][0]["content"] == "caf\u00e9 \ud800"
    assert sent["seed"] == 2**63 - 1
    await provider.aclose()


@respx.mock
async def test_an_error_after_events_of_the_same_read_relays_them_first() -> None:
    seen, failure = await _stream_failure(
        b'data: {"a":1}\n\ndata: {"error":{"message":"x"}}\n\ndata: {"a":2}\n\n'
    )
    assert seen == [b'data: {"a":1}\n\n']  # the event before the error, nothing after it
    assert failure.committed
