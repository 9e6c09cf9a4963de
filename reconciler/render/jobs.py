"""Jobs for people and scripts: one line per job in plans and status, and the `jobs` part of `status --format json`.

Renders only: the state, run, place and reason of each job come from the plan (``Plan.jobs``)."""

from __future__ import annotations

from typing import Any

from reconciler.observed import ObservedState
from reconciler.plan import Location, Plan, PlannedJob
from reconciler.quantity import format_bytes

MARKS = {"waiting": "…", "running": "▶", "preempted": "⏸", "succeeded": "✓", "failed": "✗", "error": "!"}


def _where(job: PlannedJob) -> str:
    return str(Location(job.node, job.gpus)) if job.node else "—"


def job_lines(plan: Plan) -> list[str]:
    """`Jobs:` and one line per job: mark, name, state, run, place, VRAM, and why."""
    if not plan.jobs:
        return []
    names = [f"job/{j.name}" for j in plan.jobs]
    width = max(map(len, names))
    lines = ["Jobs:"]
    for job, name in zip(plan.jobs, names, strict=True):
        counts = f"run {job.run}" + (f", {job.preemptions} preempted" if job.preemptions else "")
        lines.append(
            f"  {MARKS[job.state]} {name:<{width}}  {job.state:<9}  {counts:<14}  {_where(job):<14}  "
            f"{format_bytes(job.vram)}  # {job.reason}"
        )
    return lines


def job_markdown(plan: Plan) -> list[str]:
    if not plan.jobs:
        return []
    lines = ["#### Jobs", "", "| job | state | run | where | reason |", "|---|---|---|---|---|"]
    for job in plan.jobs:
        reason = job.reason.replace("|", "\\|")
        lines.append(f"| `{job.name}` | {job.state} | {job.run} | {_where(job)} | {reason} |")
    return [*lines, ""]


def jobs_json(plan: Plan, observed: ObservedState | None = None) -> list[dict[str, Any]]:
    """The `jobs` key of `status --format json`: name, state, node, gpus, runs (the interface), and more; a failed
    job's last run with the tail of its log."""

    def last(name: str) -> dict[str, Any] | None:
        runs = observed.runs_of(name) if observed is not None else ()
        if not runs:
            return None
        run = runs[-1]
        return {"run": run.run, "state": str(run.state), "started": run.started, "ended": run.ended,
                "logTail": run.message}

    return [
        {
            "name": job.name,
            "state": job.state,
            "node": job.node or None,
            "gpus": list(job.gpus),
            "runs": job.runs,
            "run": job.run,
            "failures": job.failures,
            "preemptions": job.preemptions,
            "vram_bytes": job.vram,
            "priority": job.priority,
            "reason": job.reason,
            "lastRun": last(job.name),
        }
        for job in plan.jobs
    ]


def status_json(plan: Plan, observed: ObservedState | None = None) -> dict[str, Any]:
    """`status --format json`: its `jobs` part, built here so a fuller JSON status takes it as one key."""
    return {"jobs": jobs_json(plan, observed)}
