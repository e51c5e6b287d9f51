"""The download client's transports: aiohttp for http(s), Range semantics for file://."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from app.lifecycle.component import download_client
from app.lifecycle.file_transport import request_url
from app.lifecycle.hashing import HashPool
from app.lifecycle.transport import DownloadTransport, download_transport
from app.settings import DownloadSettings
from tests.fakes.range_server import RangeServer


async def _drain(client: httpx.AsyncClient, url: str) -> None:
    async with client.stream("GET", url) as resp:
        async for _ in resp.aiter_raw():
            pass


async def test_http_transport_streams_received_chunks_and_maps_errors() -> None:
    transport = download_transport(httpx.Limits(max_connections=2))
    assert isinstance(transport, DownloadTransport)
    data = os.urandom(300_000)
    with RangeServer() as server:
        url = server.add("f.bin", data)
        async with httpx.AsyncClient(transport=transport) as client:
            resp = await client.get(url, headers={"Range": "bytes=1000-"})
            server.faults.drops = [50_000]
            with pytest.raises(httpx.ReadError):  # a dropped connection is an httpx error
                await _drain(client, url)
    assert resp.status_code == 206
    assert resp.content == data[1000:]


async def test_file_urls_answer_like_an_http_server(tmp_path: Path) -> None:
    data = os.urandom(5000)
    path = tmp_path / "a b.bin"
    path.write_bytes(data)
    url = "file://" + str(path).replace(" ", "%20")
    assert str(request_url(url)).startswith("file://localhost/")
    pool = HashPool(1)
    try:
        async with download_client(DownloadSettings(), pool) as client:
            full = await client.get(request_url(url))
            etag = full.headers["etag"]
            part = await client.get(
                request_url(url), headers={"Range": "bytes=4000-", "If-Range": etag}
            )
            changed = await client.get(
                request_url(url), headers={"Range": "bytes=4000-", "If-Range": '"other"'}
            )
            beyond = await client.get(request_url(url), headers={"Range": "bytes=5000-"})
            missing = await client.get(request_url(url + ".nope"))
    finally:
        pool.shutdown()
    assert full.status_code == 200
    assert full.content == data
    assert part.status_code == 206
    assert part.content == data[4000:]
    assert part.headers["content-range"] == "bytes 4000-4999/5000"
    assert changed.status_code == 200
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == "bytes */5000"
    assert missing.status_code == 404


async def test_proxy_variables_keep_httpx_own_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    pool = HashPool(1)
    try:
        async with download_client(DownloadSettings(), pool) as fast:
            assert isinstance(fast._transport, DownloadTransport)
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
        async with download_client(DownloadSettings(), pool) as proxied:
            assert not isinstance(proxied._transport, DownloadTransport)
            assert proxied._mounts  # httpx mounted the proxy from the environment
    finally:
        pool.shutdown()
