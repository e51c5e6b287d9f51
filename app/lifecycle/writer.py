"""The sink of one download attempt: batches hashed and appended to the partial, off the loop.

The event loop only collects received chunks into batches; each batch goes to a ``Strand`` of
the hash pool, which updates the SHA-256 and ``writev``s it, in order. Up to ``depth`` batches
are in flight, so the network read of batch N+1 overlaps the hash and write of batch N, and
memory stays bounded at ``depth * batch`` bytes.

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

from app.lifecycle.hashing import Hasher, Strand, writev_all


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
            # One buffer, so the hash and the write each release the GIL once per batch: every
            # reacquisition can wait up to a switch interval behind the busy event loop.
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            writev_all(self._fd, [data])
            self.hasher.update(data)
            self.hashed += len(data)
        except BaseException as exc:
            self._error = exc
            raise

    def _checkpoint(self, fn: Callable[[int], None]) -> None:
        if self._error is None:
            fn(self.hashed)
