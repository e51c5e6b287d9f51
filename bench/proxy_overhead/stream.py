"""Streaming load: chunks per second through a proxy, and the time to first chunk.

Run: python -m bench.proxy_overhead.stream URL CONCURRENCY SECONDS
Prints one JSON line: {"chunks_per_s", "streams", "ttfb_p50_ms", "errors"}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp

BODY = json.dumps(
    {"model": "bench", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
)


async def worker(
    session: aiohttp.ClientSession,
    url: str,
    until: float,
    counts: list[int],
    ttfb: list[float],
    errors: list[int],
) -> None:
    while time.perf_counter() < until:
        t0 = time.perf_counter()
        first = True
        async with session.post(
            url, data=BODY, headers={"content-type": "application/json"}
        ) as response:
            if response.status != 200:
                errors.append(response.status)
                await response.read()
                continue
            async for line in response.content:
                if line.startswith(b"data: {"):
                    if first:
                        ttfb.append(time.perf_counter() - t0)
                        first = False
                    counts[0] += 1
        counts[1] += 1


async def run(url: str, concurrency: int, seconds: float) -> dict[str, float]:
    counts = [0, 0]
    ttfb: list[float] = []
    errors: list[int] = []
    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(
            *[
                worker(session, url, start + seconds, counts, ttfb, errors)
                for _ in range(concurrency)
            ]
        )
    elapsed = time.perf_counter() - start
    ttfb.sort()
    return {
        "chunks_per_s": counts[0] / elapsed,
        "streams": counts[1],
        "ttfb_p50_ms": ttfb[len(ttfb) // 2] * 1000 if ttfb else float("nan"),
        "errors": len(errors),
    }


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    url, conc, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(asyncio.run(run(url, conc, secs))))
