"""What the request path must not do per request: costs measured in bench/proxy_overhead."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry import trace


async def test_requests_do_not_consult_otel_providers(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = trace.get_tracer_provider

    def counting() -> trace.TracerProvider:
        nonlocal calls
        calls += 1
        return real()

    # FastAPI's hook calls through this module attribute.
    monkeypatch.setattr(trace, "get_tracer_provider", counting)
    for _ in range(3):
        assert (await client.get("/healthz")).status_code == 200
    assert calls == 0
