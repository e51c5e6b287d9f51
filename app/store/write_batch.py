"""Group commit: on SQLite, mutations that queue up while a transaction runs share the next one.

SQLite has one writer at a time and, through aiosqlite, every statement, BEGIN and COMMIT is a
round trip to the connection's thread. Under load the transaction overhead, not the statements,
bounds throughput. ``Database.write_batched(job)`` (``WriteBatcher.run``) therefore queues
``job`` and a flush task runs the queued jobs one after another inside ONE ``Database.write()``
transaction; each caller gets its result only after that transaction has committed, so an
acknowledged write is durable exactly as if it had committed alone.

Jobs share a transaction optimistically. When one raises, the transaction rolls back; that job
runs again alone (its own transaction, so its error is the one it would have had alone), and
the others are queued again in order. A job that has been in two failed batches runs alone.
Each failed batch finishes at least one job, so the loop terminates. Jobs must therefore be
safe to re-run after a rollback: no side effects outside the transaction (count metrics after
``run`` returns).

On PostgreSQL every statement, BEGIN and COMMIT is a network round trip, and the round
trips, not the statements, were most of the CPU an append cost (docs/benchmarks.md). Up to
``PG_FLUSHERS`` batches run at once there, each on its own pooled connection: a lone write is
its own transaction as before, and writes that queue while those run share one. Several
flushers keep a remote server's round-trip latency from capping throughput. Batches lock the
rows they write until they commit; two batches that lock two rows in opposite orders are a
deadlock PostgreSQL breaks after ``deadlock_timeout`` by failing one, whose jobs then run again
as above.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

if TYPE_CHECKING:
    from app.store.database import Database


T = TypeVar("T")
Job = Callable[[AsyncConnection], Awaitable[T]]

MAX_BATCH = 64
"""Bounds how long one transaction holds the write lock and how much one failure re-runs."""

PG_FLUSHERS = 4
"""Write transactions one process runs at once on PostgreSQL (SQLite has one writer)."""


@dataclass(eq=False)
class _Queued:
    job: Job[Any]
    future: asyncio.Future[Any]
    failed_batches: int = field(default=0)


class _JobFailed(Exception):
    def __init__(self, index: int, error: BaseException) -> None:
        self.index = index
        self.error = error


class WriteBatcher:
    def __init__(self, db: Database, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self.max_batch = max_batch
        self.max_flushers = 1 if db.is_sqlite else PG_FLUSHERS
        self._queue: deque[_Queued] = deque()
        self._flushers: set[asyncio.Task[None]] = set()

    async def run(self, job: Job[T]) -> T:
        """Run ``job(conn)`` in a committed write transaction and return its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(job, future))
        # done() turns true when a flusher returns (its queue check and return are one step);
        # the set forgets it only later, in a done callback.
        if sum(not t.done() for t in self._flushers) < self.max_flushers:
            # Short-lived tasks per burst; a cancelled caller does not cancel the batch.
            task = asyncio.create_task(self._flush(), name="store-group-commit")
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
        return await future

    async def aclose(self) -> None:
        """Wait for queued writes to finish (called when the lifespan ends)."""
        for task in list(self._flushers):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _flush(self) -> None:
        current: list[_Queued] = []
        try:
            await self._drain(current)
        except BaseException:  # cancelled at shutdown: nobody may wait forever
            for item in [*current, *self._queue]:
                item.future.cancel()
            self._queue.clear()
            raise

    async def _drain(self, current: list[_Queued]) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            current[:] = batch
            if len(batch) == 1 or batch[0].failed_batches >= 2:
                await self._solo(batch[0])
                self._queue.extendleft(reversed(batch[1:]))
                continue
            try:
                results = await self._together(batch)
            except _JobFailed as failed:
                await self._solo(batch[failed.index])
                rest = batch[: failed.index] + batch[failed.index + 1 :]
                for item in rest:
                    item.failed_batches += 1
                self._queue.extendleft(reversed(rest))
                continue
            except Exception:  # COMMIT itself failed: let each job find out alone
                for item in batch:
                    await self._solo(item)
                continue
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)

    async def _together(self, batch: list[_Queued]) -> list[Any]:
        results: list[Any] = []
        async with self.db.write() as conn:
            for index, item in enumerate(batch):
                try:
                    results.append(await item.job(conn))
                except Exception as exc:
                    raise _JobFailed(index, exc) from exc
        return results

    async def _solo(self, item: _Queued) -> None:
        try:
            async with self.db.write() as conn:
                result = await item.job(conn)
        except Exception as exc:
            if not item.future.done():
                item.future.set_exception(exc)
            return
        if not item.future.done():
            item.future.set_result(result)
