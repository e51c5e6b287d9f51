"""DESIGN §10: what a hostile web page can make a browser send is refused at the edge."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.conftest import asgi_client
from tests.integration.test_foundation import assert_problem

TOKEN = "t0ken-for-tests-0123456789"
APP_ORIGIN = "http://app.example:3000"
JSON = {"content-type": "application/json"}


async def test_rebinding_host_is_refused(client: httpx.AsyncClient) -> None:
    made = await client.post("/v1/conversations", json={"title": "private"})
    assert made.status_code == 201
    for host in ("evil.example", "evil.example:8080", "127.0.0.1.evil.example"):
        resp = await client.get("/v1/conversations", headers={"host": host})
        assert_problem(resp, 421, "host_not_allowed")
        assert "private" not in resp.text
    for host in ("localhost:8080", "127.0.0.1", "127.0.0.1:8080", "[::1]:8080", "LOCALHOST"):
        assert (await client.get("/v1/conversations", headers={"host": host})).status_code == 200


async def test_allowed_hosts_setting(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(allowed_hosts="keel.internal, api.example"))
    async with asgi_client(app) as client:
        assert (await client.get("/healthz", headers={"host": "keel.internal:80"})).is_success
        assert (await client.get("/healthz", headers={"host": "api.example"})).is_success
        assert_problem(await client.get("/healthz"), 421, "host_not_allowed")  # localhost
    app = create_app(make_settings(allowed_hosts="*"))
    async with asgi_client(app) as client:
        assert (await client.get("/healthz", headers={"host": "anything.example"})).is_success


async def test_cross_origin_requests_are_refused(client: httpx.AsyncClient) -> None:
    evil = {"origin": "http://evil.example", **JSON}
    resp = await client.post("/v1/conversations", json={"title": "x"}, headers=evil)
    assert_problem(resp, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in resp.headers
    # Preflights from an origin that is not allowed get no CORS grant either.
    pre = await client.options(
        "/v1/conversations",
        headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
    )
    assert pre.status_code == 403
    assert "access-control-allow-origin" not in pre.headers
    # Sandboxed frames and file:// pages send "null".
    resp = await client.get("/v1/conversations", headers={"origin": "null"})
    assert_problem(resp, 403, "origin_not_allowed")
    # A cross-site subresource (img, script) carries no Origin, only fetch metadata.
    sub = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors"}
    assert_problem(await client.get("/v1/conversations", headers=sub), 403, "origin_not_allowed")
    # ... while a user following a link to Keel is a navigation, and is served.
    nav = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}
    assert (await client.get("/healthz", headers=nav)).status_code == 200
    assert (await client.get("/v1/conversations")).json()["data"] == []


async def test_same_origin_page_is_served(client: httpx.AsyncClient) -> None:
    headers = {"origin": "http://localhost", "sec-fetch-site": "same-origin", **JSON}
    resp = await client.post("/v1/conversations", json={"title": "x"}, headers=headers)
    assert resp.status_code == 201
    assert "access-control-allow-origin" not in resp.headers


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'),
        ("application/x-www-form-urlencoded", b"model=m"),
        ("multipart/form-data; boundary=x", b"--x--"),
        (None, b'{"model": "m"}'),
    ],
)
async def test_json_endpoints_require_json(
    client: httpx.AsyncClient, content_type: str | None, body: bytes
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    for path in ("/v1/chat/completions", "/v1/conversations", "/v1/lifecycle/downloads"):
        req = client.build_request("POST", path, content=body, headers=headers)
        assert_problem(await client.send(req), 415, "unsupported_media_type")
    # A plain form post with no fields still names its type: refused, no download starts.
    form = {"content-type": "application/x-www-form-urlencoded"}
    resp = await client.post("/v1/lifecycle/models/whatever/download", headers=form)
    assert_problem(resp, 415, "unsupported_media_type")


async def test_json_with_parameters_and_bodiless_posts_pass(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/v1/conversations",
        content=b'{"title": "x"}',
        headers={"content-type": "Application/JSON; charset=utf-8"},
    )
    assert resp.status_code == 201
    # curl -X POST with no body: not a media-type problem (the route answers for itself).
    resp = await client.post("/v1/lifecycle/models/no-such-model/download")
    assert resp.status_code != 415


async def test_cors_for_an_allowed_origin(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(cors_origins=f"{APP_ORIGIN}/", api_token=TOKEN))
    async with asgi_client(app) as client:
        pre = await client.options(
            "/v1/conversations",
            headers={
                "origin": APP_ORIGIN,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type, idempotency-key",
            },
        )
        # Preflights carry no credentials: answered before the token check.
        assert pre.status_code == 204, pre.text
        assert pre.headers["access-control-allow-origin"] == APP_ORIGIN
        assert "POST" in pre.headers["access-control-allow-methods"]
        allowed = pre.headers["access-control-allow-headers"].lower()
        assert {"authorization", "content-type", "idempotency-key"} <= {
            h.strip() for h in allowed.split(",")
        }
        assert "origin" in pre.headers["vary"].lower()

        headers = {"origin": APP_ORIGIN, "authorization": f"Bearer {TOKEN}", **JSON}
        resp = await client.post("/v1/conversations", json={"title": "x"}, headers=headers)
        assert resp.status_code == 201
        assert resp.headers["access-control-allow-origin"] == APP_ORIGIN
        assert "etag" in resp.headers["access-control-expose-headers"].lower()
        # The page can read Keel's errors too, not an opaque network failure.
        resp = await client.get("/v1/conversations", headers={"origin": APP_ORIGIN})
        assert_problem(resp, 401, "unauthorized")
        assert resp.headers["access-control-allow-origin"] == APP_ORIGIN
        # Another origin is still refused.
        resp = await client.get("/v1/conversations", headers={"origin": "http://app.example"})
        assert_problem(resp, 403, "origin_not_allowed")


async def test_more_than_one_authorization_header_is_refused(
    make_settings: Callable[..., Settings],
) -> None:
    good, bad = f"Bearer {TOKEN}", "Bearer wrong-token-000000000000"
    for token in (TOKEN, None):
        async with asgi_client(create_app(make_settings(api_token=token))) as client:
            for pair in ([good, bad], [bad, good], [good, good]):
                headers = [("authorization", value) for value in pair]
                resp = await client.get("/v1/conversations", headers=headers)
                body = assert_problem(resp, 400, "bad_request")
                assert "Authorization" in str(body["detail"])
            resp = await client.get("/healthz", headers=[("host", "localhost")] * 2)
            assert_problem(resp, 400, "bad_request")
