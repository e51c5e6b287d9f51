"""Proxy overhead as a ratio: Keel against a bare pass-through, measured in the same run.

    .venv/bin/python -m bench.proxy_overhead [--seconds 5] [--rounds 3]

Three servers share one static upstream (its own process, raw asyncio): the upstream directly,
``bench.proxy_overhead.bare`` (pure ASGI + aiohttp + uvloop under the same uvicorn, no
features) and Keel (``keel serve``, one worker, a route to the upstream). Each round measures
every case on bare and Keel in the order bare, Keel, Keel, bare (half the time each), so drift
on a shared machine weighs on both alike; the headline figures are medians over rounds of the
keel/bare pair of each round. Absolute numbers do not survive a change of machine; the ratios
are the headline (docs/benchmarks.md). Beside req/s, each server's own CPU time per answer
(from /proc) is shown: the same ratio, less disturbed by wrk and the upstream sharing cores.

Cases: non-streaming chat at concurrency 1 and 32 (wrk when installed, else the Python load
generator), and streaming chat (200 chunks per answer) at concurrency 8 for chunks per second
and at concurrency 1 for the time to the first chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}]})
Load = Callable[[str, int, float], dict[str, float]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str) -> None:
    for _ in range(400):
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def wrk(url: str, conc: int, seconds: float) -> dict[str, float]:
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [[{BODY}]]\n"
    )
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{conc}",
            f"-d{max(1, int(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "errors": int(non2xx.group(1)) if non2xx else 0,
    }


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux: /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def python_tool(module: str) -> Load:
    def run(url: str, conc: int, seconds: float) -> dict[str, float]:
        args = [sys.executable, "-m", module, url, str(conc), str(seconds)]
        if module.endswith("loadgen"):
            args.append(BODY)
        out = subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT).stdout
        return json.loads(out)  # type: ignore[no-any-return]

    return run


def start_keel(up_port: int, procs: list[subprocess.Popen[bytes]]) -> str:
    work = Path(tempfile.mkdtemp())
    (work / "keel.toml").write_text(
        f'log_level = "WARNING"\n[providers.up]\nkind = "openai"\n'
        f'base_url = "http://127.0.0.1:{up_port}/v1"\nmodels = ["m"]\n'
        f'max_concurrency = 256\n[routes]\nbench = ["up/m"]\n'
    )
    port = free_port()
    env = {
        **os.environ,
        "KEEL_PORT": str(port),
        "KEEL_DATA_DIR": str(work / "data"),
        "KEEL_CONFIG": str(work / "keel.toml"),
        "PYTHONPATH": str(ROOT),
    }
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    wait_up(f"http://127.0.0.1:{port}/healthz")
    return f"http://127.0.0.1:{port}/v1/chat/completions"


def start_bare(up_port: int, procs: list[subprocess.Popen[bytes]]) -> str:
    port = free_port()
    procs.append(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.proxy_overhead.bare",
                str(port),
                f"http://127.0.0.1:{up_port}/v1",
            ],
            cwd=ROOT,
        )
    )
    wait_up(f"http://127.0.0.1:{port}/")
    return f"http://127.0.0.1:{port}/v1/chat/completions"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    load: Load = wrk if shutil.which("wrk") else python_tool("bench.proxy_overhead.loadgen")
    stream = python_tool("bench.proxy_overhead.stream")
    print(
        f"load generator: {'wrk -t1' if load is wrk else 'python loadgen'}; {os.cpu_count()} "
        f"cores; {args.seconds:.0f} s per case; {args.rounds} rounds; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    procs: list[subprocess.Popen[bytes]] = []
    up_port = free_port()
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "bench.proxy_overhead.upstream", str(up_port)], cwd=ROOT
        )
    )
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        wait_up(f"http://127.0.0.1:{up_port}/")
        urls = {
            "direct": f"http://127.0.0.1:{up_port}/v1/chat/completions",
            "bare": start_bare(up_port, procs),
            "keel": start_keel(up_port, procs),
        }
        pids = {"direct": procs[0].pid, "bare": procs[1].pid, "keel": procs[2].pid}
        for url in urls.values():  # warm-up: connections, caches, first-call imports
            load(url, 8, 1)

        def measure(name: str, conc: int, seconds: float) -> dict[str, float]:
            before = cpu_seconds(pids[name])
            got = load(urls[name], conc, seconds)
            spent = cpu_seconds(pids[name]) - before
            # The server's own CPU per answer: what throughput would be with a core to
            # itself, steadier than req/s when wrk and the upstream compete for the cores.
            got["cpu_us"] = spent / max(got["rps"] * seconds, 1) * 1e6
            return got

        half = max(1.0, args.seconds / 2)
        for _ in range(args.rounds):
            for conc in (1, 32):
                results.setdefault(("direct", f"c{conc}"), []).append(
                    measure("direct", conc, args.seconds)
                )
                # bare, keel, keel, bare: a machine that speeds up or slows down during the
                # round (a shared host does, over seconds) weighs on both alike.
                slices: dict[str, list[dict[str, float]]] = {"bare": [], "keel": []}
                for name in ("bare", "keel", "keel", "bare"):
                    slices[name].append(measure(name, conc, half))
                for name, pair in slices.items():
                    results.setdefault((name, f"c{conc}"), []).append(
                        {key: statistics.mean(r[key] for r in pair) for key in pair[0]}
                    )
            for case, conc in (("s8", 8), ("s1", 1)):
                for name in ("bare", "keel", "keel", "bare"):
                    results.setdefault((name, case + "_slices"), []).append(
                        stream(urls[name], conc, half)
                    )
                for name in ("bare", "keel"):
                    sliced = results.pop((name, case + "_slices"))
                    results.setdefault((name, case), []).append(
                        {key: statistics.mean(r[key] for r in sliced) for key in sliced[0]}
                    )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
    report(results)


def report(results: dict[tuple[str, str], list[dict[str, float]]]) -> None:
    def med(name: str, case: str, key: str) -> float:
        return statistics.median(r[key] for r in results[(name, case)])

    print(
        f"\n{'server':<8}{'conc':>5}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'cpu us/answer':>15}"
    )
    for name in ("direct", "bare", "keel"):
        for conc in (1, 32):
            case = f"c{conc}"
            print(
                f"{name:<8}{conc:>5}{med(name, case, 'rps'):>10.0f}"
                f"{med(name, case, 'p50_ms'):>9.2f}{med(name, case, 'p99_ms'):>9.2f}"
                f"{med(name, case, 'errors'):>8.0f}{med(name, case, 'cpu_us'):>15.0f}"
            )
    print(f"\n{'server':<8}{'chunks/s (c=8)':>16}{'TTFB p50 ms (c=1)':>20}")
    for name in ("bare", "keel"):
        print(
            f"{name:<8}{med(name, 's8', 'chunks_per_s'):>16.0f}"
            f"{med(name, 's1', 'ttfb_p50_ms'):>20.2f}"
        )

    def paired(case: str, key: str, combine: Callable[[float, float], float]) -> float:
        """The median over rounds of keel against bare measured in the same round: a slow
        moment of a shared machine falls on both halves of a pair."""
        pairs = zip(results[("keel", case)], results[("bare", case)], strict=True)
        return statistics.median(combine(k[key], b[key]) for k, b in pairs)

    ratio = paired("c32", "rps", lambda k, b: k / b)
    cpu_ratio = paired("c32", "cpu_us", lambda k, b: b / k)
    stream_ratio = paired("s8", "chunks_per_s", lambda k, b: k / b)
    added_bare = paired("c1", "p50_ms", lambda k, b: k - b)
    ttfb_added = paired("s1", "ttfb_p50_ms", lambda k, b: k - b)
    direct_pairs = zip(results[("keel", "c1")], results[("direct", "c1")], strict=True)
    added_direct = statistics.median(k["p50_ms"] - d["p50_ms"] for k, d in direct_pairs)
    print("\nper round at c=32, keel/bare: req/s ratio, CPU-per-answer ratio (bare/keel)")
    for k, b in zip(results[("keel", "c32")], results[("bare", "c32")], strict=True):
        print(f"  {k['rps'] / b['rps']:5.2f} {b['cpu_us'] / k['cpu_us']:5.2f}")
    print("\nheadline, medians of per-round pairs (target):")
    print(f"  keel/bare req/s at c=32      {ratio:6.2f}   (>= 0.45)")
    print(f"  bare/keel CPU per answer     {cpu_ratio:6.2f}   (the same ratio, per core)")
    print(f"  keel added p50 at c=1        {added_direct:6.2f} ms vs upstream directly (<= 0.5)")
    print(f"                               {added_bare:6.2f} ms vs bare pass-through")
    print(f"  keel/bare chunks/s (stream)  {stream_ratio:6.2f}   (>= 0.5)")
    print(f"  keel added TTFB (stream)     {ttfb_added:6.2f} ms vs bare (<= 1)")


if __name__ == "__main__":
    main()
