"""The skeleton's promises: ops endpoints, problem+json, request ids, auth, limits, restarts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import select

from app.main import create_app
from app.settings import Settings
from app.store.tables import settings_kv
from tests.conftest import asgi_client

TOKEN = "t0ken-for-tests-0123456789"


def assert_problem(resp: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = resp.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["request_id"] == resp.headers["x-request-id"]
    assert {"type", "title", "detail"} <= body.keys()
    return body


async def test_ops_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert 'keel_http_requests_total{method="GET",route="/readyz",status="200"} 1.0' in metrics.text


async def test_unknown_route_is_problem_json(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/does-not-exist")
    body = assert_problem(resp, 404, "not_found")
    assert len(str(body["request_id"])) >= 16
    assert_problem(await client.delete("/healthz"), 405, "method_not_allowed")


async def test_request_id_honoured_when_sane(client: httpx.AsyncClient) -> None:
    resp = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123"
    resp = await client.get("/healthz", headers={"X-Request-Id": "bad id\twith <junk>"})
    assert resp.headers["x-request-id"] != "bad id\twith <junk>"
    assert len(resp.headers["x-request-id"]) == 32


class Body(BaseModel):
    name: str
    count: int


def _app_with_test_routes(settings: Settings) -> FastAPI:
    app = create_app(settings)

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("SELECT secret FROM /etc/keel/passwords.db failed: hunter2")

    @app.post("/v1/echo")
    async def echo(body: Body) -> dict[str, str]:
        return {"name": body.name}

    return app


async def test_unhandled_exception_leaks_nothing(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with asgi_client(_app_with_test_routes(settings)) as client:
        resp = await client.get("/v1/boom")
    body = assert_problem(resp, 500, "internal_error")
    text = resp.text
    for leak in ("SELECT", "/etc/", "hunter2", "Traceback", "RuntimeError", ".py"):
        assert leak not in text
    assert body["retryable"] is False
    logged = [r for r in caplog.records if r.exc_info and getattr(r, "request_id", None)]
    assert logged
    assert logged[0].request_id == body["request_id"]  # type: ignore[attr-defined]


async def test_validation_errors_name_fields_not_values(settings: Settings) -> None:
    async with asgi_client(_app_with_test_routes(settings)) as client:
        resp = await client.post("/v1/echo", json={"name": "x", "count": "s3cret-value"})
        json_type = {"content-type": "application/json"}
        bad = await client.post("/v1/echo", content=b"{not json", headers=json_type)
        assert bad.status_code == 422
    body = assert_problem(resp, 422, "validation_error")
    assert body["errors"] == [{"field": "body.count", "message": body["errors"][0]["message"]}]  # type: ignore[index]
    assert "s3cret-value" not in resp.text


async def test_body_size_limit(make_settings: Callable[..., Settings]) -> None:
    app = _app_with_test_routes(make_settings(max_body_bytes=1024))
    async with asgi_client(app, headers={"content-type": "application/json"}) as client:
        big = b'{"name": "' + b"x" * 2000 + b'", "count": 1}'
        assert_problem(await client.post("/v1/echo", content=big), 413, "payload_too_large")

        # No Content-Length: the limit must hold while streaming too.
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"x" * 600

        assert_problem(await client.post("/v1/echo", content=chunks()), 413, "payload_too_large")


async def test_token_guards_v1_only(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(api_token=TOKEN))
    async with asgi_client(app) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        resp = await client.get("/v1/anything")
        assert_problem(resp, 401, "unauthorized")
        assert resp.headers["www-authenticate"] == "Bearer"
        wrong = await client.get("/v1/anything", headers={"Authorization": "Bearer nope"})
        assert_problem(wrong, 401, "unauthorized")
        ok = await client.get("/v1/anything", headers={"Authorization": f"Bearer {TOKEN}"})
        assert_problem(ok, 404, "not_found")


async def test_restart_keeps_data(settings: Settings) -> None:
    from datetime import UTC, datetime

    from app.store.database import Database

    async with asgi_client(create_app(settings)):
        db = Database(settings.effective_database_url, settings.store)
        async with db.write() as conn:
            await conn.execute(
                settings_kv.insert().values(
                    key="probe", value={"n": 1}, updated_at=datetime.now(UTC)
                )
            )
        await db.dispose()
    async with asgi_client(create_app(settings)) as client:
        assert (await client.get("/readyz")).status_code == 200
        db = Database(settings.effective_database_url, settings.store)
        async with db.read() as conn:
            row = (await conn.execute(select(settings_kv.c.value))).one()
        await db.dispose()
    assert row.value == {"n": 1}


async def test_unmigrated_database_is_not_ready(
    make_settings: Callable[..., Settings], db_url: str
) -> None:
    app = create_app(make_settings(database_url=db_url, auto_migrate=False))
    async with asgi_client(app) as client:
        resp = await client.get("/readyz")
        assert resp.status_code == 503
        assert "migrate" in resp.json()["reason"]
        assert (await client.get("/healthz")).status_code == 200
    # Once migrated (as a deploy step would), the same settings serve ready.
    async with asgi_client(create_app(make_settings(database_url=db_url))) as client:
        assert (await client.get("/readyz")).status_code == 200
    async with asgi_client(
        create_app(make_settings(database_url=db_url, auto_migrate=False))
    ) as client:
        assert (await client.get("/readyz")).status_code == 200


async def test_real_socket_server(live_server) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=live_server.url) as c:
        assert (await c.get("/healthz")).status_code == 200
        resp = await c.get("/v1/does-not-exist")
        assert resp.headers["content-type"] == "application/problem+json"


def test_data_dir_default_is_relative(tmp_path: Path) -> None:
    s = Settings()
    assert s.effective_database_url == "sqlite+aiosqlite:///data/keel.db"
