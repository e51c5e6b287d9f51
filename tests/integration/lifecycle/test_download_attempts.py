"""A failed download job tells the truth about its attempts, and a failed name lookup is
reported as ``dns``, not as a timeout."""

from __future__ import annotations

import socket

import httpx

from app.lifecycle.answers import network_reason
from tests.conftest import asgi_client
from tests.fakes.servers import free_port
from tests.integration.lifecycle.conftest import Harness, payload, wait_state


async def test_failed_job_reports_every_attempt(harness: Harness) -> None:
    # Nothing listens there: every attempt fails at connect, before any progress report.
    harness.model("tiny", payload(1000), url=f"http://127.0.0.1:{free_port()}/tiny.bin")
    async with asgi_client(harness.app(harness.settings(network_retries=2))) as client:
        resp = await client.post("/v1/lifecycle/models/tiny/download")
        assert resp.status_code == 202, resp.text
        view = await wait_state(client, "tiny", {"installed", "error"})
        jobs = (await client.get("/v1/lifecycle/downloads")).json()["data"]
    assert view["state"] == "error"
    assert jobs[0]["state"] == "failed"
    assert jobs[0]["attempt"] == 3  # the first try and network_retries=2


def _chained(outer: httpx.TransportError, cause: BaseException) -> httpx.TransportError:
    outer.__cause__ = cause
    return outer


def test_network_reason_reads_the_root_cause() -> None:
    gai = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    # httpx-aiohttp reports aiohttp's ClientConnectorDNSError as ConnectTimeout.
    assert network_reason(_chained(httpx.ConnectTimeout("no host"), gai)) == "dns"
    assert network_reason(_chained(httpx.ConnectError("no host"), gai)) == "dns"
    refused = ConnectionRefusedError(111, "Connection refused")
    assert network_reason(_chained(httpx.ConnectTimeout("refused"), refused)) == "connect_error"
    assert network_reason(_chained(httpx.ConnectTimeout("slow"), TimeoutError())) == "timeout"
    assert network_reason(httpx.ReadTimeout("slow")) == "timeout"
    assert network_reason(httpx.ReadError("reset")) == "network_error"
