"""``/v1/embeddings`` and ``/v1/completions`` with the official SDK: relayed through the same
guard as chat (routing, fallbacks, retries, idempotency, metrics)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from app.settings import Settings
from tests.fakes.servers import ServerThread
from tests.fakes.upstream import MARKER, FakeUpstream
from tests.integration.chat.conftest import provider


@pytest.fixture
def backup() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def relay_keel(
    chat_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServerThread],
    upstream: FakeUpstream,
    backup: FakeUpstream,
) -> ServerThread:
    return serve(
        chat_settings(
            providers={
                "cloud": provider(upstream.base_url),
                "backup": provider(backup.base_url),
            },
            routes={"chat": ["cloud/small", "backup/small"], "embed": ["cloud/small"]},
        )
    )


def _client(keel: ServerThread, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=keel.url + "/v1", api_key="unused", max_retries=0, **kwargs)


def test_embeddings_with_the_sdk(relay_keel: ServerThread, upstream: FakeUpstream) -> None:
    with _client(relay_keel) as client:
        raw = client.embeddings.with_raw_response.create(model="embed", input=["a", "bcd"])
    done = raw.parse()
    assert [d.index for d in done.data] == [0, 1]
    assert done.data[1].embedding[0] == 3.0
    assert raw.headers["x-keel-target"] == "cloud/small"
    seen = upstream.requests[-1]
    assert seen.path == "/v1/embeddings"
    assert seen.body is not None
    # Passed through as the SDK sent it (base64 by default), with the target's model name.
    assert seen.body == {"model": "small", "input": ["a", "bcd"], "encoding_format": "base64"}


def test_embeddings_fall_back_when_the_first_provider_fails(
    relay_keel: ServerThread, upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    upstream.faults.down = True
    with _client(relay_keel) as client:
        raw = client.embeddings.with_raw_response.create(model="chat", input="hello")
    assert raw.headers["x-keel-target"] == "backup/small"
    assert int(raw.headers["x-keel-attempts"]) == 4  # 3 on cloud, then the backup
    assert raw.parse().data[0].embedding
    assert upstream.calls_to("embeddings") == 3
    assert backup.calls_to("embeddings") == 1
    metrics = httpx.get(relay_keel.url + "/metrics").text
    assert 'keel_upstream_attempts_total{outcome="status_503",provider="cloud"} 3.0' in metrics


def test_embeddings_failure_is_a_problem_the_sdk_reads(
    relay_keel: ServerThread, upstream: FakeUpstream
) -> None:
    upstream.faults.statuses.append(400)
    with _client(relay_keel) as client, pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="embed", input="x")
    assert info.value.code == "upstream_rejected"
    assert MARKER not in info.value.response.text
    with _client(relay_keel) as client, pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="nope", input="x")
    assert "nope" in missing.value.message
    bad = httpx.post(relay_keel.url + "/v1/embeddings", json={"model": "embed"})
    assert bad.status_code == 422
    assert bad.json()["error"]["param"] == "input"


def test_embeddings_replay_under_an_idempotency_key(
    relay_keel: ServerThread, upstream: FakeUpstream
) -> None:
    headers = {"Idempotency-Key": "emb-1"}
    body = {"model": "embed", "input": "same"}
    with httpx.Client(base_url=relay_keel.url) as c:
        first = c.post("/v1/embeddings", json=body, headers=headers)
        again = c.post("/v1/embeddings", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert upstream.calls_to("embeddings") == 1


def test_legacy_completions_with_the_sdk(relay_keel: ServerThread, upstream: FakeUpstream) -> None:
    with _client(relay_keel) as client:
        done = client.completions.create(model="chat", prompt="say hi", max_tokens=5)
        assert done.choices[0].text == "echo: say hi"
        assert upstream.requests[-1].body == {"model": "small", "prompt": "say hi", "max_tokens": 5}
        chunks = list(client.completions.create(model="chat", prompt="say hi", stream=True))
    assert chunks  # relayed event by event, ended by [DONE]
    assert upstream.requests[-1].path == "/v1/completions"
    assert upstream.requests[-1].body is not None
    assert upstream.requests[-1].body["stream"] is True
