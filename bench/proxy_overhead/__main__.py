"""Proxy overhead: the static upstream directly vs through Keel, at concurrency 1 and 32.

    .venv/bin/python -m bench.proxy_overhead [--seconds 8] [--transports httpx,aiohttp]

Each server runs in its own process (one uvicorn worker for Keel); the load generator is wrk
when installed, else bench/proxy_overhead/loadgen.py. Prints req/s, p50 and p99 per case.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}]})


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str) -> None:
    for _ in range(200):
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
        ["wrk", "-t1", f"-c{conc}", f"-d{int(seconds)}s", "--latency", "-s", str(script), url],
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


def pyload(url: str, conc: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.proxy_overhead.loadgen", url, str(conc), str(seconds), BODY],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--transports", default="httpx,aiohttp")
    args = ap.parse_args()
    load = wrk if shutil.which("wrk") else pyload
    print(
        f"load generator: {'wrk' if load is wrk else 'python loadgen'}; "
        f"{os.cpu_count()} cores; {args.seconds:.0f} s per case"
    )

    up_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "bench.proxy_overhead.upstream", str(up_port)], cwd=ROOT
    )
    procs = [upstream]
    rows: list[tuple[str, int, dict[str, float]]] = []
    try:
        wait_up(f"http://127.0.0.1:{up_port}/")
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        for conc in (1, 32):
            rows.append(("direct", conc, load(direct, conc, args.seconds)))
        for transport in args.transports.split(","):
            work = Path(tempfile.mkdtemp())
            (work / "keel.toml").write_text(
                f'log_level = "WARNING"\n[providers.up]\nkind = "openai"\n'
                f'base_url = "http://127.0.0.1:{up_port}/v1"\nmodels = ["m"]\n'
                f'max_concurrency = 256\nhttp_transport = "{transport}"\n'
                f'[routes]\nbench = ["up/m"]\n'
            )
            port = free_port()
            env = {
                **os.environ,
                "KEEL_PORT": str(port),
                "KEEL_DATA_DIR": str(work / "data"),
                "KEEL_CONFIG": str(work / "keel.toml"),
                "PYTHONPATH": str(ROOT),
            }
            keel = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve"],
                cwd=work,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(keel)
            wait_up(f"http://127.0.0.1:{port}/healthz")
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            load(url, 8, 2)  # warm-up: connections, caches
            for conc in (1, 32):
                rows.append((f"keel ({transport})", conc, load(url, conc, args.seconds)))
            keel.terminate()
            keel.wait(10)
    finally:
        for p in procs:
            p.terminate()
    base = {c: r for name, c, r in rows if name == "direct"}
    print(
        f"{'case':<16}{'conc':>5}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'errors':>8}"
    )
    for name, conc, r in rows:
        added = r["p50_ms"] - base[conc]["p50_ms"]
        print(
            f"{name:<16}{conc:>5}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{added:>9.2f}{r['errors']:>8.0f}"
        )


if __name__ == "__main__":
    main()
