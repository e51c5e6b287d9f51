"""Hashing and file writing off the event loop, in one bounded thread pool.

SHA-256 over hundreds of megabytes must never run on the event loop, and neither may the writes
that go with it. ``HashPool`` is the one place that work goes: a ``ThreadPoolExecutor`` of
``downloads.hash_threads`` workers, created and shut down by the lifecycle component.

A download needs its batches hashed and written *in order*, yet it should not own a thread.
``Strand`` gives that: callables submitted to one strand run one at a time, in submission order,
on the shared pool, so several downloads and verifications share ``hash_threads`` threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

Hasher = Any  # hashlib's _Hash is private; a sha256() object


class HashPool:
    def __init__(self, threads: int, read_bytes: int = 1024 * 1024) -> None:
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="keel-hash"
        )
        self.read_bytes = read_bytes

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def strand(self) -> Strand:
        return Strand(self.executor)

    async def hash_file(self, path: Path, limit: int | None = None) -> Hasher:
        """SHA-256 of the first ``limit`` bytes of ``path`` (all of it when ``None``)."""
        return await self.run(hash_file_sync, path, limit, self.read_bytes)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def hash_file_sync(path: Path, limit: int | None = None, read_bytes: int = 1024 * 1024) -> Hasher:
    h = hashlib.sha256()
    left = limit
    buf = bytearray(read_bytes)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while left is None or left > 0:
            want = read_bytes if left is None else min(read_bytes, left)
            n = f.readinto(view[:want])
            if not n:
                break
            h.update(view[:n])
            if left is not None:
                left -= n
    if left:
        raise EOFError(f"file is shorter than {limit} bytes")
    return h


class Strand:
    """Run callables one at a time, in submission order, on a shared executor."""

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        self._executor = executor
        self._lock = threading.Lock()
        self._queue: deque[
            tuple[Callable[..., Any], tuple[Any, ...], concurrent.futures.Future[Any]]
        ] = deque()
        self._running = False

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            self._queue.append((fn, args, fut))
            if self._running:
                return fut
            self._running = True
        try:
            self._executor.submit(self._drain)
        except RuntimeError:  # executor shut down
            with self._lock:
                self._running = False
                self._queue.clear()
            fut.cancel()
            raise
        return fut

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                fn, args, fut = self._queue.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # handed to whoever awaits the future
                fut.set_exception(exc)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` at the file offset; one syscall in the common case."""
    rest = memoryview(data)
    while rest:
        n = os.write(fd, rest)
        rest = rest[n:]


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
