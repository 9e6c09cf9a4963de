"""Stopping a plan's job runs when Ray's job API fails to say how a run is: the run is never taken for gone, its
preemption is confirmed only once it is seen ended, and the next apply finishes what this one could not.

The job API stands in as a small in-memory model of the adapter's contract (``status`` is None for an unknown run
and raises TransientError when Ray does not answer), so the fault is injected exactly where it happens."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from reconciler.adapter.jobs import TERMINAL
from reconciler.errors import TransientError
from reconciler.executor.jobs import stop_all
from reconciler.plan import Action, ActionKind, Location, Plan, job_item
from reconciler.settings import DEFAULTS

GiB = 1 << 30
SETTINGS = replace(DEFAULTS.apply, stop_timeout=0.2, poll=0.01)


@dataclass
class RayJobs:
    """Runs by (job, run) with Ray's statuses; ``failing`` status calls raise as an unreachable job API does."""

    runs: dict[tuple[str, int], str]
    failing: int = 0
    marks: dict[tuple[str, int], str] = field(default_factory=dict)

    def status(self, job: str, run: int) -> str | None:
        if self.failing:
            self.failing -= 1
            raise TransientError("cannot read the status of the run: 503 Service Unavailable")
        return self.runs.get((job, run))

    def stop(self, job: str, run: int, *, preempted: bool) -> None:
        if preempted:
            self.marks[(job, run)] = "preempting"
        self.runs[(job, run)] = "STOPPED"

    def preempted(self, job: str, run: int) -> None:
        self.marks[(job, run)] = "preempted"

    def forget(self, job: str, run: int) -> None:
        assert self.runs[(job, run)] in TERMINAL
        del self.runs[(job, run)]

    def wait_ended(self, job: str, run: int, *, timeout: float, interval: float = 0.5) -> str | None:
        return self.status(job, run)


def _evict(job: str, run: int) -> Plan:
    action = Action(ActionKind.EVICT, job_item(job), run, Location("node-a", (0,)), None, 6 * GiB, "preempted")
    return Plan(actions=(action,), placement=(), unplaced=(), gpus=(), fingerprint="", desired_fingerprint="")


def test_a_status_error_during_preemption_is_temporary_and_the_run_is_not_taken_for_gone():
    jobs = RayJobs(runs={("batch", 1): "RUNNING"}, failing=1)
    (result,) = stop_all(jobs, _evict("batch", 1), SETTINGS)
    assert not result.ok and "not stopped yet, tried again on the next apply" in result.message
    assert jobs.runs == {("batch", 1): "RUNNING"} and jobs.marks == {}  # still holds its GPU, not marked
    (result,) = stop_all(jobs, _evict("batch", 1), SETTINGS)  # the next apply: Ray answers again
    assert result.ok and result.message == "stopped"
    assert jobs.runs == {("batch", 1): "STOPPED"} and jobs.marks == {("batch", 1): "preempted"}


def test_a_stop_whose_end_cannot_be_confirmed_is_not_marked_preempted():
    jobs = RayJobs(runs={("batch", 1): "RUNNING"})
    original = jobs.wait_ended

    def silent(job: str, run: int, *, timeout: float, interval: float = 0.5) -> str | None:
        jobs.failing = 1
        return original(job, run, timeout=timeout, interval=interval)

    jobs.wait_ended = silent  # type: ignore[method-assign]
    (result,) = stop_all(jobs, _evict("batch", 1), SETTINGS)
    assert not result.ok and result.message.startswith("its stop is not confirmed")
    assert jobs.marks == {("batch", 1): "preempting"}  # intended only: read as preempted once it ended stopped


def test_a_run_ray_does_not_know_is_gone():
    (result,) = stop_all(RayJobs(runs={}), _evict("batch", 1), SETTINGS)
    assert result.ok and result.message == "already gone"
