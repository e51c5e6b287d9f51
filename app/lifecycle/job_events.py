"""What a download job shows the outside: progress events, timeline transitions, job gauges.
The manager decides; this reports."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.lifecycle.job_state import DownloadJob
from app.lifecycle.jobs import JobRecord
from app.lifecycle.manifest import ModelSpec
from app.lifecycle.progress import ProgressEvent, ProgressHub
from app.observability.metrics import Metrics
from app.observability.timeline import Timeline


@dataclass(slots=True)
class RunningJob:
    record: JobRecord
    model: ModelSpec
    device: int
    job: DownloadJob
    last_persist: float
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    last_event: ProgressEvent | None = None

    def diagnostics(self) -> dict[str, Any]:
        """What ``/v1/diagnostics`` shows of this job."""
        r = self.record
        return {
            "job": r.id,
            "kind": "download",
            "model": self.model.id,
            "phase": r.phase,
            "bytes": r.bytes_done,
            "total": r.bytes_total,
            "attempt": r.attempt,
        }

    @property
    def remaining(self) -> int:
        return max(0, self.record.bytes_total - self.record.bytes_done)


class JobEvents:
    def __init__(self, hub: ProgressHub, metrics: Metrics, timeline: Timeline) -> None:
        self.hub = hub
        self.metrics = metrics
        self.timeline = timeline

    def publish(
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

    def transition(self, run: RunningJob, old: str, new: str, reason: str) -> None:
        self.timeline.record(f"download:{run.model.id}", old, new, reason)

    def gauges(self, runs: Iterable[RunningJob], finished: Counter[str]) -> None:
        states = Counter(r.record.state for r in runs)
        for state in ("queued", "running"):
            self.metrics.download_jobs.labels(state=state).set(states.get(state, 0))
        for state in ("succeeded", "failed", "cancelled"):
            self.metrics.download_jobs.labels(state=state).set(finished.get(state, 0))
