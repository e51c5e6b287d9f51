"""Every log line written while a request is served carries its ``request_id``, including
lines from code that never sees the request (the provider's "upstream answered 500")."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from typing import Any

from app.main import create_app
from app.settings import Settings
from tests.conftest import asgi_client
from tests.fakes.upstream import FakeUpstream
from tests.integration.chat.conftest import chat_body


async def test_lines_written_while_serving_carry_the_request_id(
    chat_settings: Callable[..., Settings], upstream: FakeUpstream
) -> None:
    upstream.faults.statuses.extend([500, 500, 500])
    app = create_app(chat_settings(log_format="json"))
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_keel", False)]
    assert len(ours) == 1
    assert isinstance(ours[0], logging.StreamHandler)
    captured = io.StringIO()
    ours[0].setStream(captured)
    async with asgi_client(app) as client:
        resp = await client.post(
            "/v1/chat/completions", json=chat_body(), headers={"X-Request-Id": "trace-42"}
        )
    assert resp.status_code == 502
    lines: list[dict[str, Any]] = [json.loads(line) for line in captured.getvalue().splitlines()]
    answered = [line for line in lines if line["msg"] == "upstream answered 500"]
    assert len(answered) == 3
    assert {line.get("request_id") for line in answered} == {"trace-42"}
    ready = [line for line in lines if line["msg"] == "keel ready"]
    assert ready
    assert all("request_id" not in line for line in ready)  # not serving: no id
