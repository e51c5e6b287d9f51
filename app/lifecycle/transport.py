"""The HTTP transport for model downloads: aiohttp underneath httpx, bodies as they arrive.

Measured with bench/download, reading a 1 GiB body over loopback on two cores:

- httpx's own transport (httpcore + anyio + h11): ~0.8 GB/s for the read alone, ~1.3 CPU-s
  per GiB. anyio pauses and resumes the socket around every read (epoll_ctl each time), h11
  copies each byte twice more, and httpcore asks for at most 64 KiB, slicing every 256 KiB the
  loop delivers into four reads that each pay the whole per-read cost.
- aiohttp (``httpx-aiohttp``, already Keel's upstream transport) with ``iter_any()``: ~2 GB/s,
  ~0.5 CPU-s per GiB: one C parser, chunks handed over as received.

That leaves the CPU to what must be done (SHA-256 and the write), so downloads keep up with
``curl``. ``httpx_aiohttp.AiohttpTransport`` streams bodies in fixed 16 KiB slices (a copy and
a Python round trip each); this subclass swaps in a stream that yields whatever aiohttp has
received. Everything else (timeouts, limits, TLS, exception mapping to httpx's) is theirs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions


class _ReceivedChunks(httpx.AsyncByteStream):
    def __init__(self, inner: AiohttpResponseStream) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._inner._aiohttp_response.content
        with map_aiohttp_exceptions():
            try:
                async for chunk in content.iter_any():
                    yield chunk
            except aiohttp.ClientPayloadError:
                # A body cut short: aiohttp raises before handing over the bytes that did
                # arrive. They are a valid prefix the next attempt need not fetch again.
                for chunk in _salvage(content):
                    yield chunk
                raise

    async def aclose(self) -> None:
        await self._inner.aclose()


class DownloadTransport(AiohttpTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if isinstance(response.stream, AiohttpResponseStream):
            response.stream = _ReceivedChunks(response.stream)
        return response


def _salvage(content: aiohttp.StreamReader) -> list[bytes]:
    """What aiohttp had buffered when the body broke (best effort: its buffer is private)."""
    buffer = getattr(content, "_buffer", None)
    if not buffer:
        return []
    chunks = [bytes(c) for c in buffer]
    offset = getattr(content, "_buffer_offset", 0)
    buffer.clear()
    if offset:
        chunks[0] = chunks[0][offset:]
    return chunks


def download_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    return DownloadTransport(limits=limits)
