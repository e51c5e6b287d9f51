"""Memory over a soak: idle RSS, then RSS growth over many mixed requests after a warm-up.

    .venv/bin/python -m bench.soak [--requests 50000] [--warmup 5000] [--concurrency 16]

Keel (``keel serve``, one worker, SQLite under a temporary data dir) routes to the static
upstream of ``bench.proxy_overhead``. The mix: 50% non-streaming chat, 25% streaming chat (200
chunks each), 25% conversation appends (one conversation per 100 appends). RSS is read from
/proc, so the figures are Linux-only. Targets (docs/benchmarks.md): idle RSS <= 120 MB, growth
after warm-up <= 5%.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

from bench.proxy_overhead.__main__ import ROOT, free_port, wait_up

CHAT = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}]})
STREAM = json.dumps(
    {"model": "bench", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
)
JSON = {"content-type": "application/json"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Mix:
    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session
        self.conversation = ""
        self.appends = 0
        self.errors = 0

    async def one(self, kind: int) -> None:
        s, base = self.session, self.base
        if kind in (0, 1):
            async with s.post(f"{base}/v1/chat/completions", data=CHAT, headers=JSON) as r:
                await r.read()
        elif kind == 2:
            async with s.post(f"{base}/v1/chat/completions", data=STREAM, headers=JSON) as r:
                async for _ in r.content:
                    pass
        else:
            if not self.conversation or self.appends >= 100:
                async with s.post(f"{base}/v1/conversations", data="{}", headers=JSON) as r:
                    self.conversation = (await r.json())["id"]
                    self.appends = 0
            self.appends += 1
            body = json.dumps({"items": [{"type": "message", "role": "user", "content": "hi"}]})
            async with s.post(
                f"{base}/v1/conversations/{self.conversation}/items", data=body, headers=JSON
            ) as r:
                await r.read()
                if r.status >= 300:
                    self.errors += 1
                return
        if r.status >= 300:
            self.errors += 1

    async def run(self, count: int, concurrency: int) -> None:
        kinds = itertools.cycle([0, 1, 2, 3])
        remaining = iter(range(count))

        async def worker() -> None:
            for _ in remaining:
                await self.one(next(kinds))

        await asyncio.gather(*[worker() for _ in range(concurrency)])


async def drive(base: str, pid: int, args: argparse.Namespace) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        mix = Mix(base, session)
        idle = rss_mb(pid)
        await mix.run(args.warmup, args.concurrency)
        warm = rss_mb(pid)
        await mix.run(args.requests, args.concurrency)
        end = rss_mb(pid)
    growth = (end - warm) / warm * 100
    print(f"idle RSS            {idle:8.1f} MB   (<= 120)")
    print(f"after {args.warmup:>6} warm-up {warm:8.1f} MB")
    print(f"after {args.requests:>6} more    {end:8.1f} MB   growth {growth:+.1f}% (<= 5%)")
    print(f"errors              {mix.errors}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--warmup", type=int, default=5_000)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    up_port, port = free_port(), free_port()
    work = Path(tempfile.mkdtemp())
    (work / "keel.toml").write_text(
        f'log_level = "WARNING"\n[providers.up]\nkind = "openai"\n'
        f'base_url = "http://127.0.0.1:{up_port}/v1"\nmodels = ["m"]\n'
        f'max_concurrency = 256\n[routes]\nbench = ["up/m"]\n'
    )
    env = {
        **os.environ,
        "KEEL_PORT": str(port),
        "KEEL_DATA_DIR": str(work / "data"),
        "KEEL_CONFIG": str(work / "keel.toml"),
        "PYTHONPATH": str(ROOT),
    }
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.proxy_overhead.upstream", str(up_port)], cwd=ROOT
            )
        )
        keel = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(keel)
        wait_up(f"http://127.0.0.1:{port}/healthz")
        asyncio.run(drive(f"http://127.0.0.1:{port}", keel.pid, args))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


if __name__ == "__main__":
    main()
