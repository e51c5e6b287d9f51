"""The official openai SDK, sync and async, streaming and not, works against Keel unchanged."""

from __future__ import annotations

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.fakes.servers import ServerThread
from tests.fakes.upstream import FakeUpstream

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "ping"}]


def test_sync_client(keel: ServerThread, upstream: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=keel.url + "/v1", api_key="unused", max_retries=0)
    ids = {m.id for m in client.models.list()}
    assert {"chat", "cloud/small", "cloud/large"} <= ids
    assert client.models.retrieve("chat").id == "chat"

    done = client.chat.completions.create(model="chat", messages=MESSAGES, temperature=0.2)
    assert done.choices[0].message.content == "echo: ping"
    assert upstream.requests[-1].body is not None
    assert upstream.requests[-1].body["temperature"] == 0.2  # passed through untouched
    assert upstream.requests[-1].body["model"] == "small"  # the target's own name

    chunks = list(client.chat.completions.create(model="chat", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("echo:")
    client.close()


async def test_async_client(keel: ServerThread) -> None:
    client = openai.AsyncOpenAI(base_url=keel.url + "/v1", api_key="unused", max_retries=0)
    models = await client.models.list()
    assert "cloud/large" in {m.id for m in models.data}
    done = await client.chat.completions.create(model="cloud/large", messages=MESSAGES)
    assert done.choices[0].message.content == "echo: ping"
    stream = await client.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts).startswith("echo:")
    await client.close()


def test_sdk_sees_problem_as_api_error(keel: ServerThread) -> None:
    client = openai.OpenAI(base_url=keel.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="missing", messages=MESSAGES)
    assert info.value.status_code == 404
    client.close()
