"""Issue 12.9: the OpenAPI document tells the truth; 405 names what is allowed; HEAD works."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from tests.integration.test_foundation import assert_problem

PROBLEM = "application/problem+json"


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


async def _doc(client: httpx.AsyncClient) -> dict[str, Any]:
    resp = await client.get("/openapi.json")
    assert resp.status_code == 200
    doc: dict[str, Any] = resp.json()
    return doc


async def test_every_reference_resolves(client: httpx.AsyncClient) -> None:
    doc = await _doc(client)
    schemas = doc["components"]["schemas"]
    refs = set(_refs(doc))
    assert "#/components/schemas/ChatMessage" in refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    assert "$defs" not in json.dumps(doc)


async def test_errors_are_problem_json_with_their_statuses(client: httpx.AsyncClient) -> None:
    doc = await _doc(client)
    assert "HTTPValidationError" not in json.dumps(doc)
    problem = doc["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "code"} <= set(problem["required"])
    assert "host_not_allowed" in problem["properties"]["code"]["enum"]
    paths = doc["paths"]
    for path, operations in paths.items():
        for method, op in operations.items():
            for status, response in op["responses"].items():
                if status[0] in "45":
                    assert list(response["content"]) == [PROBLEM], (method, path, status)
            if path.startswith("/v1/"):
                assert "401" in op["responses"], (method, path)
    chat = paths["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "404", "413", "415", "422", "429", "502", "503", "504"} <= set(chat)
    update = paths["/v1/conversations/{conversation_id}"]["patch"]["responses"]
    assert {"404", "409", "412", "428"} <= set(update)
    assert "304" in paths["/v1/conversations/{conversation_id}"]["get"]["responses"]


async def test_bearer_scheme_is_declared(client: httpx.AsyncClient) -> None:
    doc = await _doc(client)
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    op = doc["paths"]["/v1/conversations"]["post"]
    assert {"bearer": []} in op["security"]
    assert "security" not in doc["paths"]["/healthz"]["get"]


async def test_chat_operation_documents_rules_not_internals(client: httpx.AsyncClient) -> None:
    doc = await _doc(client)
    op = doc["paths"]["/v1/chat/completions"]["post"]
    for internal in ("hot path", "FastAPI", "pydantic", "measured", "benchmarks"):
        assert internal.lower() not in op["description"].lower()
    assert "text/event-stream" in op["responses"]["200"]["content"]
    message = doc["components"]["schemas"]["ChatMessage"]
    assert set(message["properties"]["role"]["enum"]) >= {"system", "user", "assistant", "tool"}
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["messages"]["maxItems"] == 1000


async def test_405_names_every_allowed_method(client: httpx.AsyncClient) -> None:
    resp = await client.delete("/v1/conversations")
    assert_problem(resp, 405, "method_not_allowed")
    assert resp.headers["allow"] == "GET, HEAD, POST"
    resp = await client.put("/healthz")
    assert_problem(resp, 405, "method_not_allowed")
    assert resp.headers["allow"] == "GET, HEAD"
    resp = await client.head("/v1/chat/completions")
    assert resp.status_code == 405
    assert resp.headers["allow"] == "POST"


async def test_head_on_get_routes(client: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/v1/conversations", "/v1/lifecycle/models", "/v1/models"):
        get = await client.get(path)
        head = await client.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
    # A stream (SSE) answers its head and stops.
    model = (await client.get("/v1/lifecycle/models")).json()["data"][0]["id"]
    head = await client.head(f"/v1/lifecycle/models/{model}/events")
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/event-stream")
    metrics = (await client.get("/metrics")).text
    assert 'method="HEAD",route="/healthz",status="200"' in metrics


async def test_store_rules_are_in_the_schemas(client: httpx.AsyncClient) -> None:
    doc = await _doc(client)
    schemas = doc["components"]["schemas"]
    item = schemas["ItemIn"]["properties"]
    assert set(item["role"]["enum"]) == {"system", "developer", "user", "assistant", "tool"}
    assert item["content"]["anyOf"][0]["maxLength"] == 100_000
    title = schemas["CreateConversationBody"]["properties"]["title"]["anyOf"][0]
    assert title["maxLength"] == 500
    assert schemas["CreateItemsBody"]["properties"]["items"]["maxItems"] == 100
    params = doc["paths"]["/v1/conversations/{conversation_id}/items"]["get"]["parameters"]
    limit = next(p for p in params if p["name"] == "limit")["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, 200)
    conversation_id = next(p for p in params if p["name"] == "conversation_id")["schema"]
    assert conversation_id["maxLength"] == 64
    assert "pattern" in conversation_id
    # A role the store refuses is refused as documented.
    made = await client.post("/v1/conversations", json={"items": [{"role": "bot", "content": "x"}]})
    assert_problem(made, 422, "validation_error")
