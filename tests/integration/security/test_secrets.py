"""DESIGN §10: a provider's base_url credentials reach no response, diagnostics included,
and the log lines of a request to it mask them."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from app.main import create_app
from app.settings import Settings
from tests.conftest import asgi_client

SECRET = "s3cret-in-url"


async def test_no_response_shows_base_url_credentials(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    # Port 9 on loopback: nothing listens, so the chat call fails fast without a network.
    base_url = f"http://user:{SECRET}@127.0.0.1:9/v1?api_key={SECRET}"
    settings = make_settings(
        providers={"cloud": {"base_url": base_url, "models": ["m"]}},
        routes={"chat": ["cloud/m"]},
    )
    caplog.set_level(logging.DEBUG)
    async with asgi_client(create_app(settings)) as client:
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code >= 400
        pages = [chat.text]
        for path in ("/v1/diagnostics", "/v1/readiness", "/v1/readiness?format=text", "/metrics"):
            resp = await client.get(path)
            pages.append(resp.text)
        pages.append((await client.get("/v1/models")).text)
    for page in pages:
        assert SECRET not in page
    keel = [h for h in logging.getLogger().handlers if getattr(h, "_keel", False)]
    assert keel
    for record in caplog.records:
        assert SECRET not in keel[0].format(record)
