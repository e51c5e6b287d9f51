"""aiohttp straight: the default wire under a remote provider.

httpx's client layer over aiohttp (httpx-aiohttp) cost about five times aiohttp's own CPU per
call on the chat hot path (docs/benchmarks.md), so the provider talks to aiohttp directly.
The session is made on first use, inside the running loop, and keeps no cookies: an upstream's
``Set-Cookie`` must not leak from one client's request into another's.
"""

from __future__ import annotations

from typing import Literal

import aiohttp
from yarl import URL

from app.providers.wire import Timeouts, WireError, WireReason

_MAX_CACHED_URLS = 32  # the provider's paths are a handful of constants
# What aiohttp raises for a failed exchange (its read timeouts are TimeoutError).
_FAILURES = (aiohttp.ClientError, TimeoutError, OSError)


class AiohttpWire:
    def __init__(self, base_url: str, headers: dict[str, str], *, max_connections: int) -> None:
        self._base = base_url.rstrip("/") + "/"
        self._headers = headers
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}
        self._timeouts: Timeouts | None = None
        self._timeout = aiohttp.ClientTimeout(total=None)

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, keepalive_timeout=30.0
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self._session

    def _url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:
            url = URL(self._base + path.lstrip("/"))
            if len(self._urls) < _MAX_CACHED_URLS:
                self._urls[path] = url
        return url

    async def send(
        self,
        method: Literal["GET", "POST"],
        path: str,
        payload: bytes | None,
        headers: dict[str, str],
        timeouts: Timeouts,
    ) -> AiohttpResponse:
        session = self._session or self._open()
        timeout = self._timeout
        if timeouts is not self._timeouts:  # the provider passes one object while time allows
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=timeouts.pool,
                sock_connect=timeouts.connect,
                sock_read=timeouts.read,
            )
            self._timeouts, self._timeout = timeouts, timeout
        try:
            resp = await session.request(
                method,
                self._url(path),
                data=payload,
                headers=headers,
                allow_redirects=False,
                timeout=timeout,
            )
        except _FAILURES as exc:
            raise WireError(_reason(exc)) from exc
        return AiohttpResponse(resp)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class AiohttpResponse:
    __slots__ = ("_resp", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status

    def header(self, name: str) -> str | None:
        return self._resp.headers.get(name)

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except _FAILURES as exc:
            self._resp.close()
            raise WireError(_reason(exc)) from exc
        finally:
            self._resp.release()

    async def next_chunk(self) -> bytes:
        try:
            return await self._resp.content.readany()
        except _FAILURES as exc:
            raise WireError(_reason(exc)) from exc

    async def aclose(self) -> None:
        # Back to the pool if the answer was read to its end; aiohttp closes it otherwise.
        self._resp.release()


def _reason(exc: BaseException) -> WireReason:
    if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, TimeoutError):  # socket read timeouts included
        return "timeout"
    if isinstance(
        exc,
        aiohttp.ServerDisconnectedError
        | aiohttp.ClientPayloadError
        | aiohttp.ClientOSError
        | ConnectionError,
    ):
        return "reset"
    return "transport"
