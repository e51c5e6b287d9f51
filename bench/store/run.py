"""Appends per second over HTTP at concurrency N, next to raw sqlite3 appends.

    .venv/bin/python -m bench.store [--concurrency 16] [--seconds 10] [--warmup 2]
    .venv/bin/python -m bench.store --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/x \
        --concurrency 8 --seconds 3 --warmup 1

With ``--database-url`` (PostgreSQL) it compares the backends instead: it serves SQLite and a
fresh PostgreSQL database (created next to the URL's database, dropped afterwards) side by
side, measures each without and with an Idempotency-Key per append in interleaved rounds, and
reports the server process's CPU seconds per append (utime + stime from /proc) and the
PostgreSQL / SQLite ratios. CPU per append survives a busy machine far better than appends
per second do. It also prints the sessions PostgreSQL opened: more than the pool holds means
overflow connections were opened and closed, which costs more than the appends.

Starts ``python -m app.cli serve`` (one uvicorn worker, SQLite in a temporary data dir) on a free
loopback port, creates one conversation per client, and has each client append one message at a
time over a keep-alive HTTP/1.1 connection (a minimal asyncio client, so the load generator
steals as little CPU as possible from the server on the same machine). Then it runs the same
number of appends straight through Python's sqlite3: per append one ``BEGIN IMMEDIATE``, an
``UPDATE ... WHERE id = ? AND version = ?`` version check, one message INSERT, ``COMMIT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTENT = "The quick brown fox jumps over the lazy dog. " * 2  # ~90 characters


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class HttpConnection:
    """Just enough HTTP/1.1 keep-alive for JSON requests with Content-Length responses."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length) if length else b""

    def close(self) -> None:
        self.writer.close()


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time of a process (or of one of its threads) from /proc."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def keel_server(data_dir: Path, port: int, extra_env: dict[str, str]) -> Iterator[int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env.update(
        {
            "KEEL_DATA_DIR": str(data_dir),
            "KEEL_PORT": str(port),
            "KEEL_HOST": "127.0.0.1",
            "KEEL_LOG_FORMAT": "json",
            **extra_env,
        }
    )
    log = (data_dir.parent / "keel.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("keel did not start; see keel.log") from None
                time.sleep(0.05)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


async def http_bench(
    port: int,
    concurrency: int,
    seconds: float,
    warmup: float,
    idempotency: bool,
    server_pid: int | None = None,
) -> dict[str, float]:
    conns = [HttpConnection("127.0.0.1", port) for _ in range(concurrency)]
    for c in conns:
        await c.open()
    ids = []
    for c in conns:
        status, body = await c.request("POST", "/v1/conversations", b'{"title":"bench"}')
        assert status == 201, body
        ids.append(json.loads(body)["id"])
    latencies: list[float] = []
    errors = 0
    measuring = False
    stop = False
    payload = json.dumps(
        {"items": [{"type": "message", "role": "user", "content": CONTENT}]}
    ).encode()

    async def worker(conn: HttpConnection, cid: str) -> None:
        nonlocal errors
        path = f"/v1/conversations/{cid}/items"
        while not stop:
            headers = {"Idempotency-Key": uuid.uuid4().hex} if idempotency else None
            t0 = time.perf_counter()
            status, _ = await conn.request("POST", path, payload, headers)
            elapsed = time.perf_counter() - t0
            if measuring:
                if status == 201:
                    latencies.append(elapsed)
                else:
                    errors += 1

    tasks = [asyncio.create_task(worker(c, i)) for c, i in zip(conns, ids, strict=True)]
    await asyncio.sleep(warmup)
    cpu0 = _server_cpu(server_pid)
    measuring = True
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    measuring = False
    duration = time.perf_counter() - started
    cpu1 = _server_cpu(server_pid)
    stop = True
    await asyncio.gather(*tasks)
    for c in conns:
        c.close()
    result = _summary(latencies, duration, errors)
    if cpu0 and cpu1 and latencies:
        result["server_cpu_us"] = (cpu1[0] - cpu0[0]) / len(latencies) * 1e6
        result["main_thread_cpu_us"] = (cpu1[1] - cpu0[1]) / len(latencies) * 1e6
    return result


def _server_cpu(pid: int | None) -> tuple[float, float] | None:
    """(whole process, event-loop thread) CPU seconds; the loop thread's id is the pid."""
    if pid is None or not Path(f"/proc/{pid}/stat").exists():
        return None
    return cpu_seconds(pid), cpu_seconds(pid, pid)


def sqlite_bench(path: Path, count: int, synchronous: str) -> dict[str, float]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute(
        "CREATE TABLE conversations (id TEXT PRIMARY KEY, version INTEGER NOT NULL, "
        "next_seq INTEGER NOT NULL, updated_at TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE messages (id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL "
        "REFERENCES conversations(id), seq INTEGER NOT NULL, role TEXT NOT NULL, "
        "content TEXT NOT NULL, checksum TEXT NOT NULL, version INTEGER NOT NULL, "
        "created_at TEXT NOT NULL, UNIQUE (conversation_id, seq))"
    )
    cid = str(uuid.uuid4())
    db.execute("INSERT INTO conversations VALUES (?, 1, 1, ?)", (cid, _now()))
    version, latencies = 1, []
    started = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        row = db.execute(
            "UPDATE conversations SET version = version + 1, next_seq = next_seq + 1, "
            "updated_at = ? WHERE id = ? AND version = ? RETURNING version, next_seq",
            (_now(), cid, version),
        ).fetchone()
        version, seq = row[0], row[1] - 1
        checksum = hashlib.sha256(
            json.dumps(
                {"content": CONTENT, "conversation_id": cid, "role": "user", "seq": seq},
                sort_keys=True,
                separators=(",", ":"),
            ).encode()
        ).hexdigest()
        db.execute(
            "INSERT INTO messages VALUES (?, ?, ?, 'user', ?, ?, ?, ?)",
            (str(uuid.uuid4()), cid, seq, CONTENT, checksum, version, _now()),
        )
        db.execute("COMMIT")
        latencies.append(time.perf_counter() - t0)
    duration = time.perf_counter() - started
    db.close()
    return _summary(latencies, duration, 0)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def _summary(latencies: list[float], duration: float, errors: int) -> dict[str, float]:
    latencies.sort()
    n = len(latencies)
    if n == 0:
        return {"count": 0, "per_s": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "errors": errors}
    return {
        "count": n,
        "per_s": n / duration,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000,
        "errors": errors,
    }


def _line(name: str, r: dict[str, float]) -> str:
    return (
        f"{name:<34} {r['per_s']:>9,.0f}/s   p50 {r['p50_ms']:6.2f} ms   "
        f"p99 {r['p99_ms']:6.2f} ms   n={int(r['count'])} errors={int(r['errors'])}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument(
        "--idempotency-keys",
        action="store_true",
        help="send a fresh Idempotency-Key with every append",
    )
    p.add_argument("--log-level", default="INFO", help="server KEEL_LOG_LEVEL (default INFO)")
    p.add_argument("--synchronous", default="NORMAL", choices=["NORMAL", "FULL"])
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="bench a Keel already serving on 127.0.0.1:PORT (HTTP figures only)",
    )
    p.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL URL (postgresql+asyncpg://...): compare CPU per append against "
        "SQLite in one run, without and with Idempotency-Keys",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="with --database-url: interleaved measurement rounds (default 3)",
    )
    args = p.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    if args.database_url:
        return compare_backends(args)
    if args.port:
        http = asyncio.run(
            http_bench(
                args.port, args.concurrency, args.seconds, args.warmup, args.idempotency_keys
            )
        )
        print(_line("HTTP append (running Keel)", http))
        return 0
    load_before = _loadavg()
    with tempfile.TemporaryDirectory(prefix="keel-bench-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        env = {"KEEL_LOG_LEVEL": args.log_level, "KEEL_STORE__SQLITE_SYNCHRONOUS": args.synchronous}
        port = _free_port()
        with keel_server(data, port, env) as pid:
            http = asyncio.run(
                http_bench(
                    port, args.concurrency, args.seconds, args.warmup, args.idempotency_keys, pid
                )
            )
        raw = sqlite_bench(Path(tmp) / "raw.db", max(1000, int(http["count"])), args.synchronous)
    print(
        f"cpus={os.cpu_count()} python={sys.version.split()[0]} "
        f"sqlite={sqlite3.sqlite_version} synchronous={args.synchronous} "
        f"concurrency={args.concurrency} seconds={args.seconds} "
        f"idempotency_keys={args.idempotency_keys} log_level={args.log_level}"
    )
    print(_line("HTTP append (Keel, 1 worker)", http))
    print(_line("raw sqlite3 append (1 thread)", raw))
    if "main_thread_cpu_us" in http:
        main_us = http["main_thread_cpu_us"]
        print(
            f"Keel CPU per append: event-loop thread {main_us:.0f} us, whole process "
            f"{http['server_cpu_us']:.0f} us (one free core for the loop: "
            f"~{1e6 / main_us:,.0f}/s)"
        )
    print(
        f"load average before/after (other processes share the CPUs): {load_before} / {_loadavg()}"
    )
    return 0


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def compare_backends(args: argparse.Namespace) -> int:
    """SQLite and PostgreSQL, each without and with keys: server CPU per append and ratios.

    Both servers stay up and their measurement windows interleave (round 1: SQLite, then
    PostgreSQL, without keys, then with; round 2: the same), so load from other processes
    falls on both sides alike; the headline is the median of the per-round ratios.
    """
    from bench.store.postgres import scratch_database

    load_before = _loadavg()
    runs: dict[tuple[str, bool], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="keel-bench-") as tmp, contextlib.ExitStack() as stack:
        servers: dict[str, tuple[int, int]] = {}
        for backend in ("sqlite", "postgresql"):
            data = Path(tmp) / backend / "data"
            data.mkdir(parents=True)
            env = {"KEEL_LOG_LEVEL": args.log_level}
            if backend == "postgresql":
                env["KEEL_DATABASE_URL"] = stack.enter_context(scratch_database(args.database_url))
            port = _free_port()
            servers[backend] = (port, stack.enter_context(keel_server(data, port, env)))
        for _ in range(args.rounds):
            for keys in (False, True):
                for backend, (port, pid) in servers.items():
                    runs.setdefault((backend, keys), []).append(
                        asyncio.run(
                            http_bench(port, args.concurrency, args.seconds, args.warmup, keys, pid)
                        )
                    )
    print(
        f"cpus={os.cpu_count()} python={sys.version.split()[0]} concurrency={args.concurrency} "
        f"seconds={args.seconds} rounds={args.rounds} log_level={args.log_level}"
    )
    for (backend, keys), rs in runs.items():
        name = f"{backend}{' + Idempotency-Key' if keys else ''}"
        cpu = " ".join(f"{r.get('server_cpu_us', 0):.0f}" for r in rs)
        print(f"{_line(name, rs[-1])}   CPU/append (us, per round) {cpu}")
    for keys in (False, True):
        ratios = [
            pg["server_cpu_us"] / lite["server_cpu_us"]
            for lite, pg in zip(runs["sqlite", keys], runs["postgresql", keys], strict=True)
            if lite.get("server_cpu_us") and pg.get("server_cpu_us")
        ]
        if ratios:
            print(
                f"PostgreSQL / SQLite CPU per append{' with keys' if keys else ''}: "
                f"{statistics.median(ratios):.2f}x (per round: "
                f"{', '.join(f'{r:.2f}' for r in ratios)})"
            )
    print(
        f"load average before/after (other processes share the CPUs): {load_before} / {_loadavg()}"
    )
    return 0
