"""Group commit: shared transactions, acknowledgement only after COMMIT, isolation of a
failing job, termination. A fake database records what each transaction committed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from app.store.write_batch import PG_FLUSHERS, WriteBatcher


class FakeConn:
    def __init__(self) -> None:
        self.ops: list[str] = []


class FakeDatabase:
    def __init__(self, is_sqlite: bool = True, fail_commits: int = 0) -> None:
        self.is_sqlite = is_sqlite
        self.committed: list[list[str]] = []  # one entry per committed transaction
        self.rolled_back = 0
        self.fail_commits = fail_commits
        self.lock = asyncio.Lock()
        self.open = self.max_open = 0  # transactions running at once (PostgreSQL)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[FakeConn]:
        if not self.is_sqlite:
            self.open += 1
            self.max_open = max(self.max_open, self.open)
            try:
                conn = FakeConn()
                yield conn
                for _ in range(10):  # round trips to the server: other tasks run meanwhile
                    await asyncio.sleep(0)
                self.committed.append(conn.ops)
            finally:
                self.open -= 1
            return
        async with self.lock:  # like SQLite: one writer at a time
            conn = FakeConn()
            try:
                yield conn
            except BaseException:
                self.rolled_back += 1
                raise
            await asyncio.sleep(0)
            if self.fail_commits:
                self.fail_commits -= 1
                self.rolled_back += 1
                raise OSError("disk I/O error")
            self.committed.append(conn.ops)

    def all_committed(self) -> list[str]:
        return [op for tx in self.committed for op in tx]


def job(name: str, db: FakeDatabase, fail: bool = False) -> Any:
    async def run(conn: FakeConn) -> str:
        conn.ops.append(name)
        await asyncio.sleep(0)
        if fail:
            raise ValueError(name)
        return name

    return run


async def submit(batcher: WriteBatcher, db: FakeDatabase, name: str, fail: bool = False) -> str:
    result: str = await batcher.run(job(name, db, fail))
    assert name in db.all_committed()  # acknowledged only once committed
    return result


async def test_concurrent_jobs_share_transactions() -> None:
    db = FakeDatabase()
    batcher = WriteBatcher(db)  # type: ignore[arg-type]
    names = [f"j{i}" for i in range(20)]
    assert await asyncio.gather(*[submit(batcher, db, n) for n in names]) == names
    assert sorted(db.all_committed()) == sorted(names)
    assert len(db.committed) < 5


async def test_batches_are_bounded() -> None:
    db = FakeDatabase()
    batcher = WriteBatcher(db, max_batch=4)  # type: ignore[arg-type]
    await asyncio.gather(*[submit(batcher, db, f"j{i}") for i in range(20)])
    assert max(len(tx) for tx in db.committed) <= 4


async def test_a_failing_job_fails_alone() -> None:
    db = FakeDatabase()
    batcher = WriteBatcher(db)  # type: ignore[arg-type]
    calls = [submit(batcher, db, f"ok{i}") for i in range(5)]
    calls.insert(2, submit(batcher, db, "bad", fail=True))
    calls.append(submit(batcher, db, "bad2", fail=True))
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, ValueError)]
    assert sorted(str(e) for e in errors) == ["bad", "bad2"]
    committed = db.all_committed()
    assert sorted(committed) == [f"ok{i}" for i in range(5)]  # each exactly once
    assert db.rolled_back >= 2


async def test_a_failed_commit_is_retried_job_by_job() -> None:
    db = FakeDatabase(fail_commits=1)
    batcher = WriteBatcher(db)  # type: ignore[arg-type]
    assert await asyncio.gather(*[submit(batcher, db, f"j{i}") for i in range(3)]) == [
        "j0",
        "j1",
        "j2",
    ]
    assert sorted(db.all_committed()) == ["j0", "j1", "j2"]


async def test_a_cancelled_caller_does_not_cancel_the_batch() -> None:
    db = FakeDatabase()
    batcher = WriteBatcher(db)  # type: ignore[arg-type]
    first = asyncio.create_task(submit(batcher, db, "a"))
    second = asyncio.create_task(submit(batcher, db, "b"))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == "b"
    with pytest.raises(asyncio.CancelledError):
        await first
    await batcher.aclose()
    assert sorted(db.all_committed()) == ["a", "b"]  # queued work still completes


async def test_postgres_a_lone_write_is_its_own_transaction() -> None:
    db = FakeDatabase(is_sqlite=False)
    batcher = WriteBatcher(db)  # type: ignore[arg-type]
    for i in range(3):
        await submit(batcher, db, f"j{i}")
    assert db.committed == [["j0"], ["j1"], ["j2"]]


async def test_postgres_runs_a_few_transactions_at_once_and_queued_jobs_share_them() -> None:
    db = FakeDatabase(is_sqlite=False)
    batcher = WriteBatcher(db)  # type: ignore[arg-type]
    names = [f"j{i}" for i in range(40)]
    tasks = []
    for n in names:  # one arrival per loop tick, while earlier transactions still run
        tasks.append(asyncio.create_task(submit(batcher, db, n)))
        await asyncio.sleep(0)
    assert await asyncio.gather(*tasks) == names
    assert db.max_open == PG_FLUSHERS  # concurrent transactions, bounded
    assert len(db.committed) < len(names)  # the queued jobs shared transactions
    assert sorted(db.all_committed()) == sorted(names)
