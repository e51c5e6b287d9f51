"""Idempotent chat and conversation persistence: what a chat turn leaves behind."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.conversations import Message

from tests.fakes.servers import ServerThread
from tests.fakes.upstream import FakeUpstream
from tests.integration.chat.conftest import chat_body


def test_same_key_calls_the_upstream_once(keel: ServerThread, upstream: FakeUpstream) -> None:
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        first = c.post(
            "/v1/chat/completions",
            json=chat_body("once"),
            headers={"Idempotency-Key": "chat-key-1"},
        )
        second = c.post(
            "/v1/chat/completions",
            json=chat_body("once"),
            headers={"Idempotency-Key": "chat-key-1"},
        )
        reused = c.post(
            "/v1/chat/completions",
            json=chat_body("other"),
            headers={"Idempotency-Key": "chat-key-1"},
        )
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert upstream.calls == 1
    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"


def test_streaming_retry_replays_the_stored_stream(
    keel: ServerThread, upstream: FakeUpstream
) -> None:
    body = chat_body("stream me", stream=True)
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        first = c.post("/v1/chat/completions", json=body, headers={"Idempotency-Key": "s-1"})
        second = c.post("/v1/chat/completions", json=body, headers={"Idempotency-Key": "s-1"})
    assert first.status_code == second.status_code == 200
    assert second.headers["content-type"].startswith("text/event-stream")
    assert second.text == first.text
    assert first.text.rstrip().endswith("data: [DONE]")
    assert second.headers["idempotent-replayed"] == "true"
    assert upstream.calls == 1


def test_failed_request_releases_its_key(keel: ServerThread, upstream: FakeUpstream) -> None:
    upstream.faults.statuses.append(400)
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        failed = c.post("/v1/chat/completions", json=chat_body(), headers={"Idempotency-Key": "k"})
        retried = c.post("/v1/chat/completions", json=chat_body(), headers={"Idempotency-Key": "k"})
    assert failed.status_code == 400
    assert retried.status_code == 200
    assert "idempotent-replayed" not in retried.headers
    assert upstream.calls == 2


def _conversation(c: httpx.Client) -> str:
    resp = c.post("/v1/conversations", json={"title": "chat"})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _items(c: httpx.Client, cid: str) -> list[tuple[str, list[dict[str, object]]]]:
    page = c.get(f"/v1/conversations/{cid}/items", params={"order": "asc"}).json()
    return [(i["role"], i["content"]) for i in page["data"]]


def test_conversation_gets_both_turns_in_one_version(
    keel: ServerThread, upstream: FakeUpstream
) -> None:
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        cid = _conversation(c)
        before = c.get(f"/v1/conversations/{cid}").json()["version"]
        resp = c.post("/v1/chat/completions", json=chat_body("remember me", conversation_id=cid))
        assert resp.status_code == 200, resp.text
        conv = c.get(f"/v1/conversations/{cid}").json()
        assert conv["version"] == before + 1
        assert _items(c, cid) == [  # items, as the Conversations API reads them
            ("user", [{"type": "input_text", "text": "remember me"}]),
            (
                "assistant",
                [{"type": "output_text", "text": "echo: remember me", "annotations": []}],
            ),
        ]
        assert "conversation_id" not in (upstream.requests[-1].body or {})

        streamed = c.post(
            "/v1/chat/completions", json=chat_body("and this", conversation_id=cid, stream=True)
        )
        assert streamed.text.rstrip().endswith("data: [DONE]")
        conv = c.get(f"/v1/conversations/{cid}").json()
        assert conv["version"] == before + 2
        role, content = _items(c, cid)[-1]
        assert role == "assistant"
        assert str(content[0]["text"]).startswith("echo:")


def test_failed_or_broken_turn_writes_nothing(keel: ServerThread, upstream: FakeUpstream) -> None:
    with httpx.Client(base_url=keel.url, timeout=10) as c:
        cid = _conversation(c)
        version = c.get(f"/v1/conversations/{cid}").json()["version"]
        upstream.faults.statuses.append(400)
        assert (
            c.post("/v1/chat/completions", json=chat_body("x", conversation_id=cid)).status_code
            == 400
        )
        upstream.faults.drop_after_chunks = 1
        upstream.faults.chunks = 4
        broken = c.post(
            "/v1/chat/completions", json=chat_body("y", conversation_id=cid, stream=True)
        )
        assert "event: error" in broken.text
        conv = c.get(f"/v1/conversations/{cid}").json()
        assert conv["version"] == version
        assert _items(c, cid) == []
        missing = c.post(
            "/v1/chat/completions", json=chat_body("z", conversation_id="no-such-conversation")
        )
        assert missing.status_code == 404
    assert upstream.calls == 2  # the missing conversation was refused before any upstream call


def test_openai_conversation_field_persists_items(
    keel: ServerThread, upstream: FakeUpstream
) -> None:
    client = openai.OpenAI(base_url=keel.url + "/v1", api_key="unused", max_retries=0)
    conv = client.conversations.create()
    for ref in (conv.id, {"id": conv.id}):  # OpenAI's two spellings of `conversation`
        client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"conversation": ref},
        )
        assert "conversation" not in (upstream.requests[-1].body or {})
    items = list(client.conversations.items.list(conv.id, order="asc"))
    assert [(i.role, i.content[0].type) for i in items if isinstance(i, Message)] == [
        ("user", "input_text"),
        ("assistant", "output_text"),
    ] * 2
    assert (client.conversations.retrieve(conv.id).model_extra or {})["version"] == 3
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"conversation": conv.id, "conversation_id": "another"},
        )
    client.close()
