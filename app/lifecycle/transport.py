"""The HTTP transport for model downloads: httpx's own, reading up to 1 MiB per socket read.

httpcore asks its network stream for at most 64 KiB per read, while the event loop hands over
up to 256 KiB at a time, so every loop read is sliced (and copied) into four, each slice paying
the full per-read cost of anyio, httpcore and h11. For a 1 GiB file that per-read overhead, not
the bytes, is what bounds throughput (bench/download: about 1.4x faster with large reads).
httpcore's supported extension point for this is the network backend; httpx does not expose it,
so the one private attribute touched is the pool's ``_network_backend`` (checked by a test).
"""

# ruff: noqa: ASYNC109  # these signatures are httpcore's network interface, timeout included
from __future__ import annotations

import ssl
import typing

import httpcore
import httpx

READ_BYTES = 1024 * 1024


class _LargeReadStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max(max_bytes, READ_BYTES), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _LargeReadStream(await self._inner.start_tls(ssl_context, server_hostname,
                                                            timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class LargeReadBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _LargeReadStream(await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address,
            socket_options=socket_options))

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _LargeReadStream(await self._inner.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def download_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(limits=limits, retries=0)
    pool = transport._pool
    pool._network_backend = LargeReadBackend(pool._network_backend)
    return transport
