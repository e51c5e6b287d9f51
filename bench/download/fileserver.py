"""A fast loopback HTTP file server for the download benchmark.

Threaded ``http.server`` that sends bodies with ``os.sendfile`` (zero copy), with ``Range``,
``If-Range`` and a strong ``ETag``, so the server is never the bottleneck being measured. The
test fake (tests/fakes/range_server.py) favours injectable faults over speed; this one is the
opposite.

    python bench/download/fileserver.py FILE [--port N]
"""

from __future__ import annotations

import argparse
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def make_handler(path: Path) -> type[BaseHTTPRequestHandler]:
    size = path.stat().st_size
    etag = f'"{size:x}-{int(path.stat().st_mtime_ns):x}"'

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # http.server's naming
            start, end = 0, size - 1
            status = 200
            rng = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if rng and (if_range is None or if_range == etag):
                m = _RANGE.match(rng.strip())
                if m:
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("ETag", etag)
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            self.wfile.flush()
            with path.open("rb") as f:
                offset, left = start, end - start + 1
                while left > 0:
                    sent = os.sendfile(
                        self.connection.fileno(), f.fileno(), offset, min(left, 64 * 1024 * 1024)
                    )
                    if sent == 0:
                        break
                    offset += sent
                    left -= sent

    return Handler


class FileServer:
    def __init__(self, path: Path, port: int = 0) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), make_handler(path))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file", type=Path)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    with FileServer(args.file, args.port) as server:
        print(f"serving {args.file} at {server.url}/{args.file.name}", flush=True)
        server.thread.join()


if __name__ == "__main__":
    main()
