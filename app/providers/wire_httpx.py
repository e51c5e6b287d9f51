"""httpx as the wire: ``http_transport = "httpx"``, or any injected ``httpx`` transport.

The narrow provider tests use it (respx patches httpx's own transport); aiohttp is the
default on the hot path (wire_aiohttp.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Literal

import httpx

from app.providers.wire import Timeouts, WireError, WireReason


class HttpxWire:
    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=min(max_connections, 64),
                keepalive_expiry=30.0,
            ),
            transport=transport,
            follow_redirects=False,
            # No cookies kept: an upstream's Set-Cookie must not ride along on the next
            # client's request.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        )

    async def send(
        self,
        method: Literal["GET", "POST"],
        path: str,
        payload: bytes | None,
        headers: dict[str, str],
        timeouts: Timeouts,
    ) -> HttpxResponse:
        request = self._client.build_request(
            method,
            path,
            content=payload,
            headers=headers,
            timeout=httpx.Timeout(
                connect=timeouts.connect,
                read=timeouts.read,
                write=timeouts.connect,
                pool=timeouts.pool,
            ),
        )
        try:
            resp = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise WireError(_reason(exc)) from exc
        return HttpxResponse(resp)

    async def aclose(self) -> None:
        await self._client.aclose()


class HttpxResponse:
    __slots__ = ("_chunks", "_resp", "status")

    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.status = resp.status_code
        self._chunks: AsyncIterator[bytes] | None = None

    def header(self, name: str) -> str | None:
        value: str | None = self._resp.headers.get(name)
        return value

    async def read(self) -> bytes:
        try:
            return await self._resp.aread()
        except httpx.HTTPError as exc:
            raise WireError(_reason(exc)) from exc
        finally:
            await self._resp.aclose()

    async def next_chunk(self) -> bytes:
        if self._chunks is None:
            self._chunks = self._resp.aiter_raw().__aiter__()
        try:
            while True:
                chunk = await anext(self._chunks)
                if chunk:
                    return chunk
        except StopAsyncIteration:
            return b""
        except httpx.HTTPError as exc:
            raise WireError(_reason(exc)) from exc

    async def aclose(self) -> None:
        await self._resp.aclose()


def _reason(exc: httpx.HTTPError) -> WireReason:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return "connect"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return "reset"
    return "transport"
