"""Failures as the official openai SDK sees them: the right exception class, a real message,
``e.code``/``e.param``, a raise mid-stream, and no retries stacked on Keel's own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.servers import ServerThread
from tests.fakes.upstream import MARKER, FakeUpstream
from tests.integration.chat.conftest import chat_body, provider

MESSAGES: Any = [{"role": "user", "content": "ping"}]


def _client(keel: ServerThread, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=keel.url + "/v1", api_key="unused", **kwargs)


def _count_sleeps(client: openai.OpenAI) -> list[float]:
    """Record the SDK's retry sleeps instead of taking them."""
    waits: list[float] = []

    def record(*, retries_taken: int, max_retries: int, options: Any, response: Any) -> None:
        waits.append(client._calculate_retry_timeout(max_retries - retries_taken, options, None))

    client._sleep_for_retry = record  # type: ignore[method-assign]
    return waits


def test_unknown_model_is_not_found_with_a_message(keel: ServerThread) -> None:
    with _client(keel, max_retries=0) as client, pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    err = info.value
    assert "no-such-model" in err.message
    assert err.code == "model_not_found"
    assert err.param == "model"
    assert err.type == "invalid_request_error"


def test_problem_body_carries_the_openai_envelope(keel: ServerThread) -> None:
    resp = httpx.post(keel.url + "/v1/chat/completions", json=chat_body(model="nope"))
    body = resp.json()
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert body["error"] == {
        "message": body["detail"],
        "type": "invalid_request_error",
        "code": "model_not_found",
        "param": "model",
    }
    assert resp.headers["x-should-retry"] == "false"
    invalid = httpx.post(keel.url + "/v1/chat/completions", json={"model": "chat"})
    assert invalid.status_code == 422
    assert invalid.json()["error"]["code"] == "validation_error"
    assert invalid.json()["error"]["param"] == "messages"


def test_exhausted_provider_429_is_rate_limit_error(
    keel: ServerThread, upstream: FakeUpstream
) -> None:
    upstream.faults.down = True
    upstream.faults.error_status = 429
    with _client(keel) as client:
        waits = _count_sleeps(client)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="chat", messages=MESSAGES)
    err = info.value
    assert err.status_code == 429
    assert err.code == "rate_limited"
    assert int(err.response.headers["retry-after"]) >= 1
    assert "cloud/small" in err.message
    assert MARKER not in err.response.text
    assert waits == []  # Keel already retried: x-should-retry false
    assert upstream.calls == 3  # Keel's max_attempts, not 3 x the SDK's 3


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (400, openai.BadRequestError, "upstream_rejected"),
        (404, openai.NotFoundError, "upstream_not_found"),
        (422, openai.UnprocessableEntityError, "upstream_unprocessable"),
    ],
)
def test_provider_4xx_keeps_its_status_and_names_the_param(
    keel: ServerThread,
    upstream: FakeUpstream,
    status: int,
    error: type[openai.APIStatusError],
    code: str,
) -> None:
    upstream.faults.statuses.append(status)
    upstream.faults.error_param = "messages[0].content"
    with _client(keel) as client, pytest.raises(error) as info:
        client.chat.completions.create(model="chat", messages=MESSAGES)
    assert info.value.code == code
    assert info.value.param == "messages[0].content"
    assert MARKER not in info.value.response.text
    assert upstream.calls == 1


def test_provider_free_text_param_is_not_forwarded(
    keel: ServerThread, upstream: FakeUpstream
) -> None:
    upstream.faults.statuses.append(400)
    upstream.faults.error_param = f"{MARKER} see /srv/app.py line 3"
    with _client(keel) as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="chat", messages=MESSAGES)
    assert info.value.param is None
    assert MARKER not in info.value.response.text


def test_stream_failing_midway_raises_api_error(keel: ServerThread, upstream: FakeUpstream) -> None:
    upstream.faults.chunks = 5
    upstream.faults.drop_after_chunks = 2
    seen: list[str] = []

    def consume(stream: Any) -> None:
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")

    with _client(keel, max_retries=0) as client:
        stream = client.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError) as info:
            consume(stream)
    assert len(seen) == 2  # what arrived before the failure was delivered
    assert info.value.code == "upstream_error"
    assert "stream" in info.value.message


def test_always_503_provider_is_not_multiplied_by_the_sdk(
    chat_settings: Callable[..., Any],
    serve: Callable[[Any], ServerThread],
    upstream: FakeUpstream,
) -> None:
    # A breaker that will not open during the test, so every SDK call reaches the provider.
    cfg = provider(upstream.base_url, breaker={"min_calls": 1000, "window_size": 1000})
    keel = serve(chat_settings(providers={"cloud": cfg}))
    upstream.faults.down = True
    with _client(keel) as client:  # SDK defaults: max_retries=2
        waits = _count_sleeps(client)
        for _ in range(3):
            before = upstream.calls
            with pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(model="chat", messages=MESSAGES)
            assert upstream.calls - before <= 3  # Keel's max_attempts
            assert info.value.response.headers["x-should-retry"] == "false"
            assert info.value.response.headers["x-keel-attempts"] == "3"
    assert waits == []


def test_open_circuit_with_a_long_wait_is_not_retried_by_the_sdk(
    chat_settings: Callable[..., Any],
    serve: Callable[[Any], ServerThread],
    upstream: FakeUpstream,
) -> None:
    cfg = provider(
        upstream.base_url,
        retry={"max_attempts": 1},
        breaker={"min_calls": 2, "window_size": 2, "open_s": 30, "open_max_s": 60},
    )
    keel = serve(chat_settings(providers={"cloud": cfg}))
    upstream.faults.down = True
    with _client(keel) as client:
        waits = _count_sleeps(client)
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="chat", messages=MESSAGES)
        calls = upstream.calls
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="chat", messages=MESSAGES)
    assert info.value.code == "circuit_open"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert upstream.calls == calls
    assert waits == []
