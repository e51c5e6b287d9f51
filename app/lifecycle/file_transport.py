"""``file://`` manifest URLs through the same httpx client as ``http(s)``.

An httpx transport that answers GET for a local file the way an HTTP server would (``ETag``,
``Content-Length``, ``Range``/``If-Range``, 206/416), so the downloader has one code path for
both: resume, verification and atomic install work the same for a file on a mounted share.
Reads run in the hash pool, never on the event loop.
"""

from __future__ import annotations

import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

import httpx

from app.lifecycle.hashing import HashPool

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def request_url(url: str) -> httpx.URL:
    """httpx treats ``file:///p`` as a relative URL; ``file://localhost/p`` is the same file."""
    parts = urlsplit(url)
    if parts.scheme == "file" and not parts.netloc:
        return httpx.URL(f"file://localhost{parts.path}")
    return httpx.URL(url)


class FileTransport(httpx.AsyncBaseTransport):
    def __init__(self, pool: HashPool, read_bytes: int = 1024 * 1024) -> None:
        self.pool = pool
        self.read_bytes = read_bytes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host not in ("", "localhost"):
            return httpx.Response(404, request=request)
        path = Path(unquote(request.url.path))
        try:
            st = await self.pool.run(path.stat)
        except OSError:
            return httpx.Response(404, request=request)
        if not stat.S_ISREG(st.st_mode):
            return httpx.Response(404, request=request)
        size = st.st_size
        etag = f'"{size:x}-{st.st_mtime_ns:x}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        start, end, status = 0, size - 1, 200
        wanted = request.headers.get("range")
        if_range = request.headers.get("if-range")
        match = _RANGE.match(wanted.strip()) if wanted else None
        if match and (if_range is None or if_range == etag):
            start = int(match.group(1))
            if start >= size:
                return httpx.Response(
                    416, headers={**headers, "Content-Range": f"bytes */{size}"}, request=request
                )
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(end - start + 1)
        return httpx.Response(
            status,
            headers=headers,
            request=request,
            stream=_FileStream(self.pool, path, start, end - start + 1, self.read_bytes),
        )


class _FileStream(httpx.AsyncByteStream):
    def __init__(self, pool: HashPool, path: Path, start: int, length: int, chunk: int) -> None:
        self.pool, self.path, self.start, self.length, self.chunk = pool, path, start, length, chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        f = await self.pool.run(_open_binary, self.path)
        try:
            await self.pool.run(f.seek, self.start)
            left = self.length
            while left > 0:
                data = await self.pool.run(f.read, min(self.chunk, left))
                if not data:
                    break
                left -= len(data)
                yield data
        finally:
            f.close()


def _open_binary(path: Path) -> BinaryIO:
    return path.open("rb")
