"""What the lifecycle API does: model views, download plans, verify, delete, stale partials.

Routers parse and render; this decides. A model's state is derived, never stored:
``downloading``/``verifying`` while a job runs, ``installed`` when every file sits at its final
path with its manifest size (only verified files ever get there), ``error`` when the last job
failed, else ``absent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from app.errors import ChecksumMismatch, ModelNotReady, NotFound, StorageUnavailable
from app.lifecycle.hashing import HashPool
from app.lifecycle.jobs import JobRecord, JobRepository, percent, utcnow
from app.lifecycle.manager import DownloadManager
from app.lifecycle.manifest import ModelSpec
from app.lifecycle.ownership import reap_stale_partials
from app.lifecycle.plan import ModelPlan, remove_files
from app.lifecycle.progress import ProgressEvent, ProgressHub, Subscription
from app.lifecycle.storage import StorageConfig, StorageRoots
from app.settings import DownloadSettings
from app.store.idempotency import (
    Idempotency,
    IdempotencyRequest,
    Lease,
    StoredResponse,
    json_response,
)

log = logging.getLogger("keel.lifecycle")


class LifecycleService:
    def __init__(
        self,
        *,
        manager: DownloadManager,
        storage: StorageRoots,
        jobs: JobRepository,
        hub: ProgressHub,
        pool: HashPool,
        settings: DownloadSettings,
        wall_clock: Callable[[], float] = time.time,
        idempotency: Idempotency | None = None,
    ) -> None:
        self.manager = manager
        self.storage = storage
        self.jobs = jobs
        self.hub = hub
        self.pool = pool
        self.settings = settings
        self.wall_clock = wall_clock
        self.idempotency = idempotency

    # -- views ----------------------------------------------------------------------------

    def running_jobs(self) -> list[dict[str, Any]]:
        """What ``/v1/diagnostics`` shows of the downloads in flight."""
        return self.manager.running_jobs()

    def model_view(self, model: ModelSpec) -> dict[str, Any]:
        try:
            plan = self.manager.plan(model)
        except StorageUnavailable as exc:  # this model only: the others are still listed
            return _unavailable_view(model, exc)
        run = self.manager.run_of(model.id)
        total = model.total_bytes
        error = None
        job = None
        if run is not None:
            phase = run.record.phase
            state = "verifying" if phase in ("verifying", "promoting") else "downloading"
            done = run.record.bytes_done
            job = {"id": run.record.id, "phase": phase, "attempt": run.record.attempt}
        elif plan.installed:
            state, done = "installed", total
        else:
            done = plan.on_disk
            outcome = self.manager.outcomes.get(model.id)
            state = "absent"
            if outcome is not None and outcome.state == "failed":
                state, error = "error", outcome.error()
        view: dict[str, Any] = {
            "id": model.id,
            "name": model.name,
            "capability": model.capability,
            "engine": model.engine,
            "state": state,
            "size": total,
            "files": [
                {"name": f.name, "size": f.size, "installed": f.installed} for f in plan.files
            ],
            "progress": {"bytes": done, "total": total, "percent": percent(done, total)},
        }
        if error is not None:
            view["error"] = error
        if job is not None:
            view["job"] = job
        return view

    def list_models(self) -> list[dict[str, Any]]:
        return [self.model_view(m) for m in self.manager.manifest]

    def plan_view(self, plans: list[ModelPlan]) -> dict[str, Any]:
        free: dict[str, int | None] = {}
        models = []
        for plan in plans:
            root = self.storage.root(plan.model.capability)
            if str(root) not in free:
                try:
                    free[str(root)] = self.manager.free_bytes(root)
                except OSError:
                    free[str(root)] = None
            running = self.manager.is_running(plan.model.id)
            models.append(
                {
                    "id": plan.model.id,
                    "action": "none" if plan.installed else "join" if running else "download",
                    "bytes_to_fetch": plan.to_fetch,
                    "files": [
                        {
                            "name": f.name,
                            "size": f.size,
                            "installed": f.installed,
                            "partial_bytes": f.partial_bytes,
                            "bytes_to_fetch": f.to_fetch,
                            "target_path": str(f.path),
                        }
                        for f in plan.files
                    ],
                }
            )
        return {
            "models": models,
            "bytes_to_fetch": sum(p.to_fetch for p in plans),
            "free_bytes": free,
            "margin_bytes": self.settings.free_space_margin_bytes,
        }

    def snapshot(self, model: ModelSpec) -> ProgressEvent | None:
        """The event a new subscriber starts from (``None``: nothing has happened yet)."""
        run = self.manager.run_of(model.id)
        if run is not None:
            return run.last_event
        total = model.total_bytes
        try:
            plan = self.manager.plan(model)
        except StorageUnavailable as exc:
            return ProgressEvent(
                model.id, None, "failed", None, 0, total, error=_unavailable_error(exc)
            )
        if plan.installed:
            return ProgressEvent(model.id, None, "ready", None, total, total)
        outcome = self.manager.outcomes.get(model.id)
        if outcome is not None and outcome.state == "failed":
            return ProgressEvent(
                model.id,
                outcome.id,
                "failed",
                None,
                plan.on_disk,
                total,
                attempt=outcome.attempt,
                error=outcome.error(),
            )
        return None

    # -- actions --------------------------------------------------------------------------

    async def download(self, models: list[ModelSpec], *, dry_run: bool) -> dict[str, Any]:
        if dry_run:
            plans = [self.manager.plan(m) for m in models]
            return {"dry_run": True, "plan": self.plan_view(plans)}
        started = await self.manager.start(models)
        return {
            "jobs": [run.record.as_json() for _, run in started if run is not None],
            "models": [self.model_view(plan.model) for plan, _ in started],
        }

    # -- idempotent actions (Idempotency-Key): a repeat replays the first answer ---------

    async def start_download(
        self, model: ModelSpec, key: IdempotencyRequest | None
    ) -> StoredResponse:
        """202 with the job started (or joined), 200 when the model is already installed."""

        async def start() -> StoredResponse:
            result = await self.download([model], dry_run=False)
            job = result["jobs"][0] if result["jobs"] else None
            return json_response(202 if job else 200, {"job": job, "model": result["models"][0]})

        return await self._once(key, start)

    async def start_bundle(
        self, models: list[ModelSpec], key: IdempotencyRequest | None
    ) -> StoredResponse:
        async def start() -> StoredResponse:
            result = await self.download(models, dry_run=False)
            return json_response(202 if result["jobs"] else 200, result)

        return await self._once(key, start)

    async def verify_once(self, model: ModelSpec, key: IdempotencyRequest | None) -> StoredResponse:
        async def verify() -> StoredResponse:
            return json_response(200, await self.verify(model))

        return await self._once(key, verify)

    async def _once(
        self, key: IdempotencyRequest | None, action: Callable[[], Awaitable[StoredResponse]]
    ) -> StoredResponse:
        """Starting a download is not a store write (a task starts): the key is held first."""
        if key is None or self.idempotency is None:
            return await action()

        async def work(lease: Lease) -> StoredResponse:
            await lease.hold()
            return await lease.record(await action())

        return await self.idempotency.once(key, work)

    async def verify(self, model: ModelSpec) -> dict[str, Any]:
        if self.manager.is_running(model.id):
            raise ModelNotReady("The model is still downloading.")
        plan = self.manager.plan(model)
        if not plan.installed:
            raise ModelNotReady("The model is not installed.")
        files = []
        for f, spec in zip(plan.files, model.files, strict=True):
            digest = (await self.pool.hash_file(f.path)).hexdigest()
            ok = digest == spec.sha256
            files.append({"name": f.name, "ok": ok})
            if not ok:
                # Never leave a file that failed verification where a runtime would load it.
                await asyncio.to_thread(_unlink, f.path)
                self.manager.remember_failure(
                    model,
                    "checksum_mismatch",
                    "An installed file failed verification and was removed.",
                )
                raise ChecksumMismatch(
                    "An installed file does not match the manifest's SHA-256; it was removed.",
                    extra={"files": files},
                )
        return {"id": model.id, "ok": True, "files": files}

    async def delete(self, model: ModelSpec, *, dry_run: bool) -> dict[str, Any]:
        plan = self.manager.plan(model)  # storage_unavailable before anything is cancelled
        if dry_run:
            return {
                "dry_run": True,
                "cancels_job": self.manager.is_running(model.id),
                "removes": [str(f.path) for f in plan.files if f.installed or f.partial_bytes],
            }
        cancelled = await self.manager.cancel(model.id)
        await asyncio.to_thread(remove_files, self.storage, model)
        self.manager.outcomes.pop(model.id, None)
        view = self.model_view(model)
        view["cancelled_job"] = cancelled.id if cancelled else None
        return view

    async def job(self, job_id: str) -> JobRecord:
        for run in self.manager.runs():
            if run.record.id == job_id:
                return run.record
        record = await self.jobs.get(job_id)
        if record is None:
            raise NotFound("No download job with this id.")
        return record

    def model(self, model_id: str) -> ModelSpec:
        """The manifest's model, or 404 ``model_not_found`` (422 for an invalid id)."""
        return self.manager.model(model_id)

    def subscribe(self, model: ModelSpec) -> Subscription:
        """Progress events of ``model`` from now on (subscribe before taking a snapshot)."""
        return self.hub.subscribe(model.id)

    async def recent_jobs(self, limit: int) -> list[JobRecord]:
        return await self.jobs.recent(limit)

    async def cancel_download(self, model: ModelSpec) -> dict[str, Any]:
        record = await self.manager.cancel(model.id)
        return {"job": record.as_json() if record else None, "model": self.model_view(model)}

    def storage_view(self) -> dict[str, Any]:
        return self.storage.describe()

    async def replace_storage(
        self, config: StorageConfig, *, create: bool, dry_run: bool
    ) -> dict[str, Any]:
        await self.storage.replace(config, create=create, dry_run=dry_run)
        return {"dry_run": True, "valid": True} if dry_run else self.storage.describe()

    async def cancel_job(self, job_id: str) -> JobRecord:
        record = await self.job(job_id)
        if record.active:
            cancelled = await self.manager.cancel(record.model_id)
            if cancelled is not None:
                return cancelled
        return record

    # -- stale partials -------------------------------------------------------------------

    async def reap(self) -> int:
        """Delete partials no running job owns once they are older than ``partial_max_age_s``;
        prune finished job rows of the same age."""
        cutoff = self.wall_clock() - self.settings.partial_max_age_s
        owned: set[Path] = set()
        for run in self.manager.runs():
            with contextlib.suppress(StorageUnavailable):
                owned.add(self.storage.model_dir(run.model))
        removed = await asyncio.to_thread(
            reap_stale_partials, self.storage.all_roots(), owned, cutoff
        )
        with contextlib.suppress(Exception):
            await self.jobs.prune_finished(
                utcnow() - timedelta(seconds=self.settings.partial_max_age_s)
            )
        if removed:
            log.info("reaped stale partial files", extra={"count": removed})
        return removed

    async def reap_forever(self) -> None:
        while True:
            try:
                await self.reap()
            except Exception:
                log.exception("stale partial sweep failed")
            await asyncio.sleep(self.settings.reap_interval_s)


def _unavailable_error(exc: StorageUnavailable) -> dict[str, Any]:
    return {"code": exc.code, "retryable": exc.retryable, "message": exc.detail}


def _unavailable_view(model: ModelSpec, exc: StorageUnavailable) -> dict[str, Any]:
    total = model.total_bytes
    return {
        "id": model.id,
        "name": model.name,
        "capability": model.capability,
        "engine": model.engine,
        "state": "error",
        "size": total,
        "files": [{"name": f.name, "size": f.size, "installed": False} for f in model.files],
        "progress": {"bytes": 0, "total": total, "percent": 0.0},
        "error": _unavailable_error(exc),
    }


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
