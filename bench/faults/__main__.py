"""Keel under injected faults: the scenarios of issue 14, against Keel alone.

    .venv/bin/python -m bench.faults [--requests 40] [--concurrency 8] [--outage-s 8]

Keel runs in a thread in front of one or two fake upstreams (``tests/fakes/upstream.py``) on
127.0.0.1, with its shipped defaults except where a scenario says otherwise. Each scenario
starts a fresh Keel (fresh breakers) and prints success rate, upstream calls per request,
p50/p99 latency, and for the outage the time from recovery to the first success. A healthy
run comes first: on a busy machine absolute latencies are noise, the ratios to it are not.
The outage defaults to 8 s so that the whole run stays near a minute; ``--outage-s 20`` is
issue 14's scenario. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.main import create_app
from app.settings import Settings
from tests.fakes.servers import ServerThread
from tests.fakes.upstream import FakeUpstream

ATTEMPT_TIMEOUT_S = 1.0


@dataclass
class Figures:
    name: str
    requests: int
    ok: int
    upstream_calls: int
    latencies: list[float]
    note: str = ""

    def row(self, baseline: Figures | None) -> str:
        if not self.latencies:  # nothing to time: the figure is in the note
            calls = self.upstream_calls / self.requests
            return f"| {self.name} | {self.requests} | - | {calls:.2f} | - | {self.note} |"
        lat = sorted(self.latencies)
        p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        ratio = ""
        if baseline is not None and baseline.latencies:
            base = sorted(baseline.latencies)
            b50, b99 = base[len(base) // 2], base[min(len(base) - 1, int(0.99 * len(base)))]
            ratio = f" ({p50 / b50:.1f}x / {p99 / b99:.1f}x healthy)"
        return (
            f"| {self.name} | {self.requests} | {self.ok / self.requests:.1%} | "
            f"{self.upstream_calls / self.requests:.2f} | {p50 * 1000:.0f} / {p99 * 1000:.0f} ms"
            f"{ratio} | {self.note} |"
        )


def provider(url: str, **extra: Any) -> dict[str, Any]:
    return {"base_url": url, "models": ["small"], **extra}


@contextlib.contextmanager
def keel(providers: dict[str, Any], routes: dict[str, list[str]], **extra: Any) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp), log_level="ERROR", providers=providers, routes=routes, **extra
        )
        with ServerThread(create_app(settings)) as server:
            yield server.url


def body(i: int, stream: bool = False) -> dict[str, Any]:
    return {"model": "chat", "stream": stream, "messages": [{"role": "user", "content": f"q{i}"}]}


async def drive(
    url: str, n: int, concurrency: int, *, stream: bool = False, timeout: float = 90
) -> tuple[int, list[float], int]:
    """``n`` requests, ``concurrency`` at a time: (successes, latencies, streams that failed
    with an SSE error event)."""
    ok, reported, latencies = 0, 0, []
    queue = iter(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal ok, reported
        for i in queue:
            started = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                resp = await client.post("/v1/chat/completions", json=body(i, stream))
                text = resp.text
                if resp.status_code == 200 and (not stream or "data: [DONE]" in text):
                    ok += 1
                elif stream and "event: error" in text:
                    reported += 1
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return ok, latencies, reported


def simple(name: str, n: int, c: int, setup: Callable[[FakeUpstream], None]) -> Figures:
    with FakeUpstream(seed=14) as up:
        setup(up)
        with keel({"cloud": provider(up.base_url)}, {"chat": ["cloud/small"]}) as url:
            ok, lat, _ = asyncio.run(drive(url, n, c))
        return Figures(name, n, ok, up.calls, lat)


def hangs(n: int, c: int, fallback: bool, hedge: float | None = None) -> Figures:
    with FakeUpstream(seed=20) as up, FakeUpstream(seed=21) as backup:
        up.faults.hang_rate = 0.2
        providers = {"cloud": provider(up.base_url, attempt_timeout_s=ATTEMPT_TIMEOUT_S)}
        route = ["cloud/small"]
        if fallback:
            providers["backup"] = provider(backup.base_url)
            route.append("backup/small")
        extra = {"resilience": {"hedge": {"chat": hedge}}} if hedge else {}
        with keel(providers, {"chat": route}, **extra) as url:
            ok, lat, _ = asyncio.run(drive(url, n, c))
        name = "20% hangs, " + ("with a fallback" if fallback else "no fallback")
        if hedge:
            name += f", hedge after {hedge:g} s"
        return Figures(
            name, n, ok, up.calls + backup.calls, lat, f"attempt_timeout_s={ATTEMPT_TIMEOUT_S:g}"
        )


def drops(n: int, c: int) -> Figures:
    with FakeUpstream(seed=7) as up:
        up.faults.drop_rate = 0.2
        up.faults.chunks = 6
        with keel({"cloud": provider(up.base_url)}, {"chat": ["cloud/small"]}) as url:
            ok, lat, reported = asyncio.run(drive(url, n, c, stream=True))
        note = f"{reported} of {n - ok} failed streams ended with an SSE error event"
        return Figures("20% mid-stream drops (streaming)", n, ok, up.calls, lat, note)


def outage(outage_s: float) -> Figures:
    async def run(url: str, up: FakeUpstream) -> Figures:
        ok, lat, total = 0, [], 0
        start = time.monotonic()
        down_at, up_at = 2.0, 2.0 + outage_s
        first_success: float | None = None
        calls_down: list[int] = []
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while (now := time.monotonic() - start) < up_at + 3.0:
                if down_at <= now < up_at and not up.faults.down:
                    up.faults.down = True
                    calls_down.append(up.calls)
                elif now >= up_at and up.faults.down:
                    up.faults.down = False
                    calls_down.append(up.calls)
                t0 = time.perf_counter()
                resp = await client.post("/v1/chat/completions", json=body(total))
                lat.append(time.perf_counter() - t0)
                total += 1
                if resp.status_code == 200:
                    ok += 1
                    if now >= up_at and first_success is None:
                        first_success = time.monotonic() - start - up_at
                await asyncio.sleep(0.02)
        during = calls_down[1] - calls_down[0] if len(calls_down) == 2 else -1
        probes = sum(
            1
            for r in up.requests
            if r.path.endswith("/models") and start + down_at <= r.at < start + up_at
        )
        note = (
            f"{during} chat calls + {probes} probes to the dead upstream in {outage_s:g} s; "
            f"first success {first_success if first_success is not None else float('nan'):.2f} s "
            "after recovery"
        )
        return Figures(f"{outage_s:g} s outage, then healthy", total, ok, up.calls, lat, note)

    with (
        FakeUpstream(seed=3) as up,
        keel({"cloud": provider(up.base_url)}, {"chat": ["cloud/small"]}) as url,
    ):
        return asyncio.run(run(url, up))


def disconnects(n: int) -> Figures:
    async def run(url: str, up: FakeUpstream) -> list[float]:
        gaps: list[float] = []
        async with httpx.AsyncClient(base_url=url, timeout=0.3) as client:
            for i in range(n):
                seen = len(up.disconnects)
                with contextlib.suppress(httpx.TimeoutException):
                    await client.post("/v1/chat/completions", json=body(i))
                gave_up = time.monotonic()
                for _ in range(100):
                    if len(up.disconnects) > seen:
                        gaps.append(up.disconnects[-1] - gave_up)
                        break
                    await asyncio.sleep(0.01)
        return gaps

    with FakeUpstream(seed=4) as up:
        up.faults.latency_s = 5.0
        with keel({"cloud": provider(up.base_url)}, {"chat": ["cloud/small"]}) as url:
            gaps = asyncio.run(run(url, up))
        gaps.sort()
        note = (
            f"upstream saw {len(gaps)} of {n} hang-ups, median "
            f"{gaps[len(gaps) // 2] * 1000:.0f} ms after the client gave up"
            if gaps
            else "upstream saw no hang-up"
        )
        return Figures("client disconnects (gives up after 0.3 s)", n, 0, up.calls, [], note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--outage-s", type=float, default=8.0)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    n, c = args.requests, args.concurrency
    # The process's first Keel pays for lazy imports and first-call setup; every scenario below
    # starts a fresh, equally cold Keel and upstream, the baseline included.
    simple("warm-up", 2 * c, c, lambda up: None)
    healthy = simple("healthy (baseline)", n, c, lambda up: None)
    rows = [
        healthy,
        simple("15% 503", n, c, lambda up: setattr(up.faults, "error_rate", 0.15)),
        simple("30% 429 Retry-After: 1", n, c, _rate_limited),
        hangs(n, c, fallback=True),
        hangs(n, c, fallback=True, hedge=0.3),
        hangs(n, c, fallback=False),
        outage(args.outage_s),
        drops(n, c),
        disconnects(min(n, 20)),
    ]
    print("| scenario | requests | success | upstream calls / request | p50 / p99 | notes |")
    print("|---|---|---|---|---|---|")
    for figures in rows:
        print(figures.row(None if figures is healthy or not figures.latencies else healthy))


def _rate_limited(up: FakeUpstream) -> None:
    up.faults.error_rate = 0.3
    up.faults.error_status = 429
    up.faults.retry_after = "1"


if __name__ == "__main__":
    main()
