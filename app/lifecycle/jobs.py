"""Download jobs: the row shape and every SQL statement on ``download_jobs``.

A job is one request to make a model's files present. ``state`` is its outcome
(``queued | running | succeeded | failed | cancelled``); ``phase`` what it is doing
(``queued | downloading | verifying | promoting | ready | failed``). Rows in ``queued`` or
``running`` when Keel starts belong to a download that a crash or shutdown interrupted: they
are resumed. Finished rows are kept for ``partial_max_age_s`` and then pruned.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, update

from app.store.database import Database
from app.store.tables import download_jobs

ACTIVE_STATES = ("queued", "running")
FINISHED_STATES = ("succeeded", "failed", "cancelled")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class JobRecord:
    id: str
    model_id: str
    state: str
    phase: str
    bytes_done: int
    bytes_total: int
    attempt: int
    error_code: str | None
    error_message: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    duration_s: float | None = None
    error_retryable: bool | None = None

    @classmethod
    def new(cls, model_id: str, total: int) -> JobRecord:
        now = utcnow()
        return cls(
            id=uuid.uuid4().hex,
            model_id=model_id,
            state="queued",
            phase="queued",
            bytes_done=0,
            bytes_total=total,
            attempt=0,
            error_code=None,
            error_message=None,
            created_at=now,
            updated_at=now,
        )

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def as_json(self) -> dict[str, Any]:
        total = self.bytes_total
        out: dict[str, Any] = {
            "id": self.id,
            "model_id": self.model_id,
            "state": self.state,
            "phase": self.phase,
            "bytes": self.bytes_done,
            "total": total,
            "percent": percent(self.bytes_done, total),
            "attempt": self.attempt,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "finished_at": _iso(self.finished_at) if self.finished_at else None,
            "duration_s": self.duration_s,
        }
        if self.error_code:
            out["error"] = self.error()
        return out

    def error(self) -> dict[str, Any] | None:
        if not self.error_code:
            return None
        return {
            "code": self.error_code,
            "retryable": bool(self.error_retryable),
            "message": self.error_message or "",
        }


def percent(done: int, total: int) -> float:
    return round(100.0 * done / total, 1) if total > 0 else 0.0


def _iso(value: datetime) -> str:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def _record(row: Any) -> JobRecord:
    data = dict(row._mapping)
    for key in ("created_at", "updated_at", "finished_at"):
        if data[key] is not None and data[key].tzinfo is None:  # SQLite drops the zone
            data[key] = data[key].replace(tzinfo=UTC)
    return JobRecord(**data)


class JobRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, job: JobRecord) -> None:
        async with self.db.write() as conn:
            await conn.execute(download_jobs.insert().values(**asdict(job)))

    async def update(self, job_id: str, **values: Any) -> None:
        values.setdefault("updated_at", utcnow())
        async with self.db.write() as conn:
            await conn.execute(
                update(download_jobs).where(download_jobs.c.id == job_id).values(**values)
            )

    async def save(self, job: JobRecord, *fields: str) -> None:
        job.updated_at = utcnow()
        await self.update(job.id, updated_at=job.updated_at, **{f: getattr(job, f) for f in fields})

    async def get(self, job_id: str) -> JobRecord | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(select(download_jobs).where(download_jobs.c.id == job_id))
            ).first()
        return _record(row) if row is not None else None

    async def unfinished(self) -> list[JobRecord]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(download_jobs)
                    .where(download_jobs.c.state.in_(ACTIVE_STATES))
                    .order_by(download_jobs.c.created_at)
                )
            ).all()
        return [_record(r) for r in rows]

    async def latest_finished(self) -> dict[str, JobRecord]:
        """The most recent finished job of each model (a small table: pruned by age)."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(download_jobs)
                    .where(download_jobs.c.state.in_(FINISHED_STATES))
                    .order_by(download_jobs.c.created_at)
                )
            ).all()
        out: dict[str, JobRecord] = {}
        for row in rows:
            job = _record(row)
            out[job.model_id] = job
        return out

    async def recent(self, limit: int) -> list[JobRecord]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(download_jobs).order_by(download_jobs.c.created_at.desc()).limit(limit)
                )
            ).all()
        return [_record(r) for r in rows]

    async def prune_finished(self, before: datetime) -> int:
        async with self.db.write() as conn:
            result = await conn.execute(
                delete(download_jobs)
                .where(download_jobs.c.state.in_(FINISHED_STATES))
                .where(download_jobs.c.finished_at < before)
            )
        return int(result.rowcount or 0)
