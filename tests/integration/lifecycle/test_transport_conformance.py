"""The download transport (aiohttp under httpx, chunks as received, a cut body's buffered
bytes salvaged from aiohttp's private buffer) against httpx's own transport: byte for byte
the same bodies, ranges included; a cut body yields only a true prefix, then the same kind of
error."""

from __future__ import annotations

import random

import httpx
import pytest

from app.lifecycle.transport import download_transport
from tests.fakes.range_server import RangeServer

LIMITS = httpx.Limits(max_connections=4)


async def _read(transport: httpx.AsyncBaseTransport, url: str, **headers: str) -> bytes:
    async with (
        httpx.AsyncClient(transport=transport) as client,
        client.stream("GET", url, headers=headers) as resp,
    ):
        assert resp.status_code in (200, 206)
        return b"".join([chunk async for chunk in resp.aiter_raw()])


@pytest.mark.parametrize("size", [0, 1, 16 * 1024 - 1, 1024 * 1024 + 3])
async def test_bodies_are_byte_for_byte_those_of_the_plain_transport(size: int) -> None:
    data = random.Random(size).randbytes(size)
    with RangeServer() as server:
        url = server.add("f.bin", data)
        ours = await _read(download_transport(LIMITS), url)
        plain = await _read(httpx.AsyncHTTPTransport(limits=LIMITS), url)
        assert ours == plain == data
        if size > 10:
            rng = f"bytes={size // 3}-"
            ours = await _read(download_transport(LIMITS), url, Range=rng)
            plain = await _read(httpx.AsyncHTTPTransport(limits=LIMITS), url, Range=rng)
            assert ours == plain == data[size // 3 :]


@pytest.mark.parametrize("make", [download_transport, httpx.AsyncHTTPTransport])
async def test_a_cut_body_yields_a_true_prefix_then_a_transport_error(make: type) -> None:
    data = random.Random(7).randbytes(300_000)
    with RangeServer() as server:
        url = server.add("f.bin", data)
        server.faults.drops = [100_000]
        got = bytearray()

        async def read() -> None:
            async with (
                httpx.AsyncClient(transport=make(limits=LIMITS)) as client,
                client.stream("GET", url) as resp,
            ):
                async for chunk in resp.aiter_raw():
                    got.extend(chunk)

        with pytest.raises(httpx.TransportError):
            await read()
        assert bytes(got) == data[: len(got)]
        assert len(got) <= 100_000
