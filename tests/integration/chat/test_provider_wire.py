"""Both wires under the HTTP provider, on real loopback sockets: the same bytes, the same
failure reasons, no cookies kept, and connections reused only when an answer was read whole."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.providers.openai_http import OpenAIHTTPProvider
from app.resilience.clock import MonotonicClock
from app.resilience.deadline import Deadline
from app.resilience.failures import UpstreamFailure
from app.settings import ProviderSettings
from tests.fakes.servers import ServerThread, free_port
from tests.fakes.upstream import FakeUpstream

WIRES = ["aiohttp", "httpx"]
BODY = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


def _provider(base_url: str, wire: str, **overrides: object) -> OpenAIHTTPProvider:
    cfg = ProviderSettings.model_validate(
        {
            "base_url": base_url,
            "models": ["small"],
            "api_key_env": "KEEL_TEST_WIRE_KEY",
            "http_transport": wire,
            **overrides,
        }
    )
    return OpenAIHTTPProvider("up", cfg)


def _deadline(seconds: float = 10.0) -> Deadline:
    return Deadline.after(seconds, MonotonicClock())


async def _drain(provider: OpenAIHTTPProvider) -> None:
    opened = await provider.open_stream(BODY, "small", _deadline())
    try:
        async for _ in opened.events(5.0):
            pass
    finally:
        await opened.aclose()


async def _failure(provider: OpenAIHTTPProvider, *, stream: bool = False) -> UpstreamFailure:
    call = _drain(provider) if stream else provider.complete(BODY, "small", _deadline())
    with pytest.raises(UpstreamFailure) as info:
        await call
    return info.value


@pytest.mark.parametrize("wire", WIRES)
async def test_answers_carry_the_key_and_the_model(
    wire: str, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEL_TEST_WIRE_KEY", "sk-wire")
    provider = _provider(upstream.base_url, wire)
    try:
        done = await provider.complete(BODY, "small", _deadline())
        assert b'"choices"' in done.body
        seen = upstream.requests[-1]
        assert seen.headers["authorization"] == "Bearer sk-wire"
        assert seen.headers["accept-encoding"] == "identity"
        assert seen.body is not None
        assert seen.body["model"] == "small"
        assert seen.body["stream"] is False

        opened = await provider.open_stream(BODY, "small", _deadline())
        events = [e async for e in opened.events(5.0)]
        await opened.aclose()
        assert b"".join(events).endswith(b"data: [DONE]\n\n")
        assert upstream.requests[-1].headers["accept"] == "text/event-stream"

        await provider.probe(_deadline())
        assert upstream.requests[-1].path.endswith("/v1/models")
    finally:
        await provider.aclose()


@pytest.mark.parametrize("wire", WIRES)
async def test_failure_reasons_are_the_same_on_both_wires(
    wire: str, upstream: FakeUpstream
) -> None:
    provider = _provider(upstream.base_url, wire, timeout_s=0.3)
    try:
        upstream.faults.reset_rate = 1.0
        assert (await _failure(provider)).reason == "reset"
        upstream.reset()

        upstream.faults.hang_rate = 1.0
        assert (await _failure(provider)).reason == "timeout"
        upstream.reset()

        upstream.faults.drop_after_chunks = 1
        dropped = await _failure(provider, stream=True)
        assert dropped.reason == "stream_drop"
        assert dropped.committed
        upstream.reset()

        upstream.faults.statuses.append(429)
        upstream.faults.retry_after = "3"
        limited = await _failure(provider)
        assert limited.status_code == 429
        assert limited.retry_after == 3.0
    finally:
        await provider.aclose()

    closed = _provider(f"http://127.0.0.1:{free_port()}/v1", wire)
    try:
        assert (await _failure(closed)).reason == "connect"
    finally:
        await closed.aclose()


@pytest.mark.parametrize("wire", WIRES)
async def test_a_stream_closed_half_read_drops_its_connection(
    wire: str, upstream: FakeUpstream
) -> None:
    upstream.faults.chunks = 50
    upstream.faults.chunk_delay_s = 0.05
    provider = _provider(upstream.base_url, wire)
    try:
        opened = await provider.open_stream(BODY, "small", _deadline())
        events = opened.events(5.0)
        await anext(events)
        await opened.aclose()
        # The upstream notices the hang-up at once, instead of streaming to a pooled socket.
        for _ in range(100):
            if upstream.disconnects:
                break
            await asyncio.sleep(0.02)
        assert upstream.disconnects
        upstream.reset()
        done = await provider.complete(BODY, "small", _deadline())  # a fresh connection works
        assert b'"choices"' in done.body
    finally:
        await provider.aclose()


def _cookie_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        echo = request.headers.get("cookie", "")
        resp = JSONResponse({"choices": [{"message": {"content": echo}}]})
        resp.set_cookie("session", "from-upstream")
        return resp

    return app


@pytest.mark.parametrize("wire", WIRES)
async def test_no_cookie_travels_from_one_request_to_the_next(wire: str) -> None:
    with ServerThread(_cookie_app()) as server:
        # A host name, not an address: aiohttp's default jar ignores cookies from addresses.
        provider = _provider(f"http://localhost:{server.port}/v1", wire)
        try:
            await provider.complete(BODY, "small", _deadline())
            second = await provider.complete(BODY, "small", _deadline())
            assert b"from-upstream" not in second.body
        finally:
            await provider.aclose()
