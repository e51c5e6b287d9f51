"""The download manager: starts, joins, resumes and cancels download jobs.

One job per model at a time: a second request for a model that is downloading joins the running
job (one upstream stream). Jobs are rows in ``download_jobs`` written before the 202 goes out,
so after a crash or restart every ``queued``/``running`` row is resumed by ``start()`` without
anybody asking again. ``max_concurrent`` jobs transfer at once; the others wait in ``queued``.

Cancellation has two meanings. A user cancel (``DELETE``) stops the job and deletes its partial
files. A shutdown cancel leaves the row ``running`` and the partials in place, to be resumed at
the next start.

The disk preflight (``preflight.py``) runs between computing the plan and registering the job,
with no await in between. A job's states and transitions are ``job_state.py``; its events,
timeline entries and gauges ``job_events.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from app.errors import InsufficientStorage, ModelNotFound, StorageUnavailable, ValidationFailed
from app.lifecycle.downloader import Downloader, FileProgress
from app.lifecycle.job_events import JobEvents, RunningJob
from app.lifecycle.job_state import DownloadJob, JobState
from app.lifecycle.jobs import JobRecord, JobRepository, utcnow
from app.lifecycle.manifest import Manifest, ModelSpec
from app.lifecycle.paths import UnsafeName, check_model_id
from app.lifecycle.plan import ModelPlan, installed_at, plan_model, remove_partials
from app.lifecycle.preflight import check_free_space
from app.lifecycle.progress import ProgressHub
from app.lifecycle.retry_policy import DownloadFailure
from app.lifecycle.storage import StorageRoots, device_of
from app.observability.metrics import Metrics
from app.observability.timeline import Timeline
from app.settings import DownloadSettings

log = logging.getLogger("keel.downloads")

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]

USER_CANCEL = "user"
SHUTDOWN = "shutdown"


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manifest = manifest
        self.storage = storage
        self.jobs = jobs
        self.downloader = downloader
        self.hub = hub
        self.settings = settings
        self.metrics = metrics
        self.timeline = timeline
        self.events = JobEvents(hub, metrics, timeline)
        self._spawn = spawn
        self.clock = clock
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self._running: dict[str, RunningJob] = {}
        self.outcomes: dict[str, JobRecord] = {}  # last finished job per model
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished: Counter[str] = Counter()

    # -- lookups -------------------------------------------------------------------------

    def run_of(self, model_id: str) -> RunningJob | None:
        """The job downloading ``model_id`` right now, if any."""
        return self._running.get(model_id)

    def is_running(self, model_id: str) -> bool:
        return model_id in self._running

    def runs(self) -> list[RunningJob]:
        """The running jobs (a snapshot: the map itself stays the manager's)."""
        return list(self._running.values())

    def running_jobs(self) -> list[dict[str, Any]]:
        """What ``/v1/diagnostics`` shows of the downloads in flight."""
        return [r.diagnostics() for r in self._running.values()]

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

    # -- starting and joining ------------------------------------------------------------

    def preflight(self, plans: Iterable[ModelPlan]) -> None:
        """507 unless each filesystem has room for what still has to be fetched."""
        check_free_space(plans, self.storage, self.runs(), self.settings.free_space_margin_bytes)

    async def start(self, models: list[ModelSpec]) -> list[tuple[ModelPlan, RunningJob | None]]:
        """Start or join a download of each model; ``None`` for a model already installed."""
        plans = [self.plan(m) for m in models]
        self.preflight(plans)
        out: list[tuple[ModelPlan, RunningJob | None]] = []
        created: list[RunningJob] = []
        # No await until every new job is registered: the preflight above stays true.
        for plan in plans:
            run = self._running.get(plan.model.id)
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
            self.events.transition(run, "none", "queued", "requested")
            self._launch(run)
        return out

    def _register(self, record: JobRecord, model: ModelSpec) -> RunningJob:
        job = DownloadJob(JobState(record.state), self.clock)
        run = RunningJob(
            record, model, device_of(self.storage.root(model.capability)), job, self.clock()
        )
        self._running[model.id] = run
        self.events.publish(run, "queued", None)
        return run

    def _launch(self, run: RunningJob) -> None:
        run.task = self._spawn(self._run(run), f"download:{run.model.id}")
        self._tasks.add(run.task)
        run.task.add_done_callback(self._tasks.discard)
        self.events.gauges(self._running.values(), self._finished)

    async def resume_unfinished(self) -> None:
        """Resume the jobs a crash or shutdown interrupted (called once at start-up)."""
        for record in await self.jobs.unfinished():
            model = self.manifest.get(record.model_id)
            if model is None:
                await self._finish_row(
                    record, "failed", "model_not_found", "The model is no longer in the manifest."
                )
                continue
            if record.model_id in self._running:
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
            run = self._register(record, model)
            if run.job.state is JobState.RUNNING:
                run.job.requeue("resumed after restart")
            record.state, record.phase, record.bytes_done = (
                run.job.state.value,
                "queued",
                plan.on_disk,
            )
            await self.jobs.save(record, "state", "phase", "bytes_done")
            self.events.transition(run, "interrupted", "queued", "resumed after restart")
            self._launch(run)

    def remember_failure(self, model: ModelSpec, code: str, message: str) -> None:
        """A failure no job produced (a file failed verification): ``error`` until the next job."""
        record = JobRecord.new(model.id, model.total_bytes)
        record.state = record.phase = JobState.FAILED.value
        record.error_code, record.error_message, record.error_retryable = code, message, True
        self.outcomes[model.id] = record

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
        try:
            async with self._slots:
                step = run.job.start()
                record.state, record.phase = run.job.state.value, "downloading"
                await self.jobs.save(record, "state", "phase")
                self.events.transition(run, step.old, step.new, step.reason)
                self.events.gauges(self._running.values(), self._finished)
                done = 0
                for spec in model.files:
                    final = self.storage.file_path(model, spec)
                    if await asyncio.to_thread(installed_at, final, spec.size):
                        done += spec.size
                        continue
                    await asyncio.to_thread(final.parent.mkdir, parents=True, exist_ok=True)
                    await self.downloader.fetch(model.id, spec, final, self._reporter(run, done))
                    done += spec.size
            duration = run.job.duration_s or 0.0
            self.metrics.download_duration.labels(model=model.id).observe(duration)
            record.bytes_done = record.bytes_total
            await self._end(run, JobState.SUCCEEDED, "ready")
        except StorageUnavailable as exc:  # a link appeared under the root mid-download
            await self._end(
                run,
                JobState.FAILED,
                "failed",
                code=exc.code,
                message=exc.detail,
                retryable=False,
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
                JobState.FAILED,
                "failed",
                code=failure.code,
                message=failure.message,
                retryable=failure.retryable,
            )
        except asyncio.CancelledError:
            if run.cancel_reason == USER_CANCEL:
                await asyncio.to_thread(remove_partials, self.storage, model)
                await self._end(
                    run,
                    JobState.CANCELLED,
                    "failed",
                    code="cancelled",
                    message="The download was cancelled.",
                    retryable=True,
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
                JobState.FAILED,
                "failed",
                code="internal_error",
                message="The download stopped on an internal error.",
                retryable=True,
            )

    def _reporter(self, run: RunningJob, base: int) -> Callable[[FileProgress], Any]:
        async def report(p: FileProgress) -> None:
            record = run.record
            phase_changed = record.phase != p.phase
            record.phase, record.attempt = p.phase, p.attempt
            record.bytes_done = base + p.bytes
            self.events.publish(
                run,
                p.phase,
                p.file,
                attempt=p.attempt,
                resumed_from=p.resumed_from,
                bytes_per_s=p.bytes_per_s,
            )
            now = self.clock()
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
        state: JobState,
        phase: str,
        *,
        code: str | None = None,
        message: str | None = None,
        retryable: bool = False,
    ) -> None:
        record = run.record
        duration = run.job.duration_s
        step = run.job.finish(state, code or "done")
        record.state, record.phase = state.value, phase
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
            self.events.publish(run, phase, None, error=record.error())
            self.events.transition(run, step.old, step.new, step.reason)
            self._finished[state] += 1
            self.outcomes[record.model_id] = record
            self._forget(run)

    def _forget(self, run: RunningJob) -> None:
        if self._running.get(run.model.id) is run:
            del self._running[run.model.id]
        self.events.gauges(self._running.values(), self._finished)

    # -- cancel, delete ------------------------------------------------------------------

    async def cancel(self, model_id: str, reason: str = USER_CANCEL) -> JobRecord | None:
        run = self._running.get(model_id)
        if run is None:
            return None
        run.cancel_reason = reason
        if run.task is not None:
            run.task.cancel()
            await asyncio.wait({run.task})
        return run.record

    async def shutdown(self, grace_s: float = 10.0) -> None:
        """Cancel running jobs as a shutdown and wait (bounded) for every job task to end."""
        for run in self._running.values():
            if run.cancel_reason is None:
                run.cancel_reason = SHUTDOWN
            if run.task is not None:
                run.task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
