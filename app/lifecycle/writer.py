"""The sink of one download attempt: batches hashed and appended to the partial, off the loop.

The event loop only collects received chunks into batches; each batch goes to a ``Strand`` of
the hash pool, which updates the SHA-256 and writes it (in 1 MiB pieces), in order. Up to
``depth`` batches are in flight, so the network read of batch N+1 overlaps the hash and write
of batch N, and memory stays bounded at ``depth * batch`` bytes.

Batch futures are awaited through ``asyncio.shield``: a cancelled download must never cancel a
queued batch (the batches after it would then leave a hole in the file). Once any batch fails,
later ones do nothing, so the bytes on disk and the bytes hashed stay equal (``hashed``).
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable
from typing import Any

from app.lifecycle.hashing import Hasher, Strand, write_all

# Written in 1 MiB pieces, not one 4 MiB write: measured on the benchmark VM (Linux 6.18, ext4,
# virtio-balloon free page reporting), 4 MiB writes spent most of their time copying into
# fresh page-cache folios (~450 MB/s end to end) and 1 MiB writes did not (~850 MB/s). The
# likely cause: writes of 2 MiB and more get 2 MiB folios, drawn from the high-order free
# pages the host has taken back. Four syscalls per batch cost nothing measurable elsewhere.
WRITE_PIECE = 1024 * 1024


class BatchWriter:
    def __init__(self, strand: Strand, fd: int, hasher: Hasher, offset: int, depth: int) -> None:
        self._strand = strand
        self._fd = fd
        self.hasher = hasher
        self.hashed = offset  # bytes both on disk and in the hasher (touched by the strand only)
        self._depth = depth
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._error: BaseException | None = None
        self._closed = False

    async def write(self, chunks: list[bytes]) -> None:
        while len(self._pending) >= self._depth:
            await asyncio.shield(self._pending.popleft())
        self._pending.append(asyncio.wrap_future(self._strand.submit(self._write, chunks)))

    def push(self, chunks: list[bytes]) -> None:
        """Queue a batch without waiting for room: the last batch of an interrupted stream."""
        if chunks and self._error is None:
            self._pending.append(asyncio.wrap_future(self._strand.submit(self._write, chunks)))

    def checkpoint(self, fn: Callable[[int], None]) -> None:
        """Run ``fn(bytes written so far)`` after the batches submitted before it."""
        self._pending.append(asyncio.wrap_future(self._strand.submit(self._checkpoint, fn)))

    async def drain(self) -> None:
        while self._pending:
            await asyncio.shield(self._pending.popleft())

    async def close(self) -> None:
        """Drain and close the file. The close is queued behind every batch, so even when the
        drain is interrupted the descriptor is closed only after the last write."""
        if self._closed:
            return
        self._closed = True
        closing = asyncio.wrap_future(self._strand.submit(os.close, self._fd))
        try:
            await self.drain()
        finally:
            await asyncio.shield(closing)

    @property
    def failed(self) -> bool:
        return self._error is not None

    def _write(self, chunks: list[bytes]) -> None:
        if self._error is not None:
            return
        try:
            # One buffer, so the hash releases the GIL once per batch (and the write once per
            # MiB): every reacquisition can wait a switch interval behind the busy event loop.
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            view = memoryview(data)
            for start in range(0, len(data), WRITE_PIECE):
                write_all(self._fd, view[start : start + WRITE_PIECE])
            self.hasher.update(data)
            self.hashed += len(data)
        except BaseException as exc:
            self._error = exc
            raise

    def _checkpoint(self, fn: Callable[[int], None]) -> None:
        if self._error is None:
            fn(self.hashed)
