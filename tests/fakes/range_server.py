"""An HTTP file server for download tests: Range, If-Range, ETag, and injectable faults.

Runs in a background thread on 127.0.0.1 (so both in-process ASGI tests and Keel subprocesses
can use it) and records every request it sees. Faults are consumed per request, in order:

- ``statuses``: answer the next requests with these status codes (e.g. ``[503, 429]``);
- ``drops``: for the next requests, close the connection after this many body bytes;
- ``stalls``: for the next requests, stop after this many body bytes and hang (until
  ``release()`` or the server stops);
- ``ignore_range``: answer every Range request with 200 and the whole file;
- ``corrupt``: flip the byte at this offset of the named file in every response;
- ``throttle_bps``: send at most this many bytes per second;
- ``gate``: hold every body until ``open_gate()`` (to make concurrent requests overlap).
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    range: str | None
    if_range: str | None
    accept_encoding: str | None
    status: int


@dataclass
class ServedFile:
    data: bytes
    etag: str
    last_modified: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Faults:
    statuses: list[int] = field(default_factory=list)
    drops: list[int] = field(default_factory=list)
    stalls: list[int] = field(default_factory=list)
    ignore_range: bool = False
    corrupt: dict[str, int] = field(default_factory=dict)
    throttle_bps: int | None = None
    retry_after: str | None = None


class RangeServer:
    def __init__(self, chunk: int = 16 * 1024) -> None:
        self.files: dict[str, ServedFile] = {}
        self.faults = Faults()
        self.requests: list[Seen] = []
        self.chunk = chunk
        self.body_bytes_sent = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._gate = threading.Event()
        self._gate.set()
        self._stopping = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    # -- set-up -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, name: str, data: bytes, etag: str | None = None) -> str:
        self.files[name] = ServedFile(
            data,
            etag or f'"{hashlib.sha256(data).hexdigest()[:16]}"',
            formatdate(time.time() - 3600, usegmt=True),
        )
        return f"{self.base_url}/{name}"

    def close_gate(self) -> None:
        self._gate.clear()

    def open_gate(self) -> None:
        self._gate.set()

    def release(self) -> None:
        self._release.set()

    def gets(self, name: str | None = None) -> list[Seen]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == "GET" and (name is None or r.path == f"/{name}")
            ]

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._release.set()
        self._gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- the handler ----------------------------------------------------------------------

    def _take(self, queue: list[int]) -> int | None:
        with self._lock:
            return queue.pop(0) if queue else None

    def _record(self, handler: BaseHTTPRequestHandler, status: int) -> None:
        h = handler.headers
        with self._lock:
            self.requests.append(
                Seen(
                    handler.command,
                    handler.path,
                    h.get("Range"),
                    h.get("If-Range"),
                    h.get("Accept-Encoding"),
                    status,
                )
            )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._serve(self)

        return Handler

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        served = self.files.get(h.path.lstrip("/"))
        if served is None:
            return self._reply(h, 404)
        status = self._take(self.faults.statuses)
        if status is not None:
            extra = {"Retry-After": self.faults.retry_after} if self.faults.retry_after else {}
            return self._reply(h, status, extra)
        data = served.data
        offset = self.faults.corrupt.get(h.path.lstrip("/"))
        if offset is not None:
            data = data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]
        size = len(data)
        start, end, code = 0, size - 1, 200
        wanted, if_range = h.headers.get("Range"), h.headers.get("If-Range")
        match = _RANGE.match(wanted.strip()) if wanted else None
        validators = (served.etag, served.last_modified)
        if match and not self.faults.ignore_range and (if_range is None or if_range in validators):
            start = int(match.group(1))
            if start >= size:
                return self._reply(h, 416, {"Content-Range": f"bytes */{size}"})
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            code = 206
        self._record(h, code)
        h.send_response(code)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(end - start + 1))
        h.send_header("ETag", served.etag)
        h.send_header("Last-Modified", served.last_modified)
        h.send_header("Accept-Ranges", "bytes")
        if code == 206:
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        h.end_headers()
        self._send_body(h, data[start : end + 1])

    def _send_body(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        drop = self._take(self.faults.drops)
        stall = self._take(self.faults.stalls)
        self._gate.wait()
        sent = 0
        try:
            while sent < len(body):
                if self._stopping.is_set():
                    raise ConnectionError("server stopping")
                if drop is not None and sent >= drop:
                    h.close_connection = True
                    h.connection.shutdown(socket.SHUT_RDWR)
                    return
                if stall is not None and sent >= stall:
                    self._release.wait(60)
                    h.close_connection = True
                    return
                n = self.chunk
                for limit in (drop, stall):
                    if limit is not None:
                        n = min(n, max(1, limit - sent))
                piece = body[sent : sent + n]
                h.wfile.write(piece)
                h.wfile.flush()
                sent += len(piece)
                with self._lock:
                    self.body_bytes_sent += len(piece)
                if self.faults.throttle_bps:
                    time.sleep(len(piece) / self.faults.throttle_bps)
        except (ConnectionError, OSError):
            h.close_connection = True

    def _reply(
        self, h: BaseHTTPRequestHandler, status: int, headers: dict[str, str] | None = None
    ) -> None:
        self._record(h, status)
        h.send_response(status)
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.send_header("Content-Length", "0")
        h.end_headers()
