"""Keel's own cost per chat completion, without the network in front of it.

    .venv/bin/python -m bench.proxy_overhead.inproc [--requests 3000] [--profile]

Builds the app in-process, runs its lifespan, and drives ``POST /v1/chat/completions`` through
the ASGI interface directly (no HTTP server, no client sockets): the upstream is the static
one of ``bench.proxy_overhead`` on a real loopback socket. Prints microseconds per completion,
next to the same loop against a trivial ASGI app that only calls the upstream through the same
kind of client, so the difference is what Keel adds. ``--profile`` prints cProfile's top
entries by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import subprocess
import sys
import tempfile
import time
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


async def drive(up_port: int, requests: int, profile: bool) -> None:
    data = Path(tempfile.mkdtemp())
    settings = Settings(
        data_dir=data,
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
    )
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        state = manager._state
        for _ in range(200):
            assert await one(app, state) == 200
        profiler = cProfile.Profile() if profile else None
        t0, c0 = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        for _ in range(requests):
            await one(app, state)
        if profiler:
            profiler.disable()
        keel = (time.perf_counter() - t0) / requests * 1e6
        keel_cpu = (time.process_time() - c0) / requests * 1e6
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        for _ in range(200):
            async with session.post(url, data=BODY) as r:
                await r.read()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(requests):
            async with session.post(url, data=BODY) as r:
                await r.read()
        bare = (time.perf_counter() - t0) / requests * 1e6
        bare_cpu = (time.process_time() - c0) / requests * 1e6
    # CPU time is the steadier figure on a shared machine: it leaves out the upstream's turn.
    print(f"                  {'wall':>8} {'cpu':>8}  (us per request)")
    print(f"keel in-process   {keel:8.0f} {keel_cpu:8.0f}")
    print(f"aiohttp alone     {bare:8.0f} {bare_cpu:8.0f}")
    own = keel_cpu - bare_cpu
    print(f"keel's own work   {keel - bare:8.0f} {own:8.0f}  ({keel_cpu / bare_cpu:.1f}x cpu)")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(35)


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
