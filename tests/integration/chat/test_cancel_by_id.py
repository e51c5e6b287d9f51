"""``POST /v1/requests/{id}/cancel`` on requests a remote provider is answering, on real
sockets against the fake upstream: the upstream call stops at once, the client gets a
``request_cancelled`` answer, nothing is recorded, and the in-flight registry empties."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from app.chat.component import Chat, ChatComponent, ChatInputs
from app.chat.inflight import InFlightRequests
from app.main import Components
from app.settings import Settings
from tests.fakes.servers import ServerThread
from tests.fakes.upstream import FakeUpstream
from tests.integration.chat.conftest import chat_body
from tests.integration.chat.test_chat_resilience import _upstream_saw_disconnect

USER_STOP = 'keel_cancellations_total{reason="user_stop"}'


class CapturingChat:
    """The real chat component, keeping what it yields so a test can see the registry."""

    def __init__(self) -> None:
        self.inner = ChatComponent()
        self.chat: Chat | None = None

    @asynccontextmanager
    async def __call__(self, inputs: ChatInputs) -> AsyncIterator[Chat]:
        async with self.inner(inputs) as chat:
            self.chat = chat
            yield chat

    @property
    def inflight(self) -> InFlightRequests:
        assert self.chat is not None
        return self.chat.inflight


@pytest.fixture
def keel_with_registry(
    serve: Callable[..., ServerThread], chat_settings: Callable[..., Settings]
) -> tuple[ServerThread, CapturingChat]:
    chat = CapturingChat()
    return serve(chat_settings(), Components(chat=chat)), chat


async def _until(check: Callable[[], bool], what: str, within_s: float = 5.0) -> None:
    for _ in range(int(within_s / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def test_cancelling_a_remote_completion_stops_the_upstream_and_records_nothing(
    keel_with_registry: tuple[ServerThread, CapturingChat], upstream: FakeUpstream
) -> None:
    keel, chat = keel_with_registry
    upstream.faults.latency_s = 30  # answers only after the client hangs up
    async with httpx.AsyncClient(base_url=keel.url, timeout=20) as c:
        conv = (await c.post("/v1/conversations", json={})).json()["id"]
        headers = {"X-Request-Id": "stop-remote-1", "Idempotency-Key": "cancel-key-1"}
        body = chat_body("hello", conversation_id=conv)
        pending = asyncio.create_task(c.post("/v1/chat/completions", json=body, headers=headers))
        await _until(lambda: upstream.calls == 1, "the upstream call")
        assert len(chat.inflight) == 1

        stop = await c.post("/v1/requests/stop-remote-1/cancel")
        assert stop.status_code == 200, stop.text
        assert stop.json() == {
            "request_id": "stop-remote-1",
            "cancelled": True,
            "reason": "user_stop",
        }
        resp = await pending
        await _upstream_saw_disconnect(upstream)

        assert resp.status_code == 409, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.headers["x-should-retry"] == "false"
        problem = resp.json()
        assert problem["code"] == "request_cancelled"
        assert problem["error"]["code"] == "request_cancelled"
        assert problem["request_id"] == "stop-remote-1"
        assert len(chat.inflight) == 0
        # Finished: a second cancel finds nothing.
        again = await c.post("/v1/requests/stop-remote-1/cancel")
        assert again.status_code == 404
        assert again.json()["code"] == "not_found"

        # Nothing was recorded: no turn, and the key was released (the retry runs, not 409).
        items = (await c.get(f"/v1/conversations/{conv}/items")).json()
        assert items["data"] == []
        upstream.faults.latency_s = 0
        retry = await c.post("/v1/chat/completions", json=body, headers=headers)
        assert retry.status_code == 200, retry.text
        assert "idempotent-replayed" not in retry.headers
        assert upstream.calls == 2
        metrics = (await c.get("/metrics")).text
    assert _metric(metrics, USER_STOP) == 1.0
    assert len(chat.inflight) == 0


async def test_cancelling_a_relayed_embeddings_request(
    keel_with_registry: tuple[ServerThread, CapturingChat], upstream: FakeUpstream
) -> None:
    keel, chat = keel_with_registry
    upstream.faults.latency_s = 30
    async with httpx.AsyncClient(base_url=keel.url, timeout=20) as c:
        body = {"model": "chat", "input": "a sentence"}
        pending = asyncio.create_task(
            c.post("/v1/embeddings", json=body, headers={"X-Request-Id": "stop-embed"})
        )
        await _until(lambda: upstream.calls_to("embeddings") == 1, "the upstream call")
        assert (await c.post("/v1/requests/stop-embed/cancel")).status_code == 200
        resp = await pending
        await _upstream_saw_disconnect(upstream)
    assert resp.status_code == 409
    assert resp.json()["code"] == "request_cancelled"
    assert len(chat.inflight) == 0


async def test_cancelling_a_remote_stream_after_its_first_chunk(
    keel_with_registry: tuple[ServerThread, CapturingChat], upstream: FakeUpstream
) -> None:
    keel, chat = keel_with_registry
    upstream.faults.chunks = 40
    upstream.faults.chunk_delay_s = 0.5
    lines: list[str] = []
    async with (
        httpx.AsyncClient(base_url=keel.url, timeout=20) as c,
        httpx.AsyncClient(base_url=keel.url, timeout=20) as other,
        c.stream(
            "POST",
            "/v1/chat/completions",
            json=chat_body(stream=True),
            headers={"X-Request-Id": "stop-stream-1", "Idempotency-Key": "cancel-key-2"},
        ) as resp,
    ):
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            lines.append(line)
            if line.startswith("data:") and len(lines) == 1:
                stop = await other.post("/v1/requests/stop-stream-1/cancel")
                assert stop.status_code == 200, stop.text
                await _upstream_saw_disconnect(upstream)
    assert "data: [DONE]" not in lines
    assert upstream.completed == 0
    assert "event: error" in lines, lines
    at = lines.index("event: error")
    assert not [line for line in lines[at + 2 :] if line], "the error event is the last"
    error = json.loads(lines[at + 1].removeprefix("data: "))
    assert error["error"]["code"] == "request_cancelled"
    assert error["code"] == "request_cancelled"
    assert sum(line.startswith("data: {") for line in lines) <= 3  # stopped, not relayed on
    await _until(lambda: len(chat.inflight) == 0, "the registry to empty")
    async with httpx.AsyncClient(base_url=keel.url, timeout=20) as c:
        assert (await c.post("/v1/requests/stop-stream-1/cancel")).status_code == 404
        # The key was released: the same request runs again and is not a replay.
        upstream.faults.chunk_delay_s = 0
        again = await c.post(
            "/v1/chat/completions",
            json=chat_body(stream=True),
            headers={"Idempotency-Key": "cancel-key-2"},
        )
        assert again.status_code == 200
        assert "idempotent-replayed" not in again.headers
        assert _metric((await c.get("/metrics")).text, USER_STOP) == 1.0
    # The client has the last byte a moment before the server's relay closes.
    await _until(lambda: len(chat.inflight) == 0, "the registry to empty")


async def test_unknown_id_is_404(keel_with_registry: tuple[ServerThread, CapturingChat]) -> None:
    keel, _ = keel_with_registry
    async with httpx.AsyncClient(base_url=keel.url) as c:
        resp = await c.post("/v1/requests/nobody-sent-this/cancel")
        metrics = (await c.get("/metrics")).text
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["code"] == "not_found"
    assert _metric(metrics, USER_STOP) == 0.0


async def test_the_registry_empties_after_success_failure_and_disconnect(
    keel_with_registry: tuple[ServerThread, CapturingChat], upstream: FakeUpstream
) -> None:
    keel, chat = keel_with_registry
    async with httpx.AsyncClient(base_url=keel.url, timeout=10) as c:
        ok = await c.post("/v1/chat/completions", json=chat_body())
        assert ok.status_code == 200
        streamed = await c.post("/v1/chat/completions", json=chat_body(stream=True))
        assert streamed.text.rstrip().endswith("data: [DONE]")
        await _until(lambda: len(chat.inflight) == 0, "the registry to empty")
        # The answer is complete: the request is no longer cancellable.
        rid = ok.headers["x-request-id"]
        assert (await c.post(f"/v1/requests/{rid}/cancel")).status_code == 404

        upstream.faults.statuses.append(400)
        failed = await c.post("/v1/chat/completions", json=chat_body())
        assert failed.status_code == 400
        assert len(chat.inflight) == 0

        upstream.faults.latency_s = 5
        with pytest.raises(httpx.ReadTimeout):
            await c.post("/v1/chat/completions", json=chat_body(), timeout=0.3)
        await _upstream_saw_disconnect(upstream)
        await _until(lambda: len(chat.inflight) == 0, "the registry to empty")

        upstream.reset()
        upstream.faults.chunks = 40
        upstream.faults.chunk_delay_s = 0.3
        async with c.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    break
        await _upstream_saw_disconnect(upstream)
        await _until(lambda: len(chat.inflight) == 0, "the registry to empty")
        metrics = (await c.get("/metrics")).text
    assert _metric(metrics, USER_STOP) == 0.0
