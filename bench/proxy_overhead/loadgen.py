"""A small keep-alive HTTP/1.1 load generator, used when wrk is not installed.

Run: python -m bench.proxy_overhead.loadgen URL CONCURRENCY SECONDS BODY_JSON
Prints one JSON line: {"rps", "p50_ms", "p99_ms", "errors"}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


async def worker(
    host: str,
    port: int,
    path: str,
    body: bytes,
    until: float,
    latencies: list[float],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    while time.perf_counter() < until:
        t0 = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - t0)
        if status != 200:
            errors.append(status)
    writer.close()


async def run(url: str, concurrency: int, seconds: float, body: bytes) -> dict[str, float]:
    parts = urlsplit(url)
    latencies: list[float] = []
    errors: list[int] = []
    start = time.perf_counter()
    until = start + seconds
    await asyncio.gather(
        *[
            worker(
                parts.hostname or "127.0.0.1",
                parts.port or 80,
                parts.path,
                body,
                until,
                latencies,
                errors,
            )
            for _ in range(concurrency)
        ]
    )
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "errors": len(errors),
    }


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    url, conc, secs, body = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    print(json.dumps(asyncio.run(run(url, conc, secs, body.encode()))))
