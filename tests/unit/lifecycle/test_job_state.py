"""The download job state machine: legal moves only, durations from an injected clock."""
# mypy: disable-error-code="comparison-overlap, unreachable"
# (mypy narrows a property after ``assert x.state is A`` and then calls the next check, made
# after the object changed, impossible; these tests observe state that changes under them.)

from __future__ import annotations

import pytest

from app.lifecycle.job_state import TRANSITIONS, DownloadJob, IllegalTransition, JobState


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_job_runs_then_succeeds_and_times_its_run() -> None:
    clock = Clock()
    job = DownloadJob(clock=clock)
    assert job.duration_s is None
    clock.t += 5  # queued time does not count
    assert job.start().new is JobState.RUNNING
    clock.t += 2.5
    step = job.finish(JobState.SUCCEEDED, "done")
    assert (step.old, step.new, step.reason) == (JobState.RUNNING, JobState.SUCCEEDED, "done")
    assert job.duration_s == 2.5
    assert [(t.old, t.new) for t in job.history] == [
        (JobState.QUEUED, JobState.RUNNING),
        (JobState.RUNNING, JobState.SUCCEEDED),
    ]


@pytest.mark.parametrize("outcome", [JobState.FAILED, JobState.CANCELLED])
def test_a_queued_job_may_fail_or_be_cancelled_before_it_runs(outcome: JobState) -> None:
    job = DownloadJob()
    job.finish(outcome, "x")
    assert job.state is outcome
    assert job.duration_s is None


def test_a_queued_job_cannot_succeed_without_running() -> None:
    with pytest.raises(IllegalTransition):
        DownloadJob().finish(JobState.SUCCEEDED, "x")


def test_finished_states_are_final() -> None:
    for final in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        assert final.finished
        assert TRANSITIONS[final] == frozenset()
        job = DownloadJob(state=final)
        for target in JobState:
            with pytest.raises(IllegalTransition):
                job.move(target, "x")


def test_an_interrupted_running_job_is_requeued_and_runs_again() -> None:
    clock = Clock()
    job = DownloadJob(state=JobState.RUNNING, clock=clock)
    job.requeue("resumed after restart")
    assert job.state is JobState.QUEUED
    job.start()
    clock.t += 1
    assert job.duration_s == 1


def test_finish_refuses_a_state_that_is_not_an_outcome() -> None:
    job = DownloadJob()
    job.start()
    with pytest.raises(IllegalTransition):
        job.finish(JobState.QUEUED, "x")
    assert job.state is JobState.RUNNING
