"""Issue 12.1: input that the database, the file system or a JSON encoder refuses is a 4xx
naming the field, never a 500. One rule per kind of value (app/values.py)."""

from __future__ import annotations

import json

import httpx
import pytest

from app.values import check_json
from tests.integration.test_foundation import assert_problem

JSON = {"content-type": "application/json"}
HUGE = "99999999999999999999999"
TWO_63 = str(2**63)


async def _post(
    client: httpx.AsyncClient, path: str, raw: str, method: str = "POST"
) -> httpx.Response:
    return await client.request(method, path, content=raw.encode(), headers=JSON)


async def _conversation(client: httpx.AsyncClient) -> str:
    made = await _post(client, "/v1/conversations", '{"title": "t"}')
    assert made.status_code == 201
    cid: str = made.json()["id"]
    return cid


@pytest.mark.parametrize(
    "raw",
    [
        '{"metadata": {"x": NaN}}',
        '{"metadata": {"x": Infinity}}',
        '{"metadata": {"x": -Infinity}}',
        '{"metadata": {"x": [1, {"y": 1e400}]}}',
        '{"metadata": {"x": ' + HUGE + "}}",
        '{"title": "\\ud800"}',
        '{"title": "ok \\udfff"}',
        '{"metadata": {"\\ud800": 1}}',
        '{"metadata": {"k": "\\udc00"}}',
        '{"title": "a\\u0000b"}',
        '{"metadata": {"k": "\\u0000"}}',
        '{"metadata": {"\\u0000": 1}}',
        '{"items": [{"role": "user", "content": "x\\u0000"}]}',
        '{"items": [{"role": "user", "content": [{"type": "input_text", "text": "\\u0000"}]}]}',
        '{"metadata": ' + '{"a": ' * 40 + "1" + "}" * 41,
    ],
)
async def test_conversation_bodies(client: httpx.AsyncClient, raw: str) -> None:
    assert_problem(await _post(client, "/v1/conversations", raw), 422, "validation_error")
    cid = await _conversation(client)
    resp = await _post(client, f"/v1/conversations/{cid}", raw, method="PATCH")
    assert_problem(resp, 422, "validation_error")


@pytest.mark.parametrize("version", [HUGE, TWO_63, str(2**31), "95042488468", "-1"])
async def test_versions_beyond_their_column(client: httpx.AsyncClient, version: str) -> None:
    cid = await _conversation(client)
    raw = '{"title": "x", "expected_version": ' + version + "}"
    resp = await _post(client, f"/v1/conversations/{cid}", raw, method="PATCH")
    assert_problem(resp, 422, "validation_error")
    resp = await _post(
        client, f"/v1/conversations/{cid}", '{"expected_version": ' + version + "}", "DELETE"
    )
    assert_problem(resp, 422, "validation_error")
    resp = await client.get(f"/v1/conversations/{cid}", params={"since_version": version})
    assert_problem(resp, 422, "validation_error")
    # If-Match tags are compared, never sent to the database: too long a tag is just stale.
    resp = await client.patch(
        f"/v1/conversations/{cid}", json={"title": "x"}, headers={"if-match": f'"{version}"'}
    )
    assert_problem(resp, 412, "precondition_failed")
    assert (await client.get(f"/v1/conversations/{cid}")).json()["version"] == 1


async def test_message_content_and_role_must_be_unicode(client: httpx.AsyncClient) -> None:
    cid = await _conversation(client)
    for message in (
        '{"role": "user", "content": "a\\ud800b"}',
        '{"role": "\\udc00", "content": "x"}',
        '{"role": "user", "content": "a\\u0000b"}',
    ):
        raw = '{"messages": [' + message + "]}"
        resp = await _post(client, f"/v1/conversations/{cid}/messages", raw)
        assert_problem(resp, 422, "validation_error")
        resp = await _post(
            client, f"/v1/conversations/{cid}/items", raw.replace("messages", "items")
        )
        assert_problem(resp, 422, "validation_error")
    assert (await client.get(f"/v1/conversations/{cid}")).json()["version"] == 1


@pytest.mark.parametrize("after", ["x" * 5000, "x\x00y", "9999-12-31T23:59:59-23:59", "[" * 150])
async def test_crafted_page_cursors(client: httpx.AsyncClient, after: str) -> None:
    # Cursors are ids (OpenAI's `after`): an unknown one is a 400, whatever it holds.
    resp = await client.get("/v1/conversations", params={"after": after})
    assert_problem(resp, 400, "bad_request")
    cid = await _conversation(client)
    resp = await client.get(f"/v1/conversations/{cid}/items", params={"after": after})
    assert_problem(resp, 400, "bad_request")


@pytest.mark.parametrize(
    "tail",
    [
        '"temperature": Infinity',
        '"temperature": -Infinity',
        '"temperature": NaN',
        '"top_p": 1e400',
        '"logit_bias": {"50256": -1e999}',
    ],
)
async def test_chat_bodies_forward_only_valid_json(client: httpx.AsyncClient, tail: str) -> None:
    raw = '{"model": "m", "messages": [{"role": "user", "content": "hi"}], ' + tail + "}"
    resp = await _post(client, "/v1/chat/completions", raw)
    # Validated before routing: not "model not found", and never forwarded upstream.
    assert_problem(resp, 422, "validation_error")
    for content in ('[{"type": "text", "text": "hi", "weight": Infinity}]', '"a\\u0000b"'):
        raw = '{"model": "m", "messages": [{"role": "user", "content": ' + content + "}]}"
        resp = await _post(client, "/v1/chat/completions", raw)
        assert_problem(resp, 422, "validation_error")


@pytest.mark.parametrize(
    "root",
    [
        "/tmp/" + "a" * 256,
        "/tmp/" + "é" * 128,  # 256 bytes in UTF-8
        "/tmp/" + "/".join(["b" * 200] * 21),
        "/tmp/x\x00y",
        "/tmp/\udc80",
    ],
)
async def test_storage_paths_beyond_file_system_limits(
    client: httpx.AsyncClient, root: str
) -> None:
    body = json.dumps({"root": root, "create": True})
    for path in ("/v1/lifecycle/storage", "/v1/lifecycle/storage?dry_run=true"):
        resp = await _post(client, path, body, method="PUT")
        assert_problem(resp, 422, "validation_error")
    body = json.dumps({"overrides": {"llm": root}})
    assert_problem(
        await _post(client, "/v1/lifecycle/storage", body, "PUT"), 422, "validation_error"
    )


def test_check_json_accepts_plain_json() -> None:
    check_json({"a": [1, 2.5, -(2**63), 2**63 - 1, "é", None, True, {"b": "🙂"}]})
    for bad in (float("nan"), 2**63, {"x": object()}, {1: "int key"}):
        with pytest.raises(ValueError, match=r"must|numbers|integers|keys|nests"):
            check_json(bad)
