"""The download manager: starts, joins, resumes and cancels download jobs.

One job per model at a time: a second request for a model that is downloading joins the running
job (one upstream stream). Jobs are rows in ``download_jobs`` written before the 202 goes out,
so after a crash or restart every ``queued``/``running`` row is resumed by ``start()`` without
anybody asking again. ``max_concurrent`` jobs transfer at once; the others wait in ``queued``.

Cancellation has two meanings. A user cancel (``DELETE``) stops the job and deletes its partial
files. A shutdown cancel leaves the row ``running`` and the partials in place, to be resumed at
the next start.

The disk preflight runs synchronously between computing the plan and registering the job, so
two requests cannot both spend the same free bytes: bytes still to fetch by running jobs on the
same filesystem count as used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import InsufficientStorage, ModelNotFound, StorageUnavailable, ValidationFailed
from app.lifecycle.downloader import Downloader, FileProgress
from app.lifecycle.jobs import JobRecord, JobRepository, utcnow
from app.lifecycle.manifest import Manifest, ModelSpec
from app.lifecycle.partial import PartialPaths
from app.lifecycle.paths import UnsafeName, check_model_id
from app.lifecycle.plan import ModelPlan, plan_model
from app.lifecycle.progress import ProgressEvent, ProgressHub
from app.lifecycle.retry_policy import DownloadFailure
from app.lifecycle.storage import StorageRoots, device_of
from app.observability.metrics import Metrics
from app.observability.timeline import Timeline
from app.settings import DownloadSettings

log = logging.getLogger("keel.downloads")

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]

USER_CANCEL = "user"
SHUTDOWN = "shutdown"


@dataclass(slots=True)
class RunningJob:
    record: JobRecord
    model: ModelSpec
    device: int
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    last_event: ProgressEvent | None = None
    last_persist: float = field(default_factory=time.monotonic)

    @property
    def remaining(self) -> int:
        return max(0, self.record.bytes_total - self.record.bytes_done)


class DownloadManager:
    def __init__(
        self,
        *,
        manifest: Manifest,
        storage: StorageRoots,
        jobs: JobRepository,
        downloader: Downloader,
        hub: ProgressHub,
        settings: DownloadSettings,
        metrics: Metrics,
        timeline: Timeline,
        spawn: Spawn,
    ) -> None:
        self.manifest = manifest
        self.storage = storage
        self.jobs = jobs
        self.downloader = downloader
        self.hub = hub
        self.settings = settings
        self.metrics = metrics
        self.timeline = timeline
        self._spawn = spawn
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self.running: dict[str, RunningJob] = {}
        self.outcomes: dict[str, JobRecord] = {}  # last finished job per model
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished: Counter[str] = Counter()

    # -- lookups -------------------------------------------------------------------------

    def running_jobs(self) -> list[dict[str, Any]]:
        """What ``/v1/diagnostics`` shows of the downloads in flight."""
        return [
            {
                "job": r.record.id,
                "kind": "download",
                "model": r.model.id,
                "phase": r.record.phase,
                "bytes": r.record.bytes_done,
                "total": r.record.bytes_total,
                "attempt": r.record.attempt,
            }
            for r in self.running.values()
        ]

    def model(self, model_id: str) -> ModelSpec:
        try:
            check_model_id(model_id)
        except UnsafeName:
            raise ValidationFailed(
                "The model id is not valid.",
                extra={
                    "errors": [{"field": "id", "message": "expected [a-z0-9][a-z0-9._-]{0,63}"}]
                },
            ) from None
        spec = self.manifest.get(model_id)
        if spec is None:
            raise ModelNotFound("No model with this id is in the manifest.")
        return spec

    def plan(self, model: ModelSpec) -> ModelPlan:
        return plan_model(self.storage, model)

    def free_bytes(self, path: Path) -> int:
        return self.storage.free_space(path)

    def reserved_on(self, device: int) -> int:
        return sum(r.remaining for r in self.running.values() if r.device == device)

    # -- starting and joining ------------------------------------------------------------

    def preflight(self, plans: Iterable[ModelPlan]) -> None:
        """507 unless each filesystem has room for what still has to be fetched."""
        need: dict[int, tuple[int, Path]] = {}
        for plan in plans:
            if plan.installed or plan.model.id in self.running:
                continue
            root = self.storage.root(plan.model.capability)
            dev = device_of(root)
            total, _ = need.get(dev, (0, root))
            need[dev] = (total + plan.to_fetch, root)
        for dev, (bytes_needed, root) in need.items():
            free = self.free_bytes(root)
            reserved = self.reserved_on(dev)
            margin = self.settings.free_space_margin_bytes
            if free < bytes_needed + reserved + margin:
                raise InsufficientStorage(
                    "Not enough free space in the storage root for this download.",
                    extra={
                        "needed_bytes": bytes_needed,
                        "reserved_bytes": reserved,
                        "margin_bytes": margin,
                        "free_bytes": free,
                    },
                )

    async def start(self, models: list[ModelSpec]) -> list[tuple[ModelPlan, RunningJob | None]]:
        """Start or join a download of each model; ``None`` for a model already installed."""
        plans = [self.plan(m) for m in models]
        self.preflight(plans)
        out: list[tuple[ModelPlan, RunningJob | None]] = []
        created: list[RunningJob] = []
        # No await until every new job is registered: the preflight above stays true.
        for plan in plans:
            run = self.running.get(plan.model.id)
            if run is None and not plan.installed:
                record = JobRecord.new(plan.model.id, plan.model.total_bytes)
                record.bytes_done = plan.on_disk
                run = self._register(record, plan.model)
                created.append(run)
            out.append((plan, run))
        for i, run in enumerate(created):
            try:
                await self.jobs.insert(run.record)
            except BaseException:
                for unsaved in created[i:]:  # registered but never started: forget them
                    self._forget(unsaved)
                raise
            self._transition(run, "none", "queued", "requested")
            self._launch(run)
        return out

    def _register(self, record: JobRecord, model: ModelSpec) -> RunningJob:
        run = RunningJob(record, model, device_of(self.storage.root(model.capability)))
        self.running[model.id] = run
        self._publish(run, "queued", None)
        return run

    def _launch(self, run: RunningJob) -> None:
        run.task = self._spawn(self._run(run), f"download:{run.model.id}")
        self._tasks.add(run.task)
        run.task.add_done_callback(self._tasks.discard)
        self._update_gauges()

    async def resume_unfinished(self) -> None:
        """Resume the jobs a crash or shutdown interrupted (called once at start-up)."""
        for record in await self.jobs.unfinished():
            model = self.manifest.get(record.model_id)
            if model is None:
                await self._finish_row(
                    record, "failed", "model_not_found", "The model is no longer in the manifest."
                )
                continue
            if record.model_id in self.running:
                await self._finish_row(
                    record, "failed", "superseded", "Another job for this model was resumed."
                )
                continue
            try:
                plan = self.plan(model)
                self.preflight([plan])
            except (InsufficientStorage, StorageUnavailable) as exc:
                await self._finish_row(record, "failed", exc.code, exc.detail)
                continue
            record.state, record.phase, record.bytes_done = "queued", "queued", plan.on_disk
            run = self._register(record, model)
            await self.jobs.save(record, "state", "phase", "bytes_done")
            self._transition(run, "interrupted", "queued", "resumed after restart")
            self._launch(run)

    async def _finish_row(self, record: JobRecord, state: str, code: str, message: str) -> None:
        record.state, record.phase = state, "failed"
        record.error_code, record.error_message = code, message
        record.error_retryable, record.finished_at = False, utcnow()
        await self.jobs.save(
            record,
            "state",
            "phase",
            "error_code",
            "error_message",
            "error_retryable",
            "finished_at",
        )
        self.outcomes[record.model_id] = record

    # -- the job itself ------------------------------------------------------------------

    async def _run(self, run: RunningJob) -> None:
        record, model = run.record, run.model
        started = time.monotonic()
        try:
            async with self._slots:
                record.state, record.phase = "running", "downloading"
                await self.jobs.save(record, "state", "phase")
                self._transition(run, "queued", "running", "slot acquired")
                self._update_gauges()
                done = 0
                for spec in model.files:
                    final = self.storage.file_path(model, spec)
                    if await asyncio.to_thread(_installed, final, spec.size):
                        done += spec.size
                        continue
                    await asyncio.to_thread(final.parent.mkdir, parents=True, exist_ok=True)
                    await self.downloader.fetch(model.id, spec, final, self._reporter(run, done))
                    done += spec.size
            duration = time.monotonic() - started
            self.metrics.download_duration.labels(model=model.id).observe(duration)
            record.bytes_done = record.bytes_total
            await self._end(run, "succeeded", "ready", duration=duration)
        except StorageUnavailable as exc:  # a link appeared under the root mid-download
            await self._end(
                run,
                "failed",
                "failed",
                code=exc.code,
                message=exc.detail,
                retryable=False,
                duration=time.monotonic() - started,
            )
        except DownloadFailure as failure:
            # Attempts that failed before reporting progress never reached the reporter.
            record.attempt = max(record.attempt, failure.attempts)
            log.warning(
                "download failed",
                extra={
                    "model": model.id,
                    "code": failure.code,
                    "reason": failure.reason,
                    "attempts": record.attempt,
                },
            )
            await self._end(
                run,
                "failed",
                "failed",
                code=failure.code,
                message=failure.message,
                retryable=failure.retryable,
                duration=time.monotonic() - started,
            )
        except asyncio.CancelledError:
            if run.cancel_reason == USER_CANCEL:
                await asyncio.to_thread(self._remove_partials, model)
                await self._end(
                    run,
                    "cancelled",
                    "failed",
                    code="cancelled",
                    message="The download was cancelled.",
                    retryable=True,
                    duration=time.monotonic() - started,
                )
            else:  # shutdown: keep the row active and the partial, to resume at next start
                with contextlib.suppress(Exception):
                    await self.jobs.save(record, "bytes_done", "attempt")
                self._forget(run)
            raise
        except Exception:
            log.exception("download job crashed", extra={"model": model.id})
            await self._end(
                run,
                "failed",
                "failed",
                code="internal_error",
                message="The download stopped on an internal error.",
                retryable=True,
                duration=time.monotonic() - started,
            )

    def _reporter(self, run: RunningJob, base: int) -> Callable[[FileProgress], Any]:
        async def report(p: FileProgress) -> None:
            record = run.record
            phase_changed = record.phase != p.phase
            record.phase, record.attempt = p.phase, p.attempt
            record.bytes_done = base + p.bytes
            self._publish(
                run,
                p.phase,
                p.file,
                attempt=p.attempt,
                resumed_from=p.resumed_from,
                bytes_per_s=p.bytes_per_s,
            )
            now = time.monotonic()
            if phase_changed or now - run.last_persist >= self.settings.persist_interval_s:
                run.last_persist = now
                try:
                    await self.jobs.save(record, "phase", "bytes_done", "attempt")
                except Exception:  # progress is advisory; never fail a download over it
                    log.warning("could not save download progress", exc_info=True)

        return report

    async def _end(
        self,
        run: RunningJob,
        state: str,
        phase: str,
        *,
        code: str | None = None,
        message: str | None = None,
        retryable: bool = False,
        duration: float | None = None,
    ) -> None:
        record = run.record
        old = record.state
        record.state, record.phase = state, phase
        record.error_code, record.error_message = code, message
        record.error_retryable = retryable if code else None
        record.finished_at, record.duration_s = utcnow(), duration
        # The row first: once the model reads as installed (or failed), its job is recorded.
        save = asyncio.ensure_future(
            self.jobs.save(
                record,
                "state",
                "phase",
                "bytes_done",
                "attempt",
                "error_code",
                "error_message",
                "error_retryable",
                "finished_at",
                "duration_s",
            )
        )
        try:
            await asyncio.shield(save)
        except asyncio.CancelledError:
            await save  # a shutdown arriving now waits for the outcome to be recorded
            raise
        except Exception:
            log.exception(
                "could not save the end of a download job", extra={"model": record.model_id}
            )
        finally:
            self._publish(run, phase, None, error=record.error())
            self._transition(run, old, state, code or "done")
            self._finished[state] += 1
            self.outcomes[record.model_id] = record
            self._forget(run)

    def _forget(self, run: RunningJob) -> None:
        if self.running.get(run.model.id) is run:
            del self.running[run.model.id]
        self._update_gauges()

    # -- cancel, delete ------------------------------------------------------------------

    async def cancel(self, model_id: str, reason: str = USER_CANCEL) -> JobRecord | None:
        run = self.running.get(model_id)
        if run is None:
            return None
        run.cancel_reason = reason
        if run.task is not None:
            run.task.cancel()
            await asyncio.wait({run.task})
        return run.record

    async def shutdown(self, grace_s: float = 10.0) -> None:
        """Cancel running jobs as a shutdown and wait (bounded) for every job task to end."""
        for run in self.running.values():
            if run.cancel_reason is None:
                run.cancel_reason = SHUTDOWN
            if run.task is not None:
                run.task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)

    def _remove_partials(self, model: ModelSpec) -> None:
        for spec in model.files:
            PartialPaths(self.storage.file_path(model, spec)).remove()

    def remove_files(self, model: ModelSpec) -> None:
        self._remove_partials(model)
        for spec in model.files:
            with contextlib.suppress(FileNotFoundError):
                self.storage.file_path(model, spec).unlink()
        with contextlib.suppress(OSError):
            self.storage.model_dir(model).rmdir()

    # -- events, metrics, timeline -------------------------------------------------------

    def _publish(
        self,
        run: RunningJob,
        phase: str,
        file: str | None,
        *,
        attempt: int = 0,
        resumed_from: int = 0,
        bytes_per_s: float = 0.0,
        error: dict[str, Any] | None = None,
    ) -> None:
        record = run.record
        event = ProgressEvent(
            model=record.model_id,
            job_id=record.id,
            phase=phase,
            file=file,
            bytes=record.bytes_done,
            total=record.bytes_total,
            attempt=attempt or record.attempt,
            resumed_from=resumed_from,
            bytes_per_s=bytes_per_s,
            error=error,
        )
        run.last_event = event
        self.hub.publish(event)

    def _transition(self, run: RunningJob, old: str, new: str, reason: str) -> None:
        self.timeline.record(f"download:{run.model.id}", old, new, reason)

    def _update_gauges(self) -> None:
        states = Counter(r.record.state for r in self.running.values())
        for state in ("queued", "running"):
            self.metrics.download_jobs.labels(state=state).set(states.get(state, 0))
        for state in ("succeeded", "failed", "cancelled"):
            self.metrics.download_jobs.labels(state=state).set(self._finished.get(state, 0))


def _installed(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False
