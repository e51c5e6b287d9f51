"""Keel's own cost per chat completion, without the network in front of it.

    .venv/bin/python -m bench.proxy_overhead.inproc [--requests 3000] [--profile]

Builds the app in-process, runs its lifespan, and drives ``POST /v1/chat/completions`` through
the ASGI interface directly (no HTTP server, no client sockets): the upstream is the static
one of ``bench.proxy_overhead`` on a real loopback socket. Three variants run in interleaved
blocks of 100 requests: one aiohttp call to the upstream alone, Keel, and Keel with
``direct_routes = false`` (FastAPI's router). Prints wall and CPU microseconds per request and
CPU as a multiple of aiohttp's; CPU time is the steadier figure on a shared machine.
``--profile`` prints cProfile's top entries (by own time, then Keel's by cumulative time).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import json
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
from asgi_lifespan import LifespanManager

from app.main import create_app
from app.settings import Settings
from bench.proxy_overhead.__main__ import ROOT, free_port, wait_up

BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}]}).encode()


def scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8080"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }


async def one(app: Any, state: dict[str, Any]) -> int:
    status = 0
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app({**scope(), "state": dict(state)}, receive, send)
    return status


def keel_settings(up_port: int, **overrides: Any) -> Settings:
    return Settings(
        data_dir=Path(tempfile.mkdtemp()),
        log_level="WARNING",
        providers={
            "up": {
                "kind": "openai",
                "base_url": f"http://127.0.0.1:{up_port}/v1",
                "models": ["m"],
                "max_concurrency": 256,
            }
        },
        routes={"bench": ["up/m"]},
        **overrides,
    )


async def drive(up_port: int, requests: int, profile: bool, block: int = 100) -> None:
    """Blocks of ``block`` requests through each variant in turn, so a slower moment of a
    shared machine falls on all of them alike; CPU time is summed per variant."""
    url = f"http://127.0.0.1:{up_port}/v1/chat/completions"
    profiler = cProfile.Profile() if profile else None
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())

        async def bare() -> None:
            async with session.post(url, data=BODY) as r:
                await r.read()

        variants: dict[str, Callable[[], Awaitable[Any]]] = {"aiohttp alone": bare}
        for name, overrides in (("keel", {}), ("keel, router only", {"direct_routes": False})):
            app = create_app(keel_settings(up_port, **overrides))
            manager = await stack.enter_async_context(LifespanManager(app))
            variants[name] = functools.partial(one, app, manager._state)
        for call in variants.values():  # warm-up: connections, caches, first-call imports
            for _ in range(200):
                await call()
        wall = dict.fromkeys(variants, 0.0)
        cpu = dict.fromkeys(variants, 0.0)
        for _ in range(max(1, requests // block)):
            for name, call in variants.items():
                if profiler and name == "keel":
                    profiler.enable()
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(block):
                    await call()
                wall[name] += time.perf_counter() - t0
                cpu[name] += time.process_time() - c0
                if profiler and name == "keel":
                    profiler.disable()
    n = max(1, requests // block) * block
    base = cpu["aiohttp alone"]
    # CPU time is the steadier figure on a shared machine: it leaves out the upstream's turn.
    print(f"{'':<20}{'wall':>8}{'cpu':>8}  us per request; cpu as a multiple of aiohttp's")
    for name in variants:
        print(
            f"{name:<20}{wall[name] / n * 1e6:8.0f}{cpu[name] / n * 1e6:8.0f}"
            f"  {cpu[name] / base:5.2f}x"
        )
    if profiler:
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(35)
        stats.sort_stats("cumulative").print_stats(r"/app/", 40)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    up_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "bench.proxy_overhead.upstream", str(up_port)], cwd=ROOT
    )
    try:
        wait_up(f"http://127.0.0.1:{up_port}/")
        import uvloop

        uvloop.run(drive(up_port, args.requests, args.profile))
    finally:
        upstream.terminate()
        upstream.wait(10)


if __name__ == "__main__":
    main()
