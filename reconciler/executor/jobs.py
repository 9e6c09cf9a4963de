"""Carrying out a plan's job actions through the adapter: stop (preempt or delete) before anything needs their room,
submit after. What to do with each action is read from its kind and the run's state, never from its reason."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.adapter.jobs import TERMINAL
from reconciler.errors import TransientError, UserError
from reconciler.plan import ActionKind, Plan, is_job, job_name
from reconciler.settings import ApplySettings


@dataclass(frozen=True)
class JobResult:
    index: int  # of the action in plan.actions
    ok: bool
    message: str


def stops(plan: Plan) -> list[int]:
    return [i for i, a in enumerate(plan.actions) if is_job(a.model) and a.kind in (ActionKind.EVICT, ActionKind.DELETE)]


def submits(plan: Plan) -> list[int]:
    return [i for i, a in enumerate(plan.actions) if is_job(a.model) and a.kind is ActionKind.CREATE]


def stop_all(jobs: Any, plan: Plan, settings: ApplySettings) -> list[JobResult]:
    """Preempted and deleted runs stop (Ray: SIGTERM, then a kill after its grace); a finished run that leaves the
    history is forgotten. Returns once every stopped run has ended, so their VRAM is free.

    A run whose status Ray fails to give is not taken for gone: it may still hold its GPUs (Ray's per-GPU resources
    keep anything else off them), so its action fails as temporary and the next apply tries again. A preemption is
    confirmed (``jobs.preempted``) only once the run is seen ended."""
    results = []
    waiting = []
    for i in stops(plan):
        action = plan.actions[i]
        name = job_name(action.model)
        try:
            status = jobs.status(name, action.replica)
            if status is None:
                results.append(JobResult(i, True, "already gone"))
            elif status in TERMINAL:
                jobs.forget(name, action.replica)
                results.append(JobResult(i, True, "removed from the history"))
            else:
                jobs.stop(name, action.replica, preempted=action.kind is ActionKind.EVICT)
                waiting.append(i)
        except TransientError as exc:
            results.append(JobResult(i, False, f"{exc}; not stopped yet, tried again on the next apply"))
    for i in waiting:
        action = plan.actions[i]
        name = job_name(action.model)
        try:
            status = jobs.wait_ended(name, action.replica, timeout=settings.stop_timeout, interval=settings.poll)
        except TransientError as exc:
            results.append(JobResult(i, False, f"its stop is not confirmed: {exc}; tried again on the next apply"))
            continue
        ok = status is None or status in TERMINAL
        if ok and action.kind is ActionKind.EVICT:
            jobs.preempted(name, action.replica)
        results.append(JobResult(i, ok, "stopped" if ok else f"still {status} after {settings.stop_timeout:.0f} s"))
    return results


def submit_all(jobs: Any, plan: Plan, *, spec_dir: Path | None) -> list[JobResult]:
    results = []
    for i in submits(plan):
        action = plan.actions[i]
        job = plan.job(job_name(action.model))
        try:
            sid = jobs.submit(job, spec_dir=spec_dir)
        except (UserError, TransientError) as exc:
            results.append(JobResult(i, False, str(exc)))
            continue
        results.append(JobResult(i, True, f"submitted as {sid}"))
    return results
