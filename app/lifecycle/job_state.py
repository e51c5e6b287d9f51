"""A download job as a pure state machine: the states, the transitions allowed between them,
and the time the job spent running, read from an injected clock.

No I/O here: the manager (``manager.py``) persists the rows, publishes the events and records
the timeline; this decides whether a move is legal and what it means. Tested like the breaker
(``tests/unit/lifecycle/test_job_state.py``).

::

    queued ──start──▶ running ──finish──▶ succeeded | failed | cancelled
       │                 │
       └──fail/cancel──▶ failed | cancelled        running ──requeue──▶ queued (after a restart)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    # back to queued: a row still running when the process stopped, resumed at the next start
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    def __init__(self, old: JobState, new: JobState) -> None:
        super().__init__(f"a download job cannot go from {old} to {new}")
        self.old = old
        self.new = new


@dataclass(frozen=True, slots=True)
class Transition:
    old: JobState
    new: JobState
    reason: str


@dataclass(slots=True)
class DownloadJob:
    """One job's state; ``clock`` is monotonic seconds (``time.monotonic`` unless injected)."""

    state: JobState = JobState.QUEUED
    clock: Callable[[], float] = time.monotonic
    started_at: float | None = None
    history: list[Transition] = field(default_factory=list)

    def move(self, new: JobState, reason: str) -> Transition:
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(self.state, new)
        step = Transition(self.state, new, reason)
        self.state = new
        self.history.append(step)
        return step

    def start(self) -> Transition:
        """A transfer slot was acquired: the job runs from now."""
        step = self.move(JobState.RUNNING, "slot acquired")
        self.started_at = self.clock()
        return step

    def finish(self, outcome: JobState, reason: str) -> Transition:
        if not outcome.finished:
            raise IllegalTransition(self.state, outcome)
        return self.move(outcome, reason)

    def requeue(self, reason: str) -> Transition:
        return self.move(JobState.QUEUED, reason)

    @property
    def duration_s(self) -> float | None:
        """Seconds since ``start`` (None before it): how long the transfer has run."""
        return None if self.started_at is None else self.clock() - self.started_at
