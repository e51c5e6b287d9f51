"""Hashing and writing happen off the event loop, in order, in a bounded pool."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from pathlib import Path

import pytest

from app.lifecycle import writer as writer_module
from app.lifecycle.hashing import HashPool, write_all
from app.lifecycle.writer import BatchWriter


async def test_hash_file_runs_in_the_pool(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    pool = HashPool(2, read_bytes=4096)
    try:
        assert (await pool.hash_file(path)).hexdigest() == hashlib.sha256(data).hexdigest()
        prefix = await pool.hash_file(path, 1000)
        assert prefix.hexdigest() == hashlib.sha256(data[:1000]).hexdigest()
        name = await pool.run(lambda: threading.current_thread().name)
        assert name.startswith("keel-hash")
        assert pool.executor._max_workers == 2
    finally:
        pool.shutdown()


async def test_strand_keeps_order_on_a_shared_pool(tmp_path: Path) -> None:
    pool = HashPool(4)
    seen: list[int] = []
    try:
        strand = pool.strand()
        futures = [asyncio.wrap_future(strand.submit(seen.append, i)) for i in range(200)]
        await asyncio.gather(*futures)
    finally:
        pool.shutdown()
    assert seen == list(range(200))


async def test_batch_writer_hashes_and_writes_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: set[str] = set()

    def spy(fd: int, data: bytes | memoryview) -> None:
        threads.add(threading.current_thread().name)
        write_all(fd, data)

    monkeypatch.setattr(writer_module, "write_all", spy)
    pool = HashPool(2)
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    chunks = [os.urandom(1000) for _ in range(50)]
    try:
        w = BatchWriter(pool.strand(), fd, hashlib.sha256(), 0, depth=2)
        for i in range(0, 50, 5):
            await w.write(chunks[i : i + 5])
        await w.close()
    finally:
        pool.shutdown()
    data = b"".join(chunks)
    assert path.read_bytes() == data
    assert w.hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert w.hashed == len(data)
    assert threads
    assert all(t.startswith("keel-hash") for t in threads)
    assert threading.main_thread().name not in threads


def test_write_all_finishes_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data)[:3]))
    write_all(fd, b"helloworld")
    os.close(fd)
    assert path.read_bytes() == b"helloworld"
