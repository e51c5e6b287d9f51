"""The hot routes answer the same whether Keel's middleware serves them directly
(``app/api/direct.py``) or FastAPI's router does (``direct_routes = false``): status, headers
that matter, bodies, errors, streams, replays and the metrics they leave."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.types import Scope

from app.settings import Settings
from tests.fakes.servers import ServerThread
from tests.fakes.upstream import FakeUpstream
from tests.integration.chat.conftest import chat_body

JSON = {"Content-Type": "application/json"}


def _requests() -> list[tuple[str, str, dict[str, str], bytes]]:
    chat = json.dumps(chat_body()).encode()
    return [
        ("POST", "/v1/chat/completions", JSON, chat),
        ("POST", "/v1/chat/completions", JSON, json.dumps(chat_body(stream=True)).encode()),
        ("POST", "/v1/chat/completions", JSON, b"{not json"),
        ("POST", "/v1/chat/completions", JSON, json.dumps({"model": "chat"}).encode()),
        ("POST", "/v1/chat/completions", JSON, json.dumps(chat_body(model="nope")).encode()),
        ("POST", "/v1/chat/completions", {**JSON, "X-Request-Timeout": "-1"}, chat),
        ("POST", "/v1/chat/completions", {"Content-Type": "text/plain"}, chat),
        ("POST", "/v1/chat/completions", {**JSON, "Idempotency-Key": "k-1"}, chat),
        ("POST", "/v1/chat/completions", {**JSON, "Idempotency-Key": "k-1"}, chat),
        ("POST", "/v1/chat/completions", {**JSON, "Idempotency-Key": "k-1"}, b'{"x": 1}'),
        ("POST", "/v1/chat/completions", JSON, b"x" * 5000),
        ("GET", "/v1/chat/completions", {}, b""),
        ("POST", "/v1/embeddings", JSON, json.dumps({"model": "chat", "input": "hi"}).encode()),
        ("POST", "/v1/completions", JSON, json.dumps({"model": "chat", "prompt": "hi"}).encode()),
        ("POST", "/v1/embeddings", JSON, b"[]"),
    ]


_KEPT_HEADERS = (
    "content-type",
    "x-request-id",
    "x-keel-target",
    "x-keel-attempts",
    "idempotent-replayed",
    "allow",
    "x-should-retry",
    "retry-after",
)


def _exchange(server: ServerThread) -> list[dict[str, Any]]:
    seen = []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for i, (method, path, headers, body) in enumerate(_requests()):
            resp = client.request(
                method, path, headers={**headers, "X-Request-Id": f"req-{i}"}, content=body
            )
            seen.append(
                {
                    "request": (method, path, body[:40]),
                    "status": resp.status_code,
                    "headers": {h: resp.headers.get(h) for h in _KEPT_HEADERS},
                    "body": resp.content,
                }
            )
        metrics = client.get("/metrics").text
    routes = sorted(
        line.split(" ")[0]
        for line in metrics.splitlines()
        if line.startswith("keel_http_requests_total{") and "/metrics" not in line
    )
    return [*seen, {"metrics": routes}]


def test_direct_and_router_answer_alike(
    chat_settings: Callable[..., Settings],
    serve: Callable[..., ServerThread],
    upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    direct = _exchange(serve(chat_settings(data_dir=tmp_path / "a", max_body_bytes=4096)))
    upstream.reset()
    routed = _exchange(
        serve(chat_settings(data_dir=tmp_path / "b", max_body_bytes=4096, direct_routes=False))
    )
    assert [r.get("status") for r in direct] == [r.get("status") for r in routed]
    for mine, theirs in zip(direct, routed, strict=True):
        assert mine == theirs
    statuses = [r["status"] for r in direct[:-1]]
    assert statuses == [200, 200, 422, 422, 404, 422, 415, 200, 200, 422, 413, 405, 200, 200, 422]
    assert any('route="/v1/chat/completions"' in line for line in direct[-1]["metrics"])


def test_direct_routes_skip_fastapi_layers(
    chat_settings: Callable[..., Settings],
    serve: Callable[..., ServerThread],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    entered: list[str] = []
    original = ServerErrorMiddleware.__call__

    async def counting(self: ServerErrorMiddleware, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            entered.append(scope["path"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(ServerErrorMiddleware, "__call__", counting)
    body = json.dumps(chat_body()).encode()
    for direct in (True, False):
        server = serve(chat_settings(data_dir=tmp_path / str(direct), direct_routes=direct))
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.post("/v1/chat/completions", content=body, headers=JSON).is_success
            assert client.get("/v1/models").is_success
    # Directly served: only the models listing entered FastAPI's stack; routed: both did.
    assert entered == ["/v1/models", "/v1/chat/completions", "/v1/models"]


def test_gauges_read_at_scrape_time_tell_the_truth(
    chat_settings: Callable[..., Settings], serve: Callable[..., ServerThread]
) -> None:
    """In-flight requests and limiter slots are read when scraped, not pushed per request."""
    server = serve(chat_settings())
    body = json.dumps(chat_body()).encode()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(3):
            assert client.post("/v1/chat/completions", content=body, headers=JSON).is_success
        metrics = client.get("/metrics").text
    assert "keel_http_requests_in_flight 1.0" in metrics  # the scrape itself
    assert 'keel_limiter_in_use{provider="cloud"} 0.0' in metrics
    assert 'keel_limiter_queued{provider="cloud"} 0.0' in metrics
