"""Download benchmark: Keel (download + verify + install) vs `curl -o` vs `curl` + `sha256sum`.

    .venv/bin/python bench/download/run.py [--size-mib 1024] [--rounds 3] [--workdir DIR]
                                             [--min-idle 0.9]

A file of random bytes is served from loopback by ``fileserver.py`` (threaded, ``sendfile``;
its own process). Each round runs, in turn:

- ``curl -s -o OUT URL``                         (transfer only)
- ``curl -s -o OUT URL && sha256sum OUT``       (what a careful script does)
- Keel, a real ``keel serve`` process: ``POST /v1/lifecycle/models/bench/download``, then
  follow ``GET /v1/lifecycle/models/bench/events`` (SSE) until ``ready`` — transfer, SHA-256,
  fsync, rename, all measured from the client's side.

Every figure is the file size over wall-clock time, in MB/s (10^6 bytes). The median of the
rounds is reported with the two ratios the targets are stated in. On a shared machine each run
waits until the CPUs are idle (``--min-idle``): Keel overlaps network, hashing and disk on
several threads, so it suffers more than single-threaded curl from a neighbour's busy core. All
files are deleted at the end. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise TimeoutError(url)


def make_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    block = 16 * 1024 * 1024
    with path.open("wb") as f:
        left = size
        while left:
            data = os.urandom(min(block, left))
            h.update(data)
            f.write(data)
            left -= len(data)
    return h.hexdigest()


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]  # total, idle + iowait


def wait_idle(min_idle: float, limit_s: float = 120.0) -> None:
    """On a shared machine, start a measurement only once the CPUs are (nearly) idle."""
    if min_idle <= 0 or not Path("/proc/stat").exists():
        return
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        total0, idle0 = _cpu_times()
        time.sleep(1.0)
        total1, idle1 = _cpu_times()
        if (idle1 - idle0) / max(1, total1 - total0) >= min_idle:
            return
    print("  (machine still busy; measuring anyway)", flush=True)


def timed(cmd: str) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def keel_once(keel_url: str, model_dir: Path) -> float:
    shutil.rmtree(model_dir, ignore_errors=True)
    with httpx.Client(base_url=keel_url, timeout=httpx.Timeout(30.0, read=None)) as c:
        t = time.perf_counter()
        r = c.post("/v1/lifecycle/models/bench/download")
        assert r.status_code == 202, r.text
        # Follow the SSE progress stream to the end, as `keel models pull` does.
        with c.stream("GET", "/v1/lifecycle/models/bench/events") as events:
            last = ""
            for line in events.iter_lines():
                if line.startswith("data:"):
                    last = line
        elapsed = time.perf_counter() - t
        if '"phase":"ready"' not in last:
            raise RuntimeError(last)
    shutil.rmtree(model_dir, ignore_errors=True)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--min-idle",
        type=float,
        default=0.9,
        help="wait until this share of CPU time is idle before each run (0 disables)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        help="extra KEEL_* setting for the Keel process, NAME=VALUE",
    )
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    work = Path(tempfile.mkdtemp(prefix="keel-bench-", dir=args.workdir))
    server = keel = None
    try:
        src = work / "bench.bin"
        print(f"writing {args.size_mib} MiB of random bytes ...", flush=True)
        sha = make_file(src, size)
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("fileserver.py")),
                str(src),
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/bench.bin"
        wait_http(f"http://127.0.0.1:{port}/")
        manifest = work / "bench.toml"
        manifest.write_text(
            f'[[models]]\nid = "bench"\ncapability = "llm"\n[[models.files]]\n'
            f'name = "bench.bin"\nurl = "{url}"\nsha256 = "{sha}"\n'
            f"size = {size}\n"
        )
        data_dir = work / "data"
        keel_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
        env.update(
            {
                "KEEL_DATA_DIR": str(data_dir),
                "KEEL_MODELS_MANIFEST": str(manifest),
                "KEEL_PORT": str(keel_port),
                "KEEL_LOG_LEVEL": "WARNING",
                "KEEL_DOWNLOADS__FREE_SPACE_MARGIN_BYTES": "0",
            }
        )
        env.update(dict(e.split("=", 1) for e in args.env))
        keel = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        keel_url = f"http://127.0.0.1:{keel_port}"
        wait_http(keel_url + "/healthz")
        out = work / "curl.bin"
        # One untimed run of each, so no contender pays for a cold page cache or first use.
        timed(f"curl -s -o {out} {url}")
        out.unlink()
        keel_once(keel_url, data_dir / "models" / "bench")
        results: dict[str, list[float]] = {"curl": [], "curl+sha256sum": [], "keel": []}
        for n in range(args.rounds):
            wait_idle(args.min_idle)
            results["curl"].append(size / timed(f"curl -s -o {out} {url}") / 1e6)
            out.unlink()
            wait_idle(args.min_idle)
            results["curl+sha256sum"].append(
                size / timed(f"curl -s -o {out} {url} && sha256sum {out}") / 1e6
            )
            out.unlink()
            wait_idle(args.min_idle)
            results["keel"].append(size / keel_once(keel_url, data_dir / "models" / "bench") / 1e6)
            print(
                f"round {n + 1}: " + ", ".join(f"{k} {v[-1]:.0f} MB/s" for k, v in results.items()),
                flush=True,
            )
        med = {k: statistics.median(v) for k, v in results.items()}
        print()
        print(f"file: {args.size_mib} MiB over loopback, {args.rounds} rounds, median MB/s")
        for k, v in med.items():
            print(f"  {k:<16} {v:8.0f}   (min {min(results[k]):.0f}, max {max(results[k]):.0f})")
        print(
            f"  keel / (curl + sha256sum) = {med['keel'] / med['curl+sha256sum']:.2f}x "
            "(target >= 1.5x)"
        )
        print(
            f"  keel / curl               = {100 * med['keel'] / med['curl']:.0f}% (target >= 60%)"
        )
        return 0
    finally:
        for proc in (keel, server):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
